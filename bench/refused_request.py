"""One request vLLM refuses, among a shard's: what it costs the shard's other rows.

vLLM refuses a whole call when it refuses one of its requests as they are added (an OpenAI line's
logit_bias naming a token the vocabulary lacks, a schema it cannot compile). herd finds the refused
request by halving the call (workers/shard_processor.py `_generate_requests`); the other side is what
herd did before: every request of the call again, one call each. The real vLLM engine (CPU, tiny
Llama) in this process, `--requests` requests of `--new-tokens` tokens, one of them refused; the
sides alternate first over `--rounds` rounds; beside them, the same requests with none refused.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.common import record, tiny_model


def _one_at_a_time(requests: list[Any], engine: Any) -> list[Any]:
    """The other side: after the refused call, each request in a call of its own."""
    try:
        return list(engine.generate(requests))
    except Exception:  # noqa: BLE001 - the refusal this benchmark makes
        pass
    results = []
    for request in requests:
        try:
            results.append(engine.generate([request])[0])
        except Exception as error:  # noqa: BLE001 - the refused request's answer
            results.append(f"{type(error).__name__}: {error}")
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench refused_request")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args(argv)

    from schemas.job import ModelSpec, SamplingSpec
    from workers.engine import EngineRequest, VllmEngine, engine_variables_set
    from workers.shard_processor import _generate_requests

    model = str(tiny_model())
    spec = ModelSpec(path=model, max_model_len=512, dtype="float32")
    good = SamplingSpec(max_new_tokens=arguments.new_tokens, ignore_eos=True)
    refused = SamplingSpec(max_new_tokens=arguments.new_tokens, logit_bias={10**6: 5.0})  # the tiny vocabulary: 512
    with engine_variables_set(spec, "cpu"):
        engine = VllmEngine(model, spec, "cpu")
        try:
            prompts = [[1, 5 + index % 400, 7] for index in range(arguments.requests)]
            one_refused = [
                EngineRequest(ids, index, refused if index == len(prompts) // 3 else good)
                for index, ids in enumerate(prompts)
            ]
            none_refused = [EngineRequest(ids, index, good) for index, ids in enumerate(prompts)]
            engine.generate(none_refused[:8])  # warm
            sides = {"halving": _generate_requests, "one_at_a_time": _one_at_a_time}
            seconds: dict[str, list[float]] = {name: [] for name in [*sides, "none_refused"]}
            for round_number in range(arguments.rounds):
                order = list(sides) if round_number % 2 == 0 else list(reversed(sides))
                for name in order:
                    started = time.perf_counter()
                    results = sides[name](one_refused, engine)
                    seconds[name].append(time.perf_counter() - started)
                    assert sum(isinstance(result, str) for result in results) == 1, name
                started = time.perf_counter()
                engine.generate(none_refused)
                seconds["none_refused"].append(time.perf_counter() - started)
        finally:
            engine.close()
    median = {name: statistics.median(found) for name, found in seconds.items()}
    record(
        "refused_request",
        {"requests": arguments.requests, "new_tokens": arguments.new_tokens, "seconds": seconds, "median_s": median},
        f"refused_request: {arguments.requests} requests of {arguments.new_tokens} tokens, one refused by vLLM: "
        f"halving {median['halving']:.2f} s, one at a time {median['one_at_a_time']:.2f} s "
        f"({median['one_at_a_time'] / median['halving']:.1f}x); none refused {median['none_refused']:.2f} s "
        f"(halving costs {median['halving'] / median['none_refused']:.2f}x of that)",
    )
    return 0
