"""optimize.dedupe_prompts: identical prompts are generated once per replica, not once per row.

A replica keeps the samples of the prompts it generated (keyed by the prompt's token ids and its
sampling settings, seed included), so a copy in a later shard, or in another shard in flight, is
answered without the engine. Seeds then derive from the prompt, never the row, which makes the
answer the same whichever replica or shard generates it first.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from concurrent.futures import Future

from schemas.job import SamplingSpec
from workers.engine import Sample

# About 1 KB per entry for short completions: the cache stays near 100 MB.
CAPACITY = 100_000


def prompt_key(prompt_ids: list[int], sampling: SamplingSpec, adapter: str | None = None) -> str:
    digest = hashlib.sha256(sampling.model_dump_json().encode())
    if adapter is not None:
        digest.update(b"\x00adapter:" + adapter.encode())
    digest.update(b"\x00" + b",".join(str(token).encode() for token in prompt_ids))
    return digest.hexdigest()


Answer = list[Sample] | str  # the samples, or why generating them failed


class AnswerCache:
    """The most recently used answers of a replica, shared by its shards in flight. A prompt another
    shard is generating right now is waited for, not generated again."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._answers: OrderedDict[str, Future[Answer]] = OrderedDict()
        self._lock = threading.Lock()

    def claim(self, key: str) -> tuple[Future[Answer], bool]:
        """The answer to come, and whether the caller is the one to generate it (it asked first)."""
        with self._lock:
            answer = self._answers.get(key)
            if answer is not None:
                self._answers.move_to_end(key)
                return answer, False
            answer = Future()
            self._answers[key] = answer
            while len(self._answers) > self._capacity:
                self._answers.popitem(last=False)  # its waiters hold their own reference
            return answer, True

    def fulfil(self, key: str, answer: Future[Answer], result: Answer) -> None:
        """Gives a claimed answer to everyone waiting for it. A failed row is not kept: the next
        shard with this prompt tries again."""
        answer.set_result(result)
        if isinstance(result, str):
            self._forget(key, answer)

    def abandon(self, key: str, answer: Future[Answer], error: BaseException) -> None:
        """The shard that claimed it failed as a whole (a dead engine): its waiters fail the same way,
        so their shards are retried rather than their rows reported as errors."""
        answer.set_exception(error)
        self._forget(key, answer)

    def _forget(self, key: str, answer: Future[Answer]) -> None:
        with self._lock:
            if self._answers.get(key) is answer:
                del self._answers[key]
