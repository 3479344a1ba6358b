"""Job spec validation: every invalid spec fails before anything starts, naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from schemas import SpecError, load_job, parse_job

REPO = Path(__file__).resolve().parents[2]
VALID = {
    "input": {"path": "in.jsonl", "prompt_column": "prompt"},
    "model": {"path": "/models/llama"},
    "output": {"path": "out"},
}


def _with(section: str, **fields) -> dict:
    spec = {key: dict(value) for key, value in VALID.items()}
    spec.setdefault(section, {}).update(fields)
    return spec


INVALID_SPECS = [
    ({"model": VALID["model"], "output": VALID["output"]}, "input: required field is missing"),
    (
        _with("input", prompt_colum="x"),
        "input.prompt_colum: unknown field (did you mean prompt_column?); allowed here: adapter_column,",
    ),
    (_with("optimize", dedupe=True), "optimize.dedupe: unknown field; allowed here: dedupe_prompts"),
    (_with("input", messages_column="m"), "give exactly one prompt source: input.prompt_column, input.messages_column"),
    (_with("input", format="openai-batch"), "input.format openai-batch carries its own prompts"),
    (_with("input", encoding="latin-9x"), "input.encoding: unknown encoding 'latin-9x' (e.g. utf-8, cp1252"),
    (
        _with("prompt", format="llama2-chat", regenerate_final_answer=True),
        "prompt.regenerate_final_answer replaces the last answer of a conversation: set input.messages_column",
    ),
    (
        _with("sampling", structured={"regex": "a", "choices": ["b"]}),
        "give exactly one of json_schema, json_object, regex or choices",
    ),
    (_with("sampling", temperature=3), "sampling.temperature: Input should be less than or equal to 2"),
    (_with("sampling", stop=["", "x"]), "stop: an empty stop sequence would end every completion at once"),
    (
        _with("input", format="openai-batch", prompt_column=None, id_column="id"),
        "input.format openai-batch has no columns: remove input.id_column",
    ),
    (
        _with("input", format="xlsx"),
        "input.format: Input should be 'auto', 'parquet', 'jsonl', 'csv', 'tsv', 'arrow', 'openai-batch' or "
        "'llama2-hosted'",
    ),
    (_with("sampling", temperature=-1), "sampling.temperature: Input should be greater than or equal to 0"),
    (_with("sampling", n=0), "sampling.n: Input should be greater than or equal to 1"),
    (_with("sampling", top_p=0), "sampling.top_p: Input should be greater than 0"),
    (_with("sampling", max_new_tokens=0), "sampling.max_new_tokens: Input should be greater than or equal to 1"),
    (_with("sampling", max_new_tokens=5000), "leaves no room for a prompt in model.max_model_len (4096)"),
    (_with("model", max_model_len=8192), "model.max_model_len: Input should be less than or equal to 4096"),
    (_with("model", tensor_parallel_size=0), "model.tensor_parallel_size: Input should be greater than or equal to 1"),
    (_with("model", dtype="int3"), "model.dtype: Input should be 'auto', 'float32', 'float16' or 'bfloat16'"),
    (_with("model", engine_options={"max_model_len": 10}), "engine_options must not set ['max_model_len']"),
    (_with("prompt", format="alpaca"), "prompt.format: Input should be 'raw', 'llama2-chat' or 'model-template'"),
    (_with("prompt", system_prompt="be nice"), "system_prompt needs format llama2-chat or model-template"),
    (_with("output", format="csv"), "output.format: Input should be 'parquet', 'jsonl' or 'openai'"),
    (_with("resources", replicas=0), "replicas must be 'auto' or at least 1"),
    (_with("retry", attempts=0), "retry.attempts: Input should be greater than or equal to 1"),
    (_with("input", adapter_column="tone"), "input.adapter_column names adapters per row: list them in model.adapters"),
    (
        _with("model", adapters=[{"name": "a", "path": "/x"}, {"name": "a", "path": "/y"}]),
        "adapters: the name 'a' is given twice",
    ),
    (_with("model", adapters=[{"name": "no spaces", "path": "/x"}]), "model.adapters.0.name: String should match"),
    (
        _with("input", format="openai-batch", prompt_column=None, adapter_column="a"),
        "input.format openai-batch has no columns: remove input.id_column, input.keep_columns and input.adapter_column",
    ),
    # A kept column named like one herd writes would have been overwritten (or overwritten herd's).
    (
        _with("input", keep_columns=["topic", "completion"]),
        "keep_columns: 'completion' is a column herd writes itself (id, sample_index, completion, finish_reason, "
        "prompt_tokens, completion_tokens, model, token_logprobs, structured_valid); keep it under another name: "
        "{completion: input_completion}",
    ),
    (_with("input", keep_columns=["id"]), "'id' is a column herd writes itself (id, sample_index, completion,"),
    (_with("input", keep_columns=["id"]), "; set id_column: id to make it the row id, or keep it under another name"),
    (_with("input", keep_columns=[{"sku": "model"}]), "keep it under another name: {sku: input_model}"),
    (_with("input", keep_columns=["a", {"b": "a"}]), "keep_columns: two columns would be written as 'a'"),
    (_with("input", keep_columns=["a", {"a": "b"}]), "keep_columns: 'a' is kept twice"),
    (_with("input", keep_columns=[{"a": "x", "b": "y"}]), "must map one input column to its output name"),
    (
        {**_with("input", keep_columns=["topic"]), "output": {"path": "out", "format": "openai"}},
        "output.format openai writes OpenAI Batch result lines, which have no place for input.keep_columns",
    ),
    ({**VALID, "max_error_fraction": 2}, "max_error_fraction: Input should be less than or equal to 1"),
    ({**VALID, "outptu": {}}, "outptu: unknown field (did you mean output?); allowed here: input, max_error_fraction"),
]


@pytest.mark.parametrize(("spec", "message"), INVALID_SPECS, ids=[message[:40] for _, message in INVALID_SPECS])
def test_invalid_spec_is_refused_with_a_message_naming_the_field(spec, message):
    with pytest.raises(SpecError) as raised:
        parse_job(spec, source="job.yaml")
    assert message in str(raised.value)
    assert str(raised.value).startswith("job.yaml: invalid job spec")


def test_hosted_llama2_and_vllm_sampling_names_are_both_accepted():
    hosted = parse_job(_with("sampling", max_new_tokens=96, do_sample=False, temperature=0.6))
    vllm_style = parse_job(_with("sampling", max_tokens=96))
    assert hosted.sampling.max_new_tokens == vllm_style.sampling.max_new_tokens == 96
    assert hosted.sampling.effective_temperature == 0.0  # do_sample false means greedy


@pytest.mark.parametrize("job_file", sorted((REPO / "examples").glob("*.yaml")), ids=lambda path: path.name)
def test_every_example_job_file_is_valid(job_file):
    job = load_job(job_file)
    assert job.model.path == "demo:smollm2-135m-instruct"
    assert (REPO / job.input.path).exists()


def test_unreadable_or_malformed_job_files_are_named(tmp_path):
    with pytest.raises(SpecError, match="cannot read the job file"):
        load_job(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("input: [unclosed")
    with pytest.raises(SpecError, match=r"bad\.yaml: not valid YAML"):
        load_job(tmp_path / "bad.yaml")


def test_help_and_schemas_import_without_ray_vllm_or_torch():
    probe = (
        "import sys, runpy; sys.argv = ['submit.py', '--help']\n"
        "try:\n    runpy.run_path('submit.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "import schemas\n"
        "heavy = sorted(name for name in ('ray', 'vllm', 'torch', 'transformers') if name in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert "usage: submit.py" in result.stdout
    assert "HEAVY []" in result.stdout


def test_invalid_job_file_exits_2_with_the_reason_on_stderr(tmp_path):
    (tmp_path / "job.yaml").write_text(
        "input: {path: x.jsonl, prompt_column: p}\nmodel: {path: m}\noutput: {path: o}\nsampling: {n: 0}\n"
    )
    result = subprocess.run(
        [sys.executable, "submit.py", "run", str(tmp_path / "job.yaml")], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "sampling.n: Input should be greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_engine_settings_follow_the_job_and_the_device():
    from workers.engine import vllm_options

    model = parse_job(_with("model", prefix_caching=False, tensor_parallel_size=2)).model
    cpu = vllm_options("/models/m", model, "cpu")
    assert cpu["enable_prefix_caching"] is False
    # Chunked prefill kills the CPU engine with seeded requests; CUDA graphs do not exist on CPU.
    assert cpu["enable_chunked_prefill"] is False and cpu["enforce_eager"] is True
    # Inside its placement group vLLM would pick its Ray executor; on CPU its own processes serve.
    assert cpu["distributed_executor_backend"] == "mp"
    gpu = vllm_options("/models/m", model, "gpu")
    assert gpu["distributed_executor_backend"] == "ray" and "enforce_eager" not in gpu
    assert vllm_options("/models/m", parse_job(_with("model")).model, "gpu")["enable_prefix_caching"] is True


def test_lora_settings_hold_every_adapter_rank_and_keep_a_free_slot_on_cpu(tmp_path):
    from workers.engine import vllm_options

    for name, rank in (("small", 4), ("large", 24)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(f'{{"r": {rank}}}')
    adapters = [{"name": name, "path": str(tmp_path / name)} for name in ("small", "large")]
    model = parse_job(_with("model", adapters=adapters)).model
    cpu, gpu = vllm_options("/models/m", model, "cpu"), vllm_options("/models/m", model, "gpu")
    # 24 rounds up to the next rank vLLM accepts.
    assert cpu["enable_lora"] is True and cpu["max_lora_rank"] == gpu["max_lora_rank"] == 32
    # On CPU a base-model row takes the last slot's weights: that slot must stay empty.
    assert cpu["max_loras"] == 3 and gpu["max_loras"] == 2
    assert "enable_lora" not in vllm_options("/models/m", parse_job(_with("model")).model, "cpu")


def test_the_job_file_reference_page_is_the_one_the_models_generate():
    from schemas.reference import page_with_reference, undocumented_fields

    page = (REPO / "docs" / "job-file.md").read_text()
    assert page_with_reference(page) == page, "run: python -m schemas.reference --update docs/job-file.md"
    assert undocumented_fields() == []


def test_local_paths_become_absolute_for_ray_workers_adapters_too_and_s3_urls_stay(tmp_path, monkeypatch):
    from jobs.planner import with_absolute_paths

    monkeypatch.chdir(tmp_path)
    adapters = [{"name": "a", "path": "adapters/a"}, {"name": "b", "path": "s3://bucket/adapters/b"}]
    job = with_absolute_paths(parse_job(_with("model", path="models/llama", adapters=adapters)))
    assert job.model.path == str(tmp_path / "models" / "llama") and job.input.path == str(tmp_path / "in.jsonl")
    assert [adapter.path for adapter in job.model.adapters] == [str(tmp_path / "adapters" / "a"), adapters[1]["path"]]


def test_cli_help_shows_a_default_where_it_says_something_and_never_twice():
    import argparse

    from herd.cli import build_parser

    [commands] = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    run_help, plan_help = (" ".join(commands.choices[name].format_help().split()) for name in ("run", "plan"))
    assert "(default: None)" not in run_help and "(default: False)" not in run_help
    # --progress-every and --log-format name theirs in their help: once each, not again by argparse.
    assert run_help.count("(default:") == 2 and "often (default: 30)" in run_help
    assert "rows to read, render and count (default: 200)" in plan_help
