"""Does the engine idle between shards? Each replica reads its next shard and writes the previous one
while the engine generates (resources.shards_in_flight: 2). Measured side by side with
shards_in_flight 1 (no overlap), on the tiny Llama, with input and output on S3 (a moto server on
127.0.0.1). Reports the engine-busy fraction: the time some shard was generating (the union of their generate
spans) over the span from the first shard's start to the last shard's end. Target: idle < 2% with the overlap."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import CACHE, engine_busy_seconds, moto_s3, record, run_herd, tiny_model, write_prompts


def _busy_fraction(records: list[dict]) -> float:
    span = max(record["finished_at"] for record in records) - min(record["started_at"] for record in records)
    return engine_busy_seconds(records) / span


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench overlap")
    parser.add_argument("--prompts", type=int, default=4096)
    parser.add_argument("--shards", type=int, default=32)
    arguments = parser.parse_args(argv)
    import s3fs

    with moto_s3() as endpoint:
        data = write_prompts(CACHE / f"prompts-{arguments.prompts}-8", arguments.prompts, 8)
        fs = s3fs.S3FileSystem(endpoint_url=endpoint)
        fs.mkdir("bench")
        fs.put(str(data) + "/", "bench/in/", recursive=True)
        busy = {}
        with tempfile.TemporaryDirectory() as work:
            for in_flight in (1, 2):
                job = {
                    "input": {
                        "path": "s3://bench/in/*.parquet",
                        "prompt_column": "prompt",
                        "id_column": "id",
                        "rows_per_shard": arguments.prompts // arguments.shards,
                    },
                    "model": {"path": str(tiny_model()), "max_model_len": 512, "dtype": "float32"},
                    "sampling": {"max_new_tokens": 64, "ignore_eos": True, "temperature": 0.8, "seed": 1},
                    "output": {"path": f"s3://bench/out-{in_flight}", "format": "parquet"},
                    "resources": {"shards_in_flight": in_flight},
                    "storage": {"endpoint_url": endpoint},
                }
                _, _, records = run_herd(job, Path(work) / f"job-{in_flight}")
                busy[in_flight] = _busy_fraction(records)
    record(
        "overlap",
        {
            "prompts": arguments.prompts,
            "shards": arguments.shards,
            "engine_busy_fraction": {"in_flight_1": busy[1], "in_flight_2": busy[2]},
            "target_idle": 0.02,
        },
        f"overlap: engine idle {1 - busy[2]:.2%} of the run with shards_in_flight 2, "
        f"{1 - busy[1]:.2%} with 1 (target < 2%)",
    )
    return 0
