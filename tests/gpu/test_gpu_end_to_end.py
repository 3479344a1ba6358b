"""On a GPU machine (install with `bash scripts/install.sh gpu test`): the same job on CUDA vLLM,
with replicas placed in GPU placement groups. Skipped where no GPU is visible."""

from __future__ import annotations

import json

import pytest

from tests.gpu import gpu_count
from tests.tiny_llama import build_tiny_llama

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu_count() == 0, reason="needs an NVIDIA GPU")]


def test_a_job_on_the_gpu_build_answers_every_row_with_exact_token_counts(tmp_path):
    import ray

    from jobs.runner import run_job
    from schemas import parse_job

    model = build_tiny_llama(tmp_path / "tiny")
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"prompt": f"question {index}"}) + "\n" for index in range(64))
    )
    ray.init(num_gpus=gpu_count())
    try:
        outcome = run_job(
            parse_job(
                {
                    "input": {"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt", "bytes_per_shard": 1024},
                    "model": {
                        "path": str(model),
                        "max_model_len": 512,
                        "dtype": "float16",
                        "engine_options": {"gpu_memory_utilization": 0.3},
                    },
                    "sampling": {"max_new_tokens": 16, "ignore_eos": True},
                    "output": {"path": str(tmp_path / "out")},
                }
            )
        )
    finally:
        ray.shutdown()
    assert outcome.exit_code == 0
    assert outcome.summary.rows_out == 64 and outcome.summary.completion_tokens == 64 * 16
