"""LoRA adapters: one replica serves the base model and two PEFT adapters made at test time (one on
local disk, one on S3), and each row or request gets exactly what PEFT generates with its adapter.

vLLM's CPU build mixes base and adapter requests in one batch correctly only with a free adapter slot
(workers/engine.py says why); these rows share batches on purpose."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cpu.conftest import read_rows, tiny_model_spec
from tests.tiny_lora import build_tiny_lora, greedy_token_ids

NEW_TOKENS = 8
PROMPTS = ["the quick brown fox", "explain why the river"]


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory, s3_endpoint):
    """The adapter "terse" on local disk, and "shouty" (other weights) uploaded to S3."""
    import s3fs

    directory = tmp_path_factory.mktemp("adapters")
    terse = build_tiny_lora(tiny_model, directory / "terse", seed=1)
    shouty = build_tiny_lora(tiny_model, directory / "shouty", seed=2)
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).put(str(shouty) + "/", "herd-test/adapters/shouty/", recursive=True)
    return {"terse": terse, "shouty": shouty}


@pytest.fixture(scope="module")
def lora_model(tiny_model, adapters):
    return {
        **tiny_model_spec(tiny_model),
        "adapters": [
            {"name": "terse", "path": str(adapters["terse"])},
            {"name": "shouty", "path": "s3://herd-test/adapters/shouty"},
        ],
    }


@pytest.fixture(scope="module")
def lora_pool(ray_session, lora_model, s3_endpoint, tmp_path_factory):
    from jobs.replicas import ReplicaPool
    from schemas import parse_job

    base = parse_job(
        {
            "input": {"path": "unused.jsonl", "prompt_column": "prompt"},
            "model": lora_model,
            "storage": {"endpoint_url": s3_endpoint},
            "output": {"path": str(tmp_path_factory.mktemp("unused"))},
        }
    )
    pool = ReplicaPool(base.model, base, size=1)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def expected(tiny_model, tiny_tokenizer, adapters):
    """PEFT's greedy text for each (adapter or None, prompt)."""
    answers = {}
    for name in (None, "terse", "shouty"):
        for prompt in PROMPTS:
            ids = greedy_token_ids(tiny_model, adapters.get(name), tiny_tokenizer.encode(prompt), NEW_TOKENS)
            answers[name, prompt] = tiny_tokenizer.decode(ids, skip_special_tokens=True)
    # The adapters change what the model says, or this test could not tell them apart.
    assert len({answers[name, PROMPTS[0]] for name in (None, "terse", "shouty")}) == 3
    return answers


def _run(pool, model, s3_endpoint, **sections):
    from jobs.runner import run_job
    from schemas import parse_job

    spec = {
        "model": model,
        "prompt": {"format": "raw"},
        "storage": {"endpoint_url": s3_endpoint},
        "sampling": {"max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True},
        **sections,
    }
    return run_job(parse_job(spec), pool=pool)


def test_each_row_is_answered_by_the_adapter_its_column_names_and_gets_what_peft_generates(
    lora_pool, lora_model, s3_endpoint, expected, tmp_path
):
    names = ["terse", "shouty", None, "", "nope", "terse", "shouty", None]
    table = pa.table(
        {
            "id": [f"r{index}" for index in range(len(names))],
            "prompt": [PROMPTS[0]] * 5 + [PROMPTS[1]] * 3,
            "adapter": names,
        }
    )
    pq.write_table(table, tmp_path / "rows.parquet")
    outcome = _run(
        lora_pool,
        lora_model,
        s3_endpoint,
        input={
            "path": str(tmp_path / "rows.parquet"),
            "prompt_column": "prompt",
            "id_column": "id",
            "adapter_column": "adapter",
            "keep_columns": ["adapter"],
        },
        output={"path": str(tmp_path / "out")},
        # The same prompt under three adapters must not be answered once for all of them.
        optimize={"dedupe_prompts": True},
    )
    assert outcome.summary.rows_in == 8 and outcome.summary.error_rows == 1
    rows = {row["id"]: row for row in read_rows(str(tmp_path / "out" / "data"))}
    assert sorted(rows) == ["r0", "r1", "r2", "r3", "r5", "r6", "r7"]
    for row_id, row in rows.items():
        adapter = row["adapter"] or None
        prompt = table.column("prompt")[int(row_id[1:])].as_py()
        assert row["completion"] == expected[adapter, prompt], row_id
        assert row["model"] == (adapter or lora_model["path"])
    (error,) = read_rows(str(tmp_path / "out" / "errors"))
    assert error["id"] == "r4" and error["stage"] == "render"
    assert "adapter: 'nope' is not one of model.adapters (terse, shouty)" in error["reason"]


def test_a_request_names_its_adapter_in_its_model_and_the_result_line_says_which(
    lora_pool, lora_model, s3_endpoint, expected, tmp_path
):
    lines = [
        {
            "custom_id": f"{model}-{index}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": model, "prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0},
        }
        for model in ("gpt-4o-mini", "terse", "shouty")
        for index, prompt in enumerate(PROMPTS)
    ]
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    _run(
        lora_pool,
        lora_model,
        s3_endpoint,
        input={"path": str(tmp_path / "requests.jsonl"), "format": "openai-batch"},
        output={"path": str(tmp_path / "out"), "format": "openai"},
        sampling={"max_new_tokens": NEW_TOKENS, "ignore_eos": True},
    )
    answers = {}
    for path in sorted((tmp_path / "out" / "data").iterdir()):
        for line in path.read_text().splitlines():
            result = json.loads(line)
            answers[result["custom_id"]] = result["response"]["body"]
    assert len(answers) == 6
    for model, adapter in (("gpt-4o-mini", None), ("terse", "terse"), ("shouty", "shouty")):
        for index, prompt in enumerate(PROMPTS):
            body = answers[f"{model}-{index}"]
            assert body["choices"][0]["text"] == expected[adapter, prompt]
            assert body["model"] == (adapter or lora_model["path"])


def test_an_adapter_path_without_an_adapter_stops_the_job_before_any_engine(tiny_model, tmp_path):
    from jobs.runner import run_job
    from schemas import SpecError, parse_job

    (tmp_path / "rows.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "not-an-adapter").mkdir()
    job = parse_job(
        {
            "input": {"path": str(tmp_path / "rows.jsonl"), "prompt_column": "prompt"},
            "model": {
                **tiny_model_spec(tiny_model),
                "adapters": [{"name": "a", "path": str(tmp_path / "not-an-adapter")}],
            },
            "output": {"path": str(tmp_path / "out")},
        }
    )
    with pytest.raises(SpecError, match=r"model.adapters a: .*not-an-adapter.* holds no adapter_config.json"):
        run_job(job, engine_factory=_no_engine)


def _no_engine(*arguments):
    raise AssertionError("no engine may start for a job whose adapter is missing")
