"""Secrets stay out of what Ray shows everyone (runtime_env) and out of what herd writes down."""

from __future__ import annotations

import json

from jobs.replicas import _actor_environment, forwarded_environment
from jobs.runner import run_job
from schemas import parse_job
from schemas.job import ModelSpec

SECRETS = {
    "HF_TOKEN": "hf_leak_test_0123456789",
    "HUGGING_FACE_HUB_TOKEN": "hf_leak_test_hub_0123456789",
    "VLLM_API_KEY": "vllm-leak-test-key",
    "AWS_SECRET_ACCESS_KEY": "aws-leak-test-secret",
    "AWS_SESSION_TOKEN": "aws-leak-test-session",
}


def test_only_allowed_settings_reach_the_runtime_env_of_actors_and_jobs(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HERD_CACHE_DIR", "/tmp/herd-cache")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    for environment in (forwarded_environment(), _actor_environment(ModelSpec(path="/m"), "cpu")):
        assert not set(SECRETS) & set(environment)
        assert not any(value in json.dumps(environment) for value in SECRETS.values())
        assert environment["HERD_CACHE_DIR"] == "/tmp/herd-cache"
        assert environment["VLLM_CPU_KVCACHE_SPACE"] == "2"
        assert environment["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"


def test_secrets_in_engine_options_are_not_written_to_the_output(tmp_path, tiny_model):
    (tmp_path / "in.jsonl").write_text("")  # no rows: the output is claimed, no engine starts
    job = parse_job(
        {
            "input": {"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"},
            "model": {
                "path": str(tiny_model),
                "engine_options": {"hf_token": SECRETS["HF_TOKEN"], "tokenizer_revision": "main"},
            },
            "output": {"path": str(tmp_path / "out")},
        }
    )
    run_job(job)
    written = "".join(path.read_text() for path in (tmp_path / "out").rglob("*") if path.is_file())
    assert SECRETS["HF_TOKEN"] not in written
    spec = json.loads((tmp_path / "out" / "job.json").read_text())["spec"]
    assert spec["model"]["engine_options"] == {"hf_token": "<redacted>", "tokenizer_revision": "main"}
