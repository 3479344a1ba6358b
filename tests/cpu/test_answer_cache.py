"""The dedupe cache's contract between a replica's shards (no engine needed: it only holds answers)."""

from __future__ import annotations

import pytest

from schemas.job import SamplingSpec
from workers.answer_cache import AnswerCache, prompt_key
from workers.engine import EngineDead, Sample

SAMPLES = [Sample(token_ids=[5, 6], text="hi", finish_reason="length")]


def test_the_first_shard_to_ask_generates_and_later_ones_get_its_answer():
    cache = AnswerCache()
    answer, mine = cache.claim("k")
    waiting, theirs = cache.claim("k")
    assert mine and not theirs and waiting is answer
    cache.fulfil("k", answer, SAMPLES)
    assert waiting.result(timeout=0) == SAMPLES
    assert cache.claim("k") == (answer, False)


def test_a_failed_row_is_not_kept_so_the_next_shard_tries_again():
    cache = AnswerCache()
    answer, _ = cache.claim("k")
    waiting, _ = cache.claim("k")
    cache.fulfil("k", answer, "ValueError: bad request")
    assert waiting.result(timeout=0) == "ValueError: bad request"
    assert cache.claim("k")[1] is True


def test_a_shard_that_dies_fails_its_waiters_with_the_same_error():
    cache = AnswerCache()
    answer, _ = cache.claim("k")
    waiting, _ = cache.claim("k")
    cache.abandon("k", answer, EngineDead("engine core died"))
    with pytest.raises(EngineDead):
        waiting.result(timeout=0)
    assert cache.claim("k")[1] is True


def test_the_least_recently_used_answers_are_evicted_beyond_capacity():
    cache = AnswerCache(capacity=2)
    for key in ("a", "b"):
        cache.fulfil(key, cache.claim(key)[0], SAMPLES)
    cache.claim("a")  # used again: "b" is now the oldest
    cache.fulfil("c", cache.claim("c")[0], SAMPLES)
    assert [cache.claim(key)[1] for key in ("a", "c", "b")] == [False, False, True]


def test_the_key_covers_the_prompt_ids_the_adapter_and_every_sampling_setting():
    base = prompt_key([1, 2, 3], SamplingSpec(seed=1))
    assert prompt_key([1, 2, 3], SamplingSpec(seed=1)) == base
    assert prompt_key([1, 2, 3], SamplingSpec(seed=2)) != base
    assert prompt_key([1, 2, 3], SamplingSpec(seed=1, temperature=0.5)) != base
    assert prompt_key([1, 23], SamplingSpec(seed=1)) != prompt_key([12, 3], SamplingSpec(seed=1))
    assert prompt_key([1, 2, 3], SamplingSpec(seed=1), "tone-a") not in (
        base,
        prompt_key([1, 2, 3], SamplingSpec(seed=1), "tone-b"),
    )
