"""The baseline a user would write by hand: read the Parquet files, one LLM.generate, write Parquet.

python -m bench.bare_vllm DATA_DIR MODEL_DIR OUT_FILE MAX_MODEL_LEN MAX_TOKENS [ORDER] [ENGINE]  -> prints JSON figures
ORDER: as-is (the default) or by-length (longest prompt first), to see whether ordering helps vLLM.
ENGINE: a JSON object of LLM() arguments over the CPU ones below (bench gpu: dtype, load_format,
tensor_parallel_size, enforce_eager false).
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    data_dir, model_dir, out_file, max_model_len, max_tokens = sys.argv[1:6]
    order = sys.argv[6] if len(sys.argv) > 6 else "as-is"
    engine = json.loads(sys.argv[7]) if len(sys.argv) > 7 else {}
    started = time.perf_counter()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import glob

    import pyarrow as pa
    import pyarrow.parquet as pq
    from vllm import LLM, SamplingParams

    table = pa.concat_tables(pq.read_table(path) for path in sorted(glob.glob(f"{data_dir}/*.parquet")))
    if order == "by-length":
        table = table.take(sorted(range(table.num_rows), key=lambda row: -len(table.column("prompt")[row].as_py())))
    prompts = table.column("prompt").to_pylist()
    # The same engine settings as herd's on CPU (chunked prefill off: see workers/engine.py).
    settings = {"dtype": "float32", "enforce_eager": True, "seed": 0, "enable_chunked_prefill": False, **engine}
    llm = LLM(model=model_dir, max_model_len=int(max_model_len), **settings)
    params = [
        SamplingParams(temperature=0.8, max_tokens=int(max_tokens), ignore_eos=True, seed=index)
        for index in range(len(prompts))
    ]
    generate_started, generate_started_at = time.perf_counter(), time.time()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    generate_seconds = time.perf_counter() - generate_started
    completions = [output.outputs[0].text for output in outputs]
    tokens = sum(len(output.outputs[0].token_ids) for output in outputs)
    pq.write_table(pa.table({"id": table.column("id"), "completion": completions}), out_file)
    print(
        "FIGURES "
        + json.dumps(
            {
                "wall_s": time.perf_counter() - started,
                "generate_s": generate_seconds,
                "generate_started_at": generate_started_at,  # unix time: bench gpu splits the wall at it
                "tokens": tokens,
            }
        )
    )


if __name__ == "__main__":
    main()
