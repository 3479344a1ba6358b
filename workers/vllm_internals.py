"""Every place herd reaches past vLLM's documented `LLM` API, in one module. Each has a test in
tests/cpu/test_vllm_internals.py on the real engine, so an upgrade that moves one of them fails there,
by name, instead of somewhere deep in a job. Pinned release: vllm 0.32.0 (CPU and GPU builds)."""

from __future__ import annotations

from typing import Any

# The methods of vLLM's LLMEngine that continuous feeding drives (workers/continuous_batching.py).
ENGINE_METHODS = ("add_request", "step", "has_unfinished_requests", "abort_request")


def step_engine(llm: Any) -> Any:
    """The LLMEngine inside an LLM: requests are added to it while it steps (continuous feeding)."""
    return llm.llm_engine


def engine_dead_error() -> type[BaseException]:
    """What vLLM raises from any engine call once its engine cannot serve any more."""
    from vllm.v1.engine.exceptions import EngineDeadError

    return EngineDeadError


def final_outputs_only() -> Any:
    """The output kind under which step() returns only finished requests."""
    from vllm.sampling_params import RequestOutputKind

    return RequestOutputKind.FINAL_ONLY


def engine_process_died(llm: Any) -> bool:
    """Whether the engine core process has died. vLLM's multiprocess client sets this flag from its
    monitor thread, but never wakes a step that waits for output (herd polls it). An engine running
    in this process has no such process: its death is an exception in the calling thread."""
    from vllm.v1.engine.core_client import MPClient

    client = llm.llm_engine.engine_core
    return isinstance(client, MPClient) and bool(client.resources.engine_dead)


def engine_core_in_this_process(llm: Any) -> bool:
    """Whether the engine core runs in the calling process (VLLM_ENABLE_V1_MULTIPROCESSING=0)
    rather than in a process of its own behind vLLM's multiprocess client."""
    from vllm.v1.engine.core_client import InprocClient

    return isinstance(llm.llm_engine.engine_core, InprocClient)


def shut_down(llm: Any) -> None:
    """Stops the engine's processes now (vLLM otherwise does it at interpreter exit)."""
    llm.llm_engine.engine_core.shutdown()
