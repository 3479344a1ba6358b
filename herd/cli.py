"""herd's command line (`herd ...`, or `python submit.py ...`): run a job here, plan it (a dry run),
submit and follow it on a Ray cluster, and look at any output afterwards (inspect, report).

A thin layer over the Python API (herd/api.py): it parses arguments, prints, and turns herd's errors
into exit codes. Only the standard library, pydantic and yaml are imported at start; Ray, vLLM and
torch load when a command needs them, so `--help` and spec validation stay instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import traceback
from typing import NoReturn

import herd
from common.versions import versions_line
from jobs.progress import write_line
from schemas import SpecError, load_job
from schemas.errors import ExitCode, HerdError, JobFailed
from schemas.results import RunSummary, throughput_text

# "text" or "json" (--log-format): in json, every line herd prints is one JSON object.
_LOG_FORMAT = {"value": "text"}


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "event": "log",
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        return json.dumps(line)


def _say(message: str, stream: object = None, **fields: object) -> None:
    """One herd line: `herd: message`, or a JSON object with --log-format json."""
    if _LOG_FORMAT["value"] == "json":
        line = json.dumps({"event": fields.pop("event", "message"), "message": message, **fields})
    else:
        line = f"herd: {message}"
    write_line(stream or sys.stdout, line)


def _fail(code: ExitCode, message: str) -> NoReturn:
    _say(message, sys.stderr, event="error", exit_code=int(code))
    sys.exit(int(code))


def _interrupt_on_sigterm() -> None:
    """A scheduler stops jobs with SIGTERM: treat it like Ctrl-C so the exit code says 'interrupted'."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _print_summary(summary: RunSummary) -> None:
    if _LOG_FORMAT["value"] == "json":
        write_line(sys.stdout, json.dumps({"event": "summary", **summary.model_dump(mode="json")}))
        return
    print(
        f"herd: {summary.status}: {summary.rows_in} rows in, {summary.rows_out} rows out, "
        f"{summary.error_rows} error rows\n"
        f"herd: {summary.prompt_tokens} prompt tokens, {summary.completion_tokens} generated tokens, "
        f"{throughput_text(summary.tokens_per_s, summary.shards_run, summary.wall_seconds)}\n"
        f"herd: shards {summary.shards} ({summary.shards_run} run, {summary.shards_skipped} already "
        f"done, {len(summary.shards_failed)} failed) on {summary.replicas} replica(s)\n"
        f"herd: output in {summary.output} (data/, errors/, summary.json)"
    )
    for failure in summary.shards_failed[:10]:
        print(f"herd: failed shard {failure}", file=sys.stderr)


def command_run(arguments: argparse.Namespace) -> int:
    _interrupt_on_sigterm()
    on_terminal = sys.stderr.isatty()
    try:
        summary = herd.run(
            arguments.job,
            output=arguments.output,
            overwrite=arguments.overwrite,
            retry_errors=arguments.retry_errors,
            progress="json" if arguments.log_format == "json" else "live" if on_terminal else "lines",
            progress_every_s=arguments.progress_every,
            verbose=arguments.verbose,
        )
    except JobFailed as failure:
        _print_summary(failure.summary)
        _fail(failure.exit_code, str(failure))
    _print_summary(summary)
    return int(ExitCode.SUCCESS)


def command_plan(arguments: argparse.Namespace) -> int:
    report = herd.plan(
        arguments.job,
        output=arguments.output,
        sample_rows=arguments.sample,
        tokens_per_s=arguments.tokens_per_s,
        calibrate=arguments.calibrate,
        gpu_hour_cost=arguments.gpu_hour_cost,
        list_shards=arguments.shards,
        every_file=arguments.every_file,
    )
    for shard in report.pop("shard_list", []):
        end = "end" if shard["end"] is None else shard["end"]
        state = "committed" if shard["committed"] else "to run"
        print(
            f"{shard['id']}\t{shard['format']}\t{shard['unit']} {shard['start']}-{end}\t"
            f"~{shard['estimated_rows']} rows\t{state}"
        )
    if arguments.json:
        print(json.dumps(report, indent=2))
    else:
        print(_describe_plan(report))
    for warning in report["warnings"]:
        _say(f"warning: {warning}", sys.stderr)
    for problem in report["problems"]:
        _say(f"problem: {problem}", sys.stderr)
    return int(ExitCode.INVALID) if report["problems"] else 0


