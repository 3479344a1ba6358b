"""`submit.py plan`: everything that can be checked before generating, and the estimates; no Ray,
no vLLM, no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.errors import SpecError
from tests.cpu.conftest import tiny_model_spec

REPO = Path(__file__).resolve().parents[2]


def _plan(
    tmp_path: Path, tiny_model: Path, input_section: dict, *flags: str, **sections
) -> subprocess.CompletedProcess:
    job = {
        "input": input_section,
        "model": tiny_model_spec(tiny_model),
        "sampling": {"max_new_tokens": 16},
        "output": {"path": str(tmp_path / "out")},
        **sections,
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    return subprocess.run(
        [sys.executable, "submit.py", "plan", str(tmp_path / "job.json"), *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_plan_imports_neither_ray_nor_vllm_nor_torch_and_counts_parquet_rows_exactly(tmp_path, tiny_model):
    pq.write_table(pa.table({"prompt": [f"question number {index}" for index in range(1500)]}), tmp_path / "a.parquet")
    (tmp_path / "job.json").write_text(
        json.dumps(
            {
                "input": {"path": str(tmp_path / "a.parquet"), "prompt_column": "prompt"},
                "model": tiny_model_spec(tiny_model),
                "sampling": {"max_new_tokens": 16, "n": 2},
                "output": {"path": str(tmp_path / "out")},
                "resources": {"max_replicas": 8},
            }
        )
    )
    script = (
        "import contextlib, io, json, sys\n"
        "import submit\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    code = submit.main(['plan', {str(tmp_path / 'job.json')!r}, '--json', '--tokens-per-s', '100', "
        "'--gpu-hour-cost', '2'])\n"
        "print(json.dumps({'code': code, 'plan': json.loads(out.getvalue()), "
        "'loaded': [name for name in ('ray', 'vllm', 'torch') if name in sys.modules]}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer["loaded"] == [] and answer["code"] == 0
    plan = answer["plan"]
    assert (plan["rows"], plan["rows_exact"], plan["sampled_rows"]) == (1500, True, 200)
    assert plan["generated_tokens"]["upper_bound"] == 1500 * 2 * 16
    # Two shards (one row group cut in two): two replicas at most, whatever max_replicas says.
    assert plan["shards"] == 2 and plan["replicas"] == 2
    assert plan["hours"] == round(1500 * 2 * 16 / 100 / 2 / 3600, 3)
    assert plan["cost"] == round(1500 * 2 * 16 / 100 / 2 / 3600 * 2 * 2, 2)  # 2 replicas, $2 a GPU-hour
    assert plan["prompt_tokens"]["mean"] > 0 and plan["problems"] == []


def test_a_request_files_plan_bounds_each_line_by_its_own_max_tokens_and_n(tmp_path, tiny_model):
    """OpenAI batch lines set their own max_tokens and n: the plan's bound, and its check that a
    prompt leaves room to generate, use each line's, as the run does (the job's default is 16)."""

    def chat(custom_id: str, **body: object) -> dict:
        messages = [{"role": "user", "content": f"tell me about {custom_id}"}]
        return {"custom_id": custom_id, "url": "/v1/chat/completions", "body": {"messages": messages, **body}}

    lines = [chat(f"long-{index}", max_tokens=200) for index in range(3)]
    lines += [chat(f"two-{index}", max_tokens=10, n=2) for index in range(2)]
    lines.append(chat("default"))
    (tmp_path / "batch.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    batch = {"path": str(tmp_path / "batch.jsonl"), "format": "openai-batch"}
    result = _plan(tmp_path, tiny_model, batch, "--json", prompt={"format": "llama2-chat"})
    assert result.returncode == 0, result.stdout + result.stderr
    plan = json.loads(result.stdout)
    assert plan["rows"] == 6 and plan["generated_tokens"]["upper_bound"] == 3 * 200 + 2 * 2 * 10 + 16

    # A line asking for more than the context leaves after its prompt is found here, not mid-run.
    lines.append(chat("too-long", max_tokens=510))
    (tmp_path / "batch.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = _plan(tmp_path, tiny_model, batch, prompt={"format": "llama2-chat"})
    assert result.returncode == 2 and "1 of 7 sampled prompts do not fit the context" in result.stderr
    assert "(id too-long)" in result.stderr


def _missing_column_in_a_second_file(tmp_path: Path) -> dict:
    pq.write_table(pa.table({"prompt": ["a", "b"]}), tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"text": ["c"]}), tmp_path / "part-1.parquet")
    return {"path": str(tmp_path), "prompt_column": "prompt"}


def _prompt_over_the_context(tmp_path: Path) -> dict:
    rows = [{"prompt": "short"}, {"prompt": "many words " * 400}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"}


def _duplicate_ids(tmp_path: Path) -> dict:
    rows = [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}, {"id": "a", "prompt": "z"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt", "id_column": "id"}


def _rows_that_cannot_render(tmp_path: Path) -> dict:
    rows = [{"prompt": "fine"}, {"prompt": None}, {"prompt": 7}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"}


def _malformed_lines(tmp_path: Path) -> dict:
    (tmp_path / "in.jsonl").write_text('{"prompt": "fine"}\n{"prompt": "broken\n')
    return {"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"}


PROBLEMS = [
    (_missing_column_in_a_second_file, "part-1.parquet: column(s) ['prompt'] named in the job are not in the file"),
    (_prompt_over_the_context, "1 of 2 sampled prompts do not fit the context, e.g. in.jsonl line at byte 20 (id"),
    (_duplicate_ids, "ids are not unique in the sample: a"),
    # Each problem names the file, the row and its id.
    (
        _rows_that_cannot_render,
        "2 of 3 sampled rows cannot be rendered, e.g. in.jsonl line at byte 19 (id in.jsonl:19)",
    ),
    (_malformed_lines, "in.jsonl line at byte 19: malformed JSON line"),  # a byte offset, not a row number
]


@pytest.mark.parametrize(("make_input", "message"), PROBLEMS, ids=[make.__name__ for make, _ in PROBLEMS])
def test_plan_exits_2_naming_each_problem_it_finds_before_generation(tmp_path, tiny_model, make_input, message):
    result = _plan(tmp_path, tiny_model, make_input(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_plan_over_many_files_reads_an_even_spread_of_them_estimates_the_rest_by_size_and_says_so(
    tmp_path, tiny_model, monkeypatch
):
    import herd
    from jobs import dry_run

    monkeypatch.setattr(dry_run, "FILES_READ", 5)  # 1,000 in earnest: the same code, at a size a test can hold
    for index in range(20):
        rows = [f"question {index:02d} number {row:03d}" for row in range(50)]
        pq.write_table(pa.table({"prompt": rows}), tmp_path / f"part-{index:02d}.parquet")
    job = {
        "input": {"path": str(tmp_path), "prompt_column": "prompt", "rows_per_shard": 25},
        "model": tiny_model_spec(tiny_model),
        "sampling": {"max_new_tokens": 4},
        "output": {"path": str(tmp_path / "out")},
    }
    sampled = herd.plan(job, sample_rows=20)
    assert (sampled["files"], sampled["files_planned"], sampled["rows_exact"]) == (20, 5, False)
    assert abs(sampled["rows"] - 1000) <= 50 and abs(sampled["shards"] - 40) <= 2
    every = herd.plan(job, sample_rows=20, every_file=True)
    assert (every["files_planned"], every["shards"], every["rows"], every["rows_exact"]) == (20, 40, 1000, True)
    # Only the files read are checked: a file without the prompt column among the others shows at run time.
    pq.write_table(pa.table({"text": ["no prompt column"] * 50}), tmp_path / "part-07.parquet")
    assert herd.plan(job, sample_rows=20)["problems"] == []
    with pytest.raises(SpecError, match=r"part-07.parquet: column\(s\) \['prompt'\] named in the job are not"):
        herd.plan(job, sample_rows=20, every_file=True)

    from herd.cli import _describe_plan

    assert sampled["warnings"] == []
    assert "planned from 5 of the 20 files, spread evenly" in _describe_plan(sampled)
    assert f"about {sampled['shards']} shard(s)" in _describe_plan(sampled)


def test_a_plan_says_what_small_files_run_as_packed_except_for_openai_result_lines(tmp_path, tiny_model):
    import herd
    from herd.cli import _describe_plan

    (tmp_path / "in").mkdir()
    for index in range(30):
        (tmp_path / "in" / f"part-{index:02d}.jsonl").write_text(json.dumps({"prompt": f"question {index}"}) + "\n")
    job = {
        "input": {"path": str(tmp_path / "in"), "prompt_column": "prompt"},
        "model": tiny_model_spec(tiny_model),
        "sampling": {"max_new_tokens": 4},
        "output": {"path": str(tmp_path / "out")},
    }
    packed = herd.plan(job, sample_rows=20)
    assert (packed["shards"], packed["shards_run_as"], packed["replicas"]) == (30, 1, 1)
    assert "30 shard(s) (0 already committed; small ones packed, they run as 1)" in _describe_plan(packed)
    apart = herd.plan({**job, "output": {**job["output"], "format": "openai"}}, sample_rows=20)
    assert (apart["shards"], apart["shards_run_as"]) == (30, 30)
    assert "packed" not in _describe_plan(apart)


def test_a_kept_json_lines_field_that_no_sampled_row_has_is_a_warning_that_names_the_fields(
    tmp_path, tiny_model, capsys
):
    """A typo in keep_columns would leave the output's column empty: JSON Lines rows have no schema
    to refuse it by (a Parquet file without the column is refused), so the plan warns, and exits 0."""
    import herd

    lines = [{"prompt": f"question {index}", "topic": "maths"} for index in range(30)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    job = {
        "input": {"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt", "keep_columns": ["topic", "topc"]},
        "model": tiny_model_spec(tiny_model),
        "sampling": {"max_new_tokens": 4},
        "output": {"path": str(tmp_path / "out")},
    }
    report = herd.plan(job, sample_rows=20)
    assert report["problems"] == []
    assert report["warnings"] == [
        "keep_columns: no sampled row has 'topc' (their fields: prompt, topic); its output column stays empty "
        "unless later rows have it"
    ]
    from herd.cli import main

    (tmp_path / "job.json").write_text(json.dumps(job))
    assert main(["plan", str(tmp_path / "job.json")]) == 0
    assert "herd: warning: keep_columns: no sampled row has 'topc'" in capsys.readouterr().err


def test_fake_engine_calibration_sets_the_engines_variables_only_while_its_engine_runs(
    tmp_path, tiny_model, monkeypatch
):
    """`plan --calibrate` (herd.plan(calibrate=N)) builds an engine in the caller's process. It gets the
    variables a replica's engine gets (the engine core in-process for TP 1 on CPU) while it runs; after,
    they are gone, or a later job of that process (a notebook) would forward them to replicas whose
    model needs others. A value the user set stays theirs. Fake engine: what is under test is the
    process's environment, not what the engine generates."""
    from types import SimpleNamespace

    import herd
    import workers.engine
    from jobs import dry_run

    seen = []

    class EnvironmentRecordingEngine:
        def __init__(self, *args, **kwargs) -> None:
            seen.append(
                {name: os.environ.get(name) for name in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE")}
            )

        def generate(self, requests):
            return [[SimpleNamespace(token_ids=[7, 7, 7])] for _ in requests]

        def close(self) -> None:
            pass

    monkeypatch.setattr(workers.engine, "VllmEngine", EnvironmentRecordingEngine)
    monkeypatch.setattr(dry_run, "_has_gpu", lambda: False)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")  # the user's own
    monkeypatch.setenv("HERD_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"prompt": f"question {index}"}) + "\n" for index in range(8))
    )
    job = {
        "input": {"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"},
        "model": tiny_model_spec(tiny_model),
        "sampling": {"max_new_tokens": 16},
        "output": {"path": str(tmp_path / "out")},
    }
    plan = herd.plan(job, calibrate=4)
    assert plan["calibration"]["rows"] == 4 and plan["calibration"]["completion_tokens_per_row"] == 3
    assert seen == [{"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "3"}]
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "3"
