"""The peer: the same data through Ray Data LLM on vLLM's CPU build.

python -m bench.ray_data_llm DATA_DIR MODEL_DIR OUT_DIR MAX_MODEL_LEN MAX_TOKENS [GPU] -> prints JSON figures.
Every CPU setting below was needed for Ray Data LLM to run on the CPU build on 2 cores (see issue 7).
GPU: a JSON object {"engine_kwargs": {...}, "concurrency": N} (bench gpu): Ray Data LLM's own GPU
defaults then, with these engine arguments and N engines.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def _cpu_config(model_dir: str, max_model_len: int) -> Any:
    from ray.data.llm import vLLMEngineProcessorConfig

    return vLLMEngineProcessorConfig(
        model_source=model_dir,
        engine_kwargs={
            "dtype": "float32",
            "enforce_eager": True,
            "max_model_len": max_model_len,
            "enable_chunked_prefill": False,  # the same engine settings as herd's and the bare script's
        },
        runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
        batch_size=256,
        concurrency=1,
        accelerator_type=None,
        log_engine_metrics=False,
        chat_template_stage=False,
        tokenize_stage={"num_cpus": 0.25},
        detokenize_stage={"num_cpus": 0.25},
        placement_group_config={"bundles": [{"CPU": 1}]},
    )


def _gpu_config(model_dir: str, max_model_len: int, gpu: dict[str, Any]) -> Any:
    from ray.data.llm import vLLMEngineProcessorConfig

    return vLLMEngineProcessorConfig(
        model_source=model_dir,
        engine_kwargs={"max_model_len": max_model_len, **gpu["engine_kwargs"]},
        batch_size=256,
        concurrency=gpu["concurrency"],
        log_engine_metrics=False,
        chat_template_stage=False,
    )


def main() -> None:
    data_dir, model_dir, out_dir, max_model_len, max_tokens = sys.argv[1:6]
    gpu = json.loads(sys.argv[6]) if len(sys.argv) > 6 else None
    started = time.perf_counter()
    import ray
    from ray.data.llm import build_processor

    if gpu is None:
        ray.init(num_cpus=4, include_dashboard=False)  # logical: its list-files task waits forever with 2
        config = _cpu_config(model_dir, int(max_model_len))
        stage_cpus = {"num_cpus": 0.25}
    else:
        ray.init(include_dashboard=False)
        config = _gpu_config(model_dir, int(max_model_len), gpu)
        stage_cpus = {}
    processor = build_processor(
        config,
        preprocess=lambda row: {
            "prompt": row["prompt"],
            "sampling_params": {"temperature": 0.8, "max_tokens": int(max_tokens), "ignore_eos": True},
        },
        postprocess=lambda row: {
            "id": row["id"],
            "completion": row["generated_text"],
            "tokens": row["num_generated_tokens"],
        },
        preprocess_map_kwargs=stage_cpus,
        postprocess_map_kwargs=stage_cpus,
    )
    results = processor(ray.data.read_parquet(data_dir))
    results.write_parquet(out_dir)
    tokens = ray.data.read_parquet(out_dir).sum("tokens")
    print("FIGURES " + json.dumps({"wall_s": time.perf_counter() - started, "tokens": tokens}))


if __name__ == "__main__":
    main()