def _describe_plan(report: dict) -> str:
    rows = f"{report['rows']:,}" if report["rows_exact"] else f"about {report['rows']:,}"
    tokens = report["generated_tokens"]
    shards = f"{report['shards']:,}" if report["files_planned"] == report["files"] else f"about {report['shards']:,}"
    packed = ""
    if report["shards_run_as"] < report["shards"]:
        packed = f"; small ones packed, they run as {report['shards_run_as']:,}"
    lines = [
        f"herd: {report['files']:,} file(s), {shards} shard(s) ({report['shards_committed']:,} already "
        f"committed{packed}), {rows} rows",
        f"herd: {report['sampled_rows']} rows sampled: prompts of {report['prompt_tokens']['mean']} tokens on "
        f"average (longest {report['prompt_tokens']['max']}), {report['prompts_over_context_in_sample']} over the "
        "context",
        f"herd: about {report['prompt_tokens']['estimated_total']:,} prompt tokens; generated tokens at most "
        f"{tokens['upper_bound']:,}, expected {tokens['expected']:,} (from {tokens['expected_from']})",
    ]
    if report["files_planned"] < report["files"]:
        lines.append(
            f"herd: planned from {report['files_planned']:,} of the {report['files']:,} files, spread evenly; "
            "shards and rows of the others estimated by their sizes, and only these files checked "
            "(--every-file reads them all)"
        )
    for name in report["files_not_read"]:
        lines.append(f"herd: not an input: {name}")
    if report["hours"] is not None:
        cost = f", {report['cost']:,.2f} at the given GPU-hour cost" if report["cost"] is not None else ""
        lines.append(
            f"herd: at {report['tokens_per_s']:,.0f} generated tokens/s per replica on {report['replicas']} "
            f"replica(s): {report['hours']:.2f} hours{cost}"
        )
    else:
        lines.append("herd: give --tokens-per-s or --calibrate N for the run time and cost")
    return "\n".join(lines)


def command_inspect(arguments: argparse.Namespace) -> int:
    from jobs.output_state import describe_state, output_state
    from schemas.job import StorageSpec

    endpoint = arguments.endpoint_url
    state = output_state(arguments.output, StorageSpec(endpoint_url=endpoint) if endpoint else None)
    print(json.dumps(state, indent=2) if arguments.json else describe_state(state))
    return 0


def command_report(arguments: argparse.Namespace) -> int:
    from common.layout import OutputLayout
    from common.storage import Storage
    from jobs.report import write_report
    from schemas.job import RetrySpec, StorageSpec

    layout = OutputLayout(arguments.output)
    storage = Storage(StorageSpec(endpoint_url=arguments.endpoint_url), RetrySpec())
    if not storage.exists(layout.summary):
        raise SpecError(f"{arguments.output}: no summary.json here; a report needs a finished run")
    _say(f"report written to {write_report(storage, layout)}")
    return 0


def command_serve(arguments: argparse.Namespace) -> int:
    from service.config import load_service
    from service.keys import ApiKeys
    from service.server import serve

    given = vars(arguments)
    spec = load_service(given.get("service"), host=given.get("host"), port=given.get("port"), root=given.get("root"))
    _interrupt_on_sigterm()
    serve(spec, ApiKeys.load(given.get("keys")))
    return 0


