"""The engine interface a replica generates with, and its real implementation on vLLM.

The interface is small on purpose (build; generate token prompts with sampling settings; get text,
token ids and finish reasons back) so that scheduling and fault tests can swap in a fake engine.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from schemas.job import ModelSpec, SamplingSpec
from workers.continuous_batching import ContinuousFeeder, FeederStopped
from workers.vllm_internals import (
    engine_core_in_this_process,
    engine_dead_error,
    engine_process_died,
    shut_down,
    step_engine,
)


class EngineDead(RuntimeError):
    """The engine cannot serve any more requests: the replica must be replaced, its shards retried."""


@dataclass(frozen=True)
class EngineRequest:
    prompt_ids: list[int]
    seed: int  # per row, so a row reproduces whatever batch or replica it lands in
    sampling: SamplingSpec  # the job's, or a request file's own parameters
    adapter: str | None = None  # one of model.adapters by name; None: the base model


@dataclass(frozen=True)
class Sample:
    token_ids: list[int]
    text: str
    finish_reason: str  # stop | length | abort
    logprobs: list[float] | None = None  # of each generated token, when asked for
    # With top_logprobs k: at each step, the k most likely (token id, log probability), most likely first.
    top_logprobs: list[list[tuple[int, float]]] | None = None


class Engine(Protocol):
    tokenizer: Any  # renders prompts; safe to use while generate() runs in another thread
    max_model_len: int

    def generate(self, requests: list[EngineRequest]) -> list[list[Sample]]:
        """One list of `request.sampling.n` samples per request, in request order. Safe to call
        from several threads at once (a replica's shards in flight)."""
        ...

    def last_progress_at(self) -> float:
        """When the engine last moved its requests on (time.monotonic()): a finished step."""
        ...


def row_seed(job_seed: int, row_id: str) -> int:
    digest = hashlib.sha256(f"{job_seed}\x00{row_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def engine_environment(spec: ModelSpec, device: str) -> dict[str, str]:
    """Settings vLLM reads from the environment, for an engine of this model on this device."""
    environment: dict[str, str] = {}
    if device == "cpu":
        # vLLM on CPU reserves most of the memory for its KV cache unless told; 1 GiB serves a node
        # shared with other processes (the test models need far less).
        environment["VLLM_CPU_KVCACHE_SPACE"] = "1"
        if spec.tensor_parallel_size == 1:
            # The engine core and its one worker run in the replica's own process instead of two
            # spawned ones, each importing torch and vLLM again: an engine starts in ~3 s instead of
            # ~17 s on 2 cores, and generates as fast (python -m bench engine_start).
            environment["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        else:
            # vLLM's CPU workers each bind OpenMP threads to their own cores; inside an actor they
            # cannot discover a NUMA layout, so give one core per tensor-parallel rank.
            environment["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(core) for core in range(spec.tensor_parallel_size))
    return environment


@contextmanager
def engine_variables_set(spec: ModelSpec, device: str) -> Iterator[None]:
    """engine_environment's settings in this process's environment while an engine of this process
    is built and runs, where the user set none; removed after. Left set, a later job of the same
    process (a notebook) would forward them to its replicas, whose model may need others."""
    added = {name: value for name, value in engine_environment(spec, device).items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def vllm_options(model_dir: str, spec: ModelSpec, device: str) -> dict[str, Any]:
    """The keyword arguments of vLLM's LLM for this model on this device."""
    options: dict[str, Any] = {
        "model": model_dir,
        "tensor_parallel_size": spec.tensor_parallel_size,
        "max_model_len": spec.max_model_len,
        # CPU kernels run float32 best; bfloat16 is the GPU default for Llama 2 weights.
        "dtype": "float32" if device == "cpu" and spec.dtype == "auto" else spec.dtype,
        "seed": 0,
        "enable_prefix_caching": spec.prefix_caching,
    }
    # Guided JSON without free whitespace: otherwise a weak model can spend every token on it.
    options["structured_outputs_config"] = {"backend": "xgrammar", "disable_any_whitespace": True}
    if device == "gpu" and spec.tensor_parallel_size > 1:
        # The replica sits in a placement group with one bundle per GPU: vLLM's Ray executor
        # puts one worker in each.
        options["distributed_executor_backend"] = "ray"
    if device == "cpu" and spec.tensor_parallel_size > 1:
        # The replica sits in a placement group of one CPU bundle; inside one, vLLM would pick its Ray
        # executor and look for a bundle per rank. Its own worker processes share the replica's CPUs.
        options["distributed_executor_backend"] = "mp"
    if device == "cpu":
        # CUDA graphs do not exist on CPU; eager mode also skips a long compile at start-up.
        options["enforce_eager"] = True
        # A request prefilled in chunks has its sampled token discarded, and vLLM then rewinds the
        # request's seeded generator, which CPU generators cannot do: the engine dies
        # ("CPU Generator does not use offset") on any batch large enough to be chunked.
        options["enable_chunked_prefill"] = False
    if spec.adapters:
        options["enable_lora"] = True
        options["max_lora_rank"] = lora_rank_bound(spec)
        # Adapters that one batch may mix; more are swapped in and out between steps.
        options["max_loras"] = min(len(spec.adapters), MAX_LORAS_PER_BATCH)
        if device == "cpu":
            # vLLM's PyTorch LoRA ops (lora/ops/torch_ops, the CPU build's) pick each token's adapter
            # weights by index, and a base-model token's index is -1: the *last* slot. A base row in
            # a batch with adapter rows then gets that slot's adapter. One slot more than adapters
            # keeps the last slot empty (zeros), so -1 adds nothing; every adapter keeps a slot.
            options["max_loras"] = len(spec.adapters) + 1
    options.update(spec.engine_options)
    return options


MAX_LORAS_PER_BATCH = 8
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM's max_lora_rank accepts


def lora_rank_bound(spec: ModelSpec) -> int:
    """The smallest max_lora_rank vLLM accepts that holds every adapter's rank (the `r` PEFT wrote);
    the adapters' paths are local directories by now."""
    rank = max(json.loads((Path(adapter.path) / "adapter_config.json").read_text())["r"] for adapter in spec.adapters)
    bound = next((allowed for allowed in _VLLM_LORA_RANKS if allowed >= rank), None)
    if bound is None:
        raise ValueError(f"model.adapters: rank {rank} is above {_VLLM_LORA_RANKS[-1]}, the most vLLM serves")
    return bound


@contextmanager
def collector_paused_then_heap_frozen() -> Iterator[None]:
    """Python's cyclic garbage collector paused while vLLM, torch and transformers import (~650,000
    objects, none of them garbage: the collector's passes over them cost ~2-3 s of a ~13 s import on
    2 cores), then everything alive frozen, so that the full collections vLLM runs while it builds the
    engine skip those objects (~1 s more). vLLM freezes the heap itself once an in-process engine is
    built (EngineCore's freeze_gc_heap); this is the same, earlier, and as there the garbage there is
    is collected first, so none is kept for good. Once vLLM is imported (a second engine in a process:
    a notebook's calibrations) there is nothing to gain, and it does nothing. python -m bench
    engine_start measures it."""
    if _VLLM_ENTRY_POINT in sys.modules:
        yield
        return
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


_VLLM_ENTRY_POINT = "vllm.entrypoints.llm"  # the module `from vllm import LLM` loads


class VllmEngine:
    """One vLLM engine; tensor parallel across `tensor_parallel_size` devices of this node."""

    def __init__(self, model_dir: str, spec: ModelSpec, device: str) -> None:
        with collector_paused_then_heap_frozen():
            from vllm import LLM

        self.llm = LLM(**vllm_options(model_dir, spec, device))
        self._adapters = {name: _lora_request(spec, name) for name in spec.adapter_names()}
        from transformers import AutoTokenizer

        # Every shard in flight feeds the same running batch (see workers/continuous_batching.py).
        dead = engine_dead_error()
        self._feeder = ContinuousFeeder(
            step_engine(self.llm),
            is_fatal=lambda error: isinstance(error, dead),
            engine_gone=lambda: engine_process_died(self.llm),
            step_errors_are_fatal=engine_core_in_this_process(self.llm),
        )

        # Two tokenizers: the engine's decodes completions while it generates; herd's own renders and
        # counts the next shard's prompts at the same time (one tokenizer object is not thread safe).
        self._decoder = self.llm.get_tokenizer()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.max_model_len = spec.max_model_len

    def last_progress_at(self) -> float:
        return self._feeder.last_step_at

    def close(self) -> None:
        """Stops the engine's processes now (rather than at interpreter exit)."""
        shut_down(self.llm)

    def _sampling_params(self, sampling: SamplingSpec, seed: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = None
        if sampling.structured is not None:
            structured = StructuredOutputsParams(
                json=sampling.structured.json_schema,
                json_object=sampling.structured.json_object or None,
                regex=sampling.structured.regex,
                choice=sampling.structured.choices,
            )
        return SamplingParams(
            # 0: only the sampled token's own log probability; k: also the k most likely.
            logprobs=sampling.top_logprobs if sampling.logprobs else None,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            logit_bias=sampling.logit_bias,
            structured_outputs=structured,
            n=sampling.n // sampling.identical_samples,
            temperature=sampling.effective_temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k is not None else 0,
            max_tokens=sampling.max_new_tokens,
            seed=seed,
            stop=sampling.stop or None,
            ignore_eos=sampling.ignore_eos,
        )

    def generate(self, requests: list[EngineRequest]) -> list[list[Sample]]:
        from vllm.inputs import TokensPrompt

        if not requests:
            return []
        try:
            outputs = self._feeder.generate(
                [TokensPrompt(prompt_token_ids=request.prompt_ids) for request in requests],
                [self._sampling_params(request.sampling, request.seed) for request in requests],
                [self._adapters[request.adapter] if request.adapter else None for request in requests],
            )
        except FeederStopped as error:
            raise EngineDead(str(error)) from error
        return [
            [
                Sample(
                    token_ids=list(completion.token_ids),
                    text=self._text(completion, request.sampling),
                    finish_reason=str(completion.finish_reason),
                    logprobs=_chosen_logprobs(completion) if request.sampling.logprobs else None,
                    top_logprobs=_top_logprobs(completion, request.sampling.top_logprobs)
                    if request.sampling.logprobs and request.sampling.top_logprobs
                    else None,
                )
                for completion in sorted(output.outputs, key=lambda completion: completion.index)
            ]
            * request.sampling.identical_samples
            for request, output in zip(requests, outputs, strict=True)
        ]

    def _text(self, completion: Any, sampling: SamplingSpec) -> str:
        return completion_text(completion.token_ids, sampling.stop, self._decoder)


def _lora_request(spec: ModelSpec, name: str) -> Any:
    from vllm.lora.request import LoRARequest

    index = spec.adapter_names().index(name)
    # vLLM tells adapters apart by a positive integer id, stable for the engine's life.
    return LoRARequest(lora_name=name, lora_int_id=index + 1, lora_path=spec.adapters[index].path)


def completion_text(token_ids: list[int], stop: list[str], decoder: Any) -> str:
    """The generated ids decoded on their own, as the Llama 2 reference's tokenizer.decode does (no
    leading SentencePiece space), then cut before the first stop sequence. vLLM's own incremental
    text keeps that space, and can start with part of the prompt when the prompt ends inside a
    multi-byte character; so a row's text never depends on whether a stop list was given."""
    text = decoder.decode(token_ids, skip_special_tokens=True)
    cut = min((index for index in (text.find(sequence) for sequence in stop) if index != -1), default=len(text))
    return text[:cut]


def _top_logprobs(completion: Any, count: int) -> list[list[tuple[int, float]]]:
    """At each step, the `count` most likely tokens (vLLM adds the sampled one when it is not among them)."""
    return [
        sorted(((int(token), float(entry.logprob)) for token, entry in step.items()), key=lambda item: -item[1])[:count]
        for step in completion.logprobs or []
    ]


def _chosen_logprobs(completion: Any) -> list[float]:
    """The log probability of each token that was generated (vLLM keys them by token id)."""
    return [
        float(step[token].logprob) for token, step in zip(completion.token_ids, completion.logprobs or [], strict=True)
    ]
