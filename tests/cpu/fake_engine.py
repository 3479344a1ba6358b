"""A fake engine for scheduling and fault tests only: what two CPU cores cannot show with vLLM.

It uses the tiny model's real tokenizer (through the `tokenizers` library, without transformers and
torch: a fake replica starts in ~1.7 s instead of ~7 s), so rendering and token counts are real; only
generation is faked (tokens derived from the request's seed, after a fixed delay). It can also fail
on chosen calls, to play a replica that dies in the middle of a shard: its process exits, or its
engine fails as vLLM's does when its core process dies.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from pathlib import Path

from schemas.job import ModelSpec
from workers.engine import EngineDead, EngineRequest, Sample

REFUSED_MARK = "flaky"


ENGINE_CORE_DEATH = """\
(EngineCore_DP0 pid={pid}) ERROR 12-04 16:05:02 [core.py:1512] EngineCore encountered a fatal error.
(EngineCore_DP0 pid={pid}) ERROR 12-04 16:05:02 [core.py:1512] Traceback (most recent call last):
(EngineCore_DP0 pid={pid}) ERROR 12-04 16:05:02 [core.py:1512]   File "vllm/v1/engine/core.py", line 1501, in run
(EngineCore_DP0 pid={pid}) ERROR 12-04 16:05:02 [core.py:1512]     self.step()
(EngineCore_DP0 pid={pid}) ERROR 12-04 16:05:02 [core.py:1512] torch.OutOfMemoryError: CUDA out of memory. \
Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.80 GiB of which 1.10 GiB is free."""


class FakeEngine:
    def __init__(
        self,
        model_dir: str,
        spec: ModelSpec,
        seconds_per_call: float,
        deaths_dir: str | None,
        deaths: int,
        fault: str,
        refuse_marked_while: str | None = None,
        start_seconds: float = 0.0,
        loading_dir: str | None = None,
        start_errors: tuple[str, ...] = (),
        starts_dir: str | None = None,
    ) -> None:
        if starts_dir is not None:  # the n-th start of the test (counted in files) fails with start_errors[n]
            starts = Path(starts_dir)
            starts.mkdir(parents=True, exist_ok=True)
            count = len(list(starts.iterdir()))
            (starts / f"start-{count}-{os.getpid()}").touch()
            if count < len(start_errors):
                raise RuntimeError(start_errors[count])
        if loading_dir is not None:  # says it is loading, for a test that acts at that moment
            (Path(loading_dir) / str(os.getpid())).write_text("")
        time.sleep(start_seconds)  # loading weights, or a node that never gets them

        # Requests whose prompt holds REFUSED_MARK fail while this file exists (a passing fault).
        self.refuse_marked_while = refuse_marked_while

        self.tokenizer = TokenizerWithoutTorch(model_dir)
        self.max_model_len = spec.max_model_len
        self.seconds_per_call = seconds_per_call
        self.deaths_dir = Path(deaths_dir) if deaths_dir else None
        self.deaths = deaths
        self.fault = fault
        self._last_progress = time.monotonic()
        # One call at a time, like one engine at a fixed rate: a replica's shards in flight queue here.
        self._busy = threading.Lock()

    def _maybe_die(self) -> None:
        """Fails (at most `deaths` times over the whole test, counted in files) mid-shard, as `fault`
        says: "exit" (the process exits), "engine_dead" (the engine fails as vLLM's does when its
        core process dies) or "hang" (the engine never steps again while the replica still answers)."""
        if self.deaths_dir is None:
            return
        self.deaths_dir.mkdir(parents=True, exist_ok=True)
        if len(list(self.deaths_dir.iterdir())) < self.deaths:
            (self.deaths_dir / f"death-{os.getpid()}").touch()
            if self.fault == "engine_dead":
                # What vLLM's engine core writes to the replica's output as it dies on a GPU.
                print(ENGINE_CORE_DEATH.format(pid=os.getpid()), file=sys.stderr, flush=True)
                raise EngineDead("EngineCore encountered an issue. See stack trace (above) for the root cause.")
            if self.fault == "hang":
                time.sleep(3600)  # ended by the driver's stall watch
            os._exit(1)

    def last_progress_at(self) -> float:
        return self._last_progress

    def generate(self, requests: list[EngineRequest]) -> list[list[Sample]]:
        refusing = self.refuse_marked_while is not None and os.path.exists(self.refuse_marked_while)
        if refusing and any(REFUSED_MARK in self.tokenizer.decode(request.prompt_ids) for request in requests):
            raise RuntimeError("fake engine: this request fails while the test says so")
        with self._busy:
            time.sleep(self.seconds_per_call / 2)
            self._maybe_die()
            time.sleep(self.seconds_per_call / 2)
            self._last_progress = time.monotonic()
        results = []
        for request in requests:
            rng = random.Random(request.seed)
            samples = []
            for _ in range(request.sampling.n):
                ids = [rng.randrange(3, 500) for _ in range(request.sampling.max_new_tokens)]
                samples.append(Sample(ids, self.tokenizer.decode(ids), "length"))
            results.append(samples)
        return results


class TokenizerWithoutTorch:
    """The model's tokenizer.json through the `tokenizers` library alone: the same ids as transformers'
    tokenizer for raw and llama2-chat prompts (no chat template; test_llama2_chat_format.py holds them
    equal), without importing torch as transformers does: a fake replica starts in ~1.7 s instead of
    ~7 s, and takes ~90 MB instead of ~300 MB (tens of them share one machine in `bench fleet`)."""

    def __init__(self, model_dir: str) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        self.bos_token_id = self._tokenizer.token_to_id("<s>")
        self.eos_token_id = self._tokenizer.token_to_id("</s>")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: object) -> list[int]:
        raise NotImplementedError("TokenizerWithoutTorch renders raw and llama2-chat prompts only")


class FakeEngineFactory:
    """Picklable, so it travels to the replica actors."""

    def __init__(
        self,
        seconds_per_call: float = 0.05,
        deaths_dir: str | None = None,
        deaths: int = 0,
        fault: str = "exit",
        refuse_marked_while: str | None = None,
        start_seconds: float = 0.0,
        loading_dir: str | None = None,
        start_errors: tuple[str, ...] = (),
        starts_dir: str | None = None,
    ) -> None:
        self.start_errors = start_errors
        self.starts_dir = starts_dir
        self.loading_dir = loading_dir
        self.refuse_marked_while = refuse_marked_while
        self.start_seconds = start_seconds
        self.seconds_per_call = seconds_per_call
        self.deaths_dir = deaths_dir
        self.deaths = deaths
        self.fault = fault

    def __call__(self, model_dir: str, spec: ModelSpec, device: str) -> FakeEngine:
        return FakeEngine(
            model_dir,
            spec,
            self.seconds_per_call,
            self.deaths_dir,
            self.deaths,
            self.fault,
            self.refuse_marked_while,
            self.start_seconds,
            self.loading_dir,
            self.start_errors,
            self.starts_dir,
        )