def command_submit(arguments: argparse.Namespace) -> int:
    job = load_job(arguments.job, output_override=arguments.output)
    from common.storage import Storage
    from jobs import cluster_jobs
    from jobs.planner import list_inputs, with_absolute_paths

    # Local paths are read on the cluster's nodes (a shared file system); s3:// is the usual case.
    job = with_absolute_paths(job)
    try:
        files = list_inputs(Storage(job.storage, job.retry), job).files
        inputs = [{"url": info.url, "size": info.size, "version": info.version} for info in files]
    except SpecError:
        inputs = []  # not visible from here (a path on the cluster's disks): the job's settings identify it
    submission = cluster_jobs.submit(job, arguments.address, arguments.python, arguments.overwrite, inputs)
    print(submission.job_id)
    if submission.state == "succeeded":
        print(f"herd: job {submission.job_id} already succeeded; nothing to run", file=sys.stderr)
        return 0
    if submission.state == "running":
        print(f"herd: job {submission.job_id} is already running; following it", file=sys.stderr)
    if not arguments.wait:
        return 0
    _interrupt_on_sigterm()
    try:
        cluster_jobs.print_logs(arguments.address, submission.job_id, follow=True)
        final = cluster_jobs.wait(arguments.address, submission.job_id)
    except KeyboardInterrupt:
        if arguments.detach:
            print(f"herd: stopped following {submission.job_id}; it goes on (--detach)", file=sys.stderr)
        else:
            # A scheduler that kills its task means the job: stop it rather than leave it running unseen.
            cluster_jobs.stop(arguments.address, submission.job_id)
            print(f"herd: interrupted; stopped the Ray job {submission.job_id}", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    print(f"herd: job {submission.job_id} {final['status']} (exit code {final['exit_code']})", file=sys.stderr)
    if final["exit_code"] is not None:
        return int(final["exit_code"])
    return int(ExitCode.INTERRUPTED if final["status"] == "STOPPED" else ExitCode.FAILED)


def command_status(arguments: argparse.Namespace) -> int:
    from jobs import cluster_jobs

    details = cluster_jobs.info(arguments.address, arguments.job_id)
    if arguments.json:
        print(json.dumps(details, indent=2))
    else:
        print(f"{details['job_id']}\t{details['status']}\texit code {details['exit_code']}\t{details['message'] or ''}")
    return 0


def command_logs(arguments: argparse.Namespace) -> int:
    from jobs import cluster_jobs

    cluster_jobs.print_logs(arguments.address, arguments.job_id, follow=arguments.follow)
    return 0


def command_stop(arguments: argparse.Namespace) -> int:
    from jobs import cluster_jobs

    stopped = cluster_jobs.stop(arguments.address, arguments.job_id)
    print(f"herd: {'stopping' if stopped else 'already finished'}: {arguments.job_id}")
    return 0


def command_list(arguments: argparse.Namespace) -> int:
    from jobs import cluster_jobs

    for details in cluster_jobs.list_jobs(arguments.address):
        print(
            f"{details['job_id']}\t{details['status']}\texit code {details['exit_code']}\t{details['herd_job'] or ''}"
        )
    return 0


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        help="the Ray dashboard, e.g. http://HEAD:8265 (default: $RAY_ADDRESS); the token in "
        "$RAY_AUTH_TOKEN or ~/.ray/auth_token is sent when there is one",
    )


class _DefaultsShown(argparse.HelpFormatter):
    """--help shows an option's default where it says something: not for flags and options that are
    off unless given, nor twice where the help names it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        unsaid = any(action.default is off for off in (None, False, argparse.SUPPRESS)) or "(default" in help_text
        if unsaid or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)):
            return action.help
        return f"{help_text} (default: %(default)s)"


def _subcommand(commands: argparse._SubParsersAction, name: str, **options: object) -> argparse.ArgumentParser:
    """A subcommand whose --help shows each option's default."""
    parser = commands.add_parser(name, formatter_class=_DefaultsShown, **options)
    if name != "run":  # run's --verbose says more
        parser.add_argument("--verbose", action="store_true", help="show the traceback of an unexpected error")
    return parser


