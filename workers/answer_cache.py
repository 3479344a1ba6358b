"""optimize.dedupe_prompts: identical prompts are generated once per replica, not once per row.

A replica keeps the samples of the prompts it generated (keyed by the prompt's token ids and its
sampling settings, seed included), so a copy in a later shard is answered without the engine.
Seeds then derive from the prompt, never the row, which makes the answer the same whichever
replica or shard generates it first.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from schemas.job import SamplingSpec
from workers.engine import Sample

# About 1 KB per entry for short completions: the cache stays near 100 MB.
CAPACITY = 100_000


def prompt_key(prompt_ids: list[int], sampling: SamplingSpec) -> str:
    digest = hashlib.sha256(sampling.model_dump_json().encode())
    digest.update(b"\x00" + b",".join(str(token).encode() for token in prompt_ids))
    return digest.hexdigest()


class AnswerCache:
    """The most recently used answers, shared by a replica's shards in flight."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._answers: OrderedDict[str, list[Sample]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> list[Sample] | None:
        with self._lock:
            samples = self._answers.get(key)
            if samples is not None:
                self._answers.move_to_end(key)
            return samples

    def put(self, key: str, samples: list[Sample]) -> None:
        with self._lock:
            self._answers[key] = samples
            self._answers.move_to_end(key)
            while len(self._answers) > self._capacity:
                self._answers.popitem(last=False)
