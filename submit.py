"""herd's command line: run a batch generation job, or plan it without running.

Only the standard library, pydantic and yaml are imported at start; Ray, vLLM and torch load when
a command needs them, so `--help` and spec validation stay instant.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import NoReturn

from schemas import SpecError, load_job
from schemas.results import ExitCode, RunSummary


def _fail(code: ExitCode, message: str) -> NoReturn:
    print(f"herd: {message}", file=sys.stderr)
    sys.exit(int(code))


def _interrupt_on_sigterm() -> None:
    """A scheduler stops jobs with SIGTERM: treat it like Ctrl-C so the exit code says 'interrupted'."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _print_summary(summary: RunSummary) -> None:
    print(
        f"herd: {summary.status}: {summary.rows_in} rows in, {summary.rows_out} rows out, "
        f"{summary.error_rows} error rows\n"
        f"herd: {summary.prompt_tokens} prompt tokens, {summary.completion_tokens} generated tokens, "
        f"{summary.tokens_per_s:.1f} tokens/s, wall {summary.wall_seconds:.1f}s\n"
        f"herd: shards {summary.shards} ({summary.shards_run} run, {summary.shards_skipped} already "
        f"done, {len(summary.shards_failed)} failed) on {summary.replicas} replica(s)\n"
        f"herd: output in {summary.output} (data/, errors/, summary.json)"
    )
    for failure in summary.shards_failed[:10]:
        print(f"herd: failed shard {failure}", file=sys.stderr)


def command_run(arguments: argparse.Namespace) -> int:
    job = load_job(arguments.job, output_override=arguments.output)
    _interrupt_on_sigterm()
    from jobs.runner import run_job

    outcome = run_job(job, overwrite=arguments.overwrite)
    _print_summary(outcome.summary)
    if outcome.exit_code == ExitCode.ERRORS_OVER_THRESHOLD:
        print(
            f"herd: {outcome.summary.error_rows} of {outcome.summary.rows_in} rows failed, over "
            f"max_error_fraction {job.max_error_fraction}; see {outcome.summary.output}/errors",
            file=sys.stderr,
        )
    return int(outcome.exit_code)


def command_plan(arguments: argparse.Namespace) -> int:
    job = load_job(arguments.job, output_override=arguments.output)
    from common.layout import OutputLayout
    from common.storage import Storage
    from jobs.manifest import committed_shards
    from jobs.planner import plan_shards
    from jobs.runner import list_inputs, with_absolute_paths

    job = with_absolute_paths(job)
    storage = Storage(job.storage, job.retry)
    files = list_inputs(storage, job)
    shards = plan_shards(job.input, files, storage)
    committed = committed_shards(storage, OutputLayout(job.output.path))
    for shard in shards:
        state = "committed" if shard.shard_id in committed else "to run"
        print(f"{shard.shard_id}\t{shard.format}\t{shard.start}-{shard.end}\t~{shard.estimated_rows} rows\t{state}")
    to_run = sum(shard.shard_id not in committed for shard in shards)
    print(f"herd: {len(files)} files, {len(shards)} shards, {to_run} to run", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="submit.py",
        description="herd: offline batch generation with vLLM on Ray. Exit codes: 0 success, "
        "1 unexpected error, 2 invalid spec or input, 3 row errors over max_error_fraction, "
        "4 shards failed after retries, 130 interrupted (re-run to resume).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a job on an embedded local Ray, or the Ray at RAY_ADDRESS")
    run.add_argument("job", help="the job file (YAML or JSON)")
    run.add_argument("--output", help="write here instead of the job's output.path (local or s3://)")
    run.add_argument(
        "--overwrite", action="store_true", help="replace the output of a different job at the output path"
    )
    run.set_defaults(handler=command_run)

    plan = commands.add_parser("plan", help="validate the job and list its shards without generating")
    plan.add_argument("job")
    plan.add_argument("--output", help="check this output path for committed shards instead")
    plan.set_defaults(handler=command_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s herd %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return arguments.handler(arguments)
    except SpecError as error:
        _fail(ExitCode.INVALID, str(error))
    except KeyboardInterrupt:
        _fail(ExitCode.INTERRUPTED, "interrupted; committed shards are kept, re-run the same command to resume")
    except Exception as error:
        logging.getLogger("herd").debug("unexpected error", exc_info=True)
        _fail(ExitCode.FAILED, f"{type(error).__name__}: {error}")


if __name__ == "__main__":
    sys.exit(main())
