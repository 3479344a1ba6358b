"""herd against Ray Data LLM, end to end, on the same data, model and settings. Target: >= 1.5x."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import CACHE, record, run_herd, run_script, tiny_model, write_prompts

NEW_TOKENS = 64
MAX_MODEL_LEN = 512


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench peer")
    parser.add_argument("--prompts", type=int, default=4096)
    arguments = parser.parse_args(argv)
    files = 8
    data = write_prompts(CACHE / f"prompts-{arguments.prompts}-{files}", arguments.prompts, files)
    model = tiny_model()
    with tempfile.TemporaryDirectory() as work:
        script_arguments = [str(data), str(model), f"{work}/peer", str(MAX_MODEL_LEN), str(NEW_TOKENS)]
        peer_wall, peer = run_script(["-m", "bench.ray_data_llm", *script_arguments])
        job = {
            "input": {
                "path": str(data),
                "prompt_column": "prompt",
                "id_column": "id",
                "rows_per_shard": arguments.prompts // 16,
            },
            "model": {"path": str(model), "max_model_len": MAX_MODEL_LEN, "dtype": "float32"},
            "sampling": {"max_new_tokens": NEW_TOKENS, "ignore_eos": True, "temperature": 0.8, "seed": 1},
            "output": {"path": f"{work}/herd"},
        }
        herd_wall, summary, _ = run_herd(job, Path(work) / "herd-job")
    assert summary["completion_tokens"] == peer["tokens"] == arguments.prompts * NEW_TOKENS
    ratio = peer_wall / herd_wall
    record(
        "peer",
        {
            "prompts": arguments.prompts,
            "new_tokens": NEW_TOKENS,
            "ray_data_llm_wall_s": peer_wall,
            "herd_wall_s": herd_wall,
            "tokens": summary["completion_tokens"],
            "ratio": ratio,
            "target": 1.5,
        },
        f"peer: Ray Data LLM {peer_wall:.1f}s, herd {herd_wall:.1f}s on {arguments.prompts} prompts: "
        f"herd / Ray Data LLM speed {ratio:.2f}x end to end (target >= 1.5)",
    )
    return 0
