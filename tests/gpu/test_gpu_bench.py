"""`python -m bench gpu`, small: herd, a bare vLLM script and Ray Data LLM on the GPU, each generating
every token asked for. Skipped where no GPU is visible (here it runs as `--device cpu`, by hand)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gpu import gpu_count

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu_count() == 0, reason="needs an NVIDIA GPU")]

REPO = Path(__file__).resolve().parents[2]


def test_bench_gpu_measures_tokens_per_s_per_gpu_of_herd_bare_vllm_and_ray_data_llm():
    # The tiny Llama (no tokenizer to fetch: a GPU machine may have no network), dummy weights.
    result = subprocess.run(
        [sys.executable, "-m", "bench", "gpu", "--shapes", "tiny", "--prompts", "256", "--budget-min", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((REPO / "bench" / "results" / "gpu.json").read_text())
    [case] = figures["results"]
    assert case["shape"] == "tiny" and case["tensor_parallel_size"] == 1
    assert set(case["tokens_per_s_per_gpu"]) == {"herd", "bare_vllm", "ray_data_llm"}
    assert all(rate > 0 for rate in case["tokens_per_s_per_gpu"].values())
    # herd's and the bare script's walls split in three: each a time within the wall (a generation start
    # taken from another clock than the bench's would put start-up or after below zero).
    for side in ("herd", "bare_vllm"):
        phases = case["phases_s"][side]
        assert set(phases) == {"start_up_s", "generate_s", "after_s"}
        assert phases["generate_s"] > 0 and phases["start_up_s"] > 0 and phases["after_s"] >= 0, phases
    assert result.stdout.strip().splitlines()[-1].startswith("gpu: tiny TP 1: tokens/s per GPU herd")