class _PrintVersions(argparse.Action):
    """--version, whose versions are looked up only when it is given (the lookup takes ~0.1 s)."""

    def __init__(self, option_strings: list[str], dest: str, **options: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **options)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        print(versions_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=_DefaultsShown,
        description="herd: offline batch generation with vLLM on Ray. Exit codes: 0 success, "
        "1 unexpected error, 2 invalid spec or input, 3 row errors over max_error_fraction, "
        "4 shards failed after retries, 5 output busy (another run holds it), 6 storage unavailable "
        "after retries (run again later), 7 no capacity within resources.capacity_timeout_s (run again "
        "later), 130 interrupted (re-run to resume).",
    )
    parser.add_argument("--version", action=_PrintVersions, help="print herd's version and vLLM's, Ray's and Python's")
    commands = parser.add_subparsers(dest="command", required=True)

    run = _subcommand(commands, "run", help="run a job on an embedded local Ray, or the Ray at RAY_ADDRESS")
    run.add_argument("job", help="the job file (YAML or JSON)")
    run.add_argument("--output", help="write here instead of the job's output.path (local or s3://)")
    run.add_argument(
        "--overwrite", action="store_true", help="replace the output of a different job at the output path"
    )
    run.add_argument(
        "--retry-errors",
        nargs="?",
        const="generate",
        choices=["generate", "all"],
        help="also run again the error rows of committed shards: those of stage generate (the default when "
        "the flag is given alone), or all of them; every row stays exactly once",
    )
    run.add_argument(
        "--verbose",
        action="store_true",
        help="stream the replicas' own output (vLLM, Ray, transformers) here, and other libraries' INFO "
        "lines, and show the traceback of an unexpected error; by default the replicas' output goes to a log "
        "file per replica and only herd's lines are shown",
    )
    run.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="when not on a terminal: print a progress line this often (default: 30)",
    )
    _add_log_format(run)
    run.set_defaults(handler=command_run)

    plan = _subcommand(
        commands,
        "plan",
        help="a dry run: check everything that can be checked before generating, estimate tokens, time and "
        "cost; exit 2 on any problem (no Ray, no engine unless --calibrate)",
    )
    plan.add_argument("job")
    plan.add_argument("--output", help="check this output path for committed shards instead")
    plan.add_argument("--sample", type=int, default=200, help="rows to read, render and count")
    plan.add_argument("--tokens-per-s", type=float, help="generated tokens per second of one replica, to estimate time")
    plan.add_argument(
        "--calibrate",
        type=int,
        default=0,
        metavar="N",
        help="run N sampled rows on the real engine here to measure tokens per row and per second",
    )
    plan.add_argument("--gpu-hour-cost", type=float, help="price of one GPU hour, to estimate the cost")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--shards", action="store_true", help="also list every shard (plans every file)")
    plan.add_argument(
        "--every-file",
        action="store_true",
        help="read every input file's footer and size, however many (past 1,000 files the plan reads 1,000 "
        "spread evenly and estimates the rest by size)",
    )
    plan.set_defaults(handler=command_plan)

    inspect = _subcommand(
        commands,
        "inspect",
        help="the state of an output (local or s3://): its job, committed and missing shards, a run now",
    )
    inspect.add_argument("output", help="the output path of a job")
    inspect.add_argument("--json", action="store_true", help="print the state as JSON (default: text)")
    inspect.add_argument(
        "--endpoint-url", help="the S3 endpoint to reach it through (default: $AWS_ENDPOINT_URL, else the job's)"
    )
    inspect.set_defaults(handler=command_inspect)

    report = _subcommand(commands, "report", help="build report.html (plots of the run) again for an output")
    report.add_argument("output", help="the output path of a job (local or s3://)")
    report.add_argument("--endpoint-url", help="the S3 endpoint to reach it through (default: $AWS_ENDPOINT_URL)")
    report.set_defaults(handler=command_report)

    submit = _subcommand(commands, "submit", help="submit the job to a Ray cluster (Ray Jobs API); prints the job id")
    submit.add_argument("job")
    submit.add_argument("--output", help="write here instead of the job's output.path")
    submit.add_argument("--overwrite", action="store_true", help="as for run")
    submit.add_argument(
        "--wait",
        action="store_true",
        help="follow the logs and exit with the job's own exit code; SIGTERM or Ctrl-C stops the Ray job",
    )
    submit.add_argument(
        "--detach", action="store_true", help="with --wait: on SIGTERM or Ctrl-C stop following, leave the job running"
    )
    submit.add_argument(
        "--python",
        help="the Python on the head that has herd installed (default: ~/herd/.venv/bin/python, where "
        "ray_cluster.yaml installs it, else python3); a head without herd says so",
    )
    _add_address(submit)
    submit.set_defaults(handler=command_submit)

    for name, handler, helptext in (
        ("status", command_status, "show a submitted job's status and exit code"),
        ("logs", command_logs, "print a submitted job's logs"),
        ("stop", command_stop, "stop a submitted job"),
    ):
        command = _subcommand(commands, name, help=helptext)
        command.add_argument("job_id")
        _add_address(command)
        command.set_defaults(handler=handler)
        if name == "status":
            command.add_argument("--json", action="store_true", help="print the status as JSON")
        if name == "logs":
            command.add_argument("--follow", action="store_true", help="stream until the job ends")

    serve = _subcommand(
        commands,
        "serve",
        help="serve an OpenAI-compatible Batch API (files, batches, models) answered by herd jobs; see "
        "docs/batch-service.md",
    )
    # Defaults come from the service file, else the service's own: the help says which (SUPPRESS keeps
    # argparse from adding a "(default: None)" of its own).
    quiet_default = argparse.SUPPRESS
    serve.add_argument(
        "service", nargs="?", default=quiet_default, help="the service file (YAML); default: the demo model here"
    )
    serve.add_argument(
        "--host", default=quiet_default, help="the address to listen on (default: the file's, else 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=quiet_default, help="the port (default: the file's, else 8000)")
    serve.add_argument(
        "--root", default=quiet_default, help="where files and batches live, local or s3:// (default: ./herd-batches)"
    )
    serve.add_argument(
        "--keys",
        default=quiet_default,
        help="a file of OWNER:KEY lines, one API key each (default: $HERD_API_KEYS; without keys the service "
        "listens on loopback only)",
    )
    _add_log_format(serve)
    serve.set_defaults(handler=command_serve)

    listing = _subcommand(commands, "list", help="list the jobs submitted to the cluster")
    _add_address(listing)
    listing.set_defaults(handler=command_list)
    return parser


# The packages whose loggers are herd's own (modules log under their __name__).
HERD_LOGGERS = ("herd", "jobs", "workers", "common", "schemas")


def _add_log_format(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="json: every line herd prints is a JSON object (default: text)",
    )


def configure_logging(log_format: str, verbose: bool = False) -> None:
    """herd's own lines from INFO up; other libraries' (matplotlib, s3fs, botocore...) only from
    WARNING up, since what they say at INFO is not for a person running a job, unless `verbose`."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(_JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s herd %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    # A library's warnings.warn (pandas', pyarrow's) as a log record: one JSON object in json mode,
    # not a plain "file:line: FutureWarning" among them.
    logging.captureWarnings(True)
    for name in HERD_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    _LOG_FORMAT["value"] = getattr(arguments, "log_format", "text")
    configure_logging(_LOG_FORMAT["value"], verbose=getattr(arguments, "verbose", False))
    try:
        return arguments.handler(arguments)
    except HerdError as error:
        _fail(error.exit_code, _message(error))
    except KeyboardInterrupt:
        _fail(ExitCode.INTERRUPTED, "interrupted; committed shards are kept, re-run the same command to resume")
    except Exception as error:  # noqa: BLE001 - any other error is exit 1, with its traceback on --verbose
        if arguments.verbose:
            traceback.print_exc()
        hint = "" if arguments.verbose else " (--verbose shows the traceback)"
        _fail(ExitCode.FAILED, f"{type(error).__name__}: {error}{hint}")


def _message(error: HerdError) -> str:
    if error.exit_code == ExitCode.STORAGE_UNAVAILABLE:
        return f"{error} (storage unavailable after every retry; run again later)"
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
