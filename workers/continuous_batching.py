"""Continuous feeding: the requests of every shard a replica holds share one running engine batch.

Calling LLM.generate once per shard would let the batch drain at each shard's tail (the last few
long requests run alone) and leave the engine waiting while the next shard is handed over. Here one
thread owns vLLM's LLMEngine: it admits each submitted group of requests as soon as it arrives,
steps the engine while anything is unfinished, and hands every group its outputs when its last
request finishes. Callers in other threads just wait for their own group.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workers.vllm_internals import final_outputs_only

log = logging.getLogger(__name__)
ENGINE_CHECK_SECONDS = 1.0  # how often a waiting caller checks that the engine's process is alive


class FeederStopped(RuntimeError):
    """The engine failed as a whole: no group in it, and none submitted later, can be served."""


@dataclass
class _Group:
    prompts: list[Any]
    params: list[Any]
    adapters: list[Any]  # each request's vLLM LoRARequest, or None for the base model
    outputs: dict[str, Any] = field(default_factory=dict)  # by request id, as they finish
    request_ids: list[str] = field(default_factory=list)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self.done.set()


class ContinuousFeeder:
    """Serves `generate` from any number of threads through one engine loop thread.

    `engine` is vLLM's LLMEngine (add_request, step, abort_request, has_unfinished_requests); it is
    touched only by the loop thread, since it is not thread safe. `is_fatal(error)` tells an error
    of the whole engine (every group fails, and every later call) from the failure of one step or of
    one group's requests, whether it comes from stepping or from adding a request.
    `engine_gone()` tells whether the engine's own process has exited: vLLM's synchronous client
    notices that, but never wakes a step that waits for output, so waiting callers check it.
    `step_errors_are_fatal`: any error of a step ends the engine. So for an engine core running in
    this process: in a process of its own, vLLM's core declares itself dead on any error of a step
    (is_fatal sees EngineDeadError), and a core in this process is then in the same unknown state.
    """

    def __init__(
        self,
        engine: Any,
        is_fatal: Callable[[BaseException], bool],
        engine_gone: Callable[[], bool],
        step_errors_are_fatal: bool = False,
    ) -> None:
        self._engine = engine
        self._is_fatal = is_fatal
        self._engine_gone = engine_gone
        self._step_errors_are_fatal = step_errors_are_fatal
        self._incoming: queue.SimpleQueue[_Group] = queue.SimpleQueue()
        self._running: dict[str, _Group] = {}  # request id -> its group
        self._ids = itertools.count()
        self._fatal: BaseException | None = None
        # Taken to check for a dead engine and queue a group as one step, and to declare it dead:
        # so every group queued before the engine died is failed, and none after is left waiting.
        self._fatal_lock = threading.Lock()
        self.last_step_at = time.monotonic()  # when a step last returned: the engine is moving
        self._thread = threading.Thread(target=self._serve, name="herd-engine-feeder", daemon=True)
        self._thread.start()

    def generate(self, prompts: list[Any], params: list[Any], adapters: list[Any] | None = None) -> list[Any]:
        """vLLM RequestOutputs in prompt order; raises what adding a request raised (the whole group
        fails, as LLM.generate would) or, once the engine is dead, that error."""
        group = _Group(prompts, params, adapters or [None] * len(prompts))
        with self._fatal_lock:
            if self._fatal is not None:
                raise self._stopped()
            self._incoming.put(group)
        while not group.done.wait(timeout=ENGINE_CHECK_SECONDS):
            if self._engine_gone():
                # The loop thread stays blocked in that step; the replica ends on this error anyway.
                raise FeederStopped("the engine's process exited")
        if group.error is not None:
            raise group.error
        return [group.outputs[request_id] for request_id in group.request_ids]

    def _serve(self) -> None:
        while self._fatal is None:
            # Block only when the engine has nothing to do; otherwise take what has arrived and step.
            wait = not self._engine.has_unfinished_requests()
            try:
                self._admit(self._incoming.get(block=wait))
                while self._fatal is None:
                    self._admit(self._incoming.get_nowait())
            except queue.Empty:
                pass
            # Not once the engine is dead: a request it refused can stay unfinished, and a step of a
            # dead engine waits for ever.
            if self._fatal is None and self._engine.has_unfinished_requests():
                self._step()
        self._fail_waiting()

    def _admit(self, group: _Group) -> None:
        try:
            for prompt, params, adapter in zip(group.prompts, group.params, group.adapters, strict=True):
                params.output_kind = final_outputs_only()  # only finished requests come back
                request_id = str(next(self._ids))
                self._engine.add_request(request_id, prompt, params, lora_request=adapter)
                group.request_ids.append(request_id)
                self._running[request_id] = group
        except Exception as error:  # noqa: BLE001 - the caller gets it, as from LLM.generate
            self._drop(group)
            if self._is_fatal(error):
                # The engine died while idle: vLLM says so when a request is added.
                self._die(error)
                group.finish(self._stopped())
            else:
                group.finish(error)
            return
        if not group.request_ids:
            group.finish()

    def _step(self) -> None:
        try:
            outputs = self._engine.step()
            self.last_step_at = time.monotonic()
        except Exception as error:  # noqa: BLE001 - it belongs to every group in the engine
            if self._step_errors_are_fatal or self._is_fatal(error):
                self._die(error)
                return
            log.warning("an engine step failed (%s); failing the %d groups in it", error, len(self._groups()))
            for group in self._groups():
                self._drop(group)
                group.finish(error)
            return
        for output in outputs:
            if not output.finished:
                continue
            group = self._running.pop(output.request_id, None)
            if group is None:
                continue
            group.outputs[output.request_id] = output
            if len(group.outputs) == len(group.request_ids):
                group.finish()

    def _groups(self) -> list[_Group]:
        return list({id(group): group for group in self._running.values()}.values())

    def _drop(self, group: _Group) -> None:
        """Takes a failed group's requests out of the engine so they stop using the batch."""
        unfinished = [request_id for request_id in group.request_ids if request_id not in group.outputs]
        for request_id in unfinished:
            self._running.pop(request_id, None)
        if unfinished:
            try:
                self._engine.abort_request(unfinished)
            except Exception as error:  # noqa: BLE001 - the next step tells whether the engine is dead
                log.warning("could not abort %d requests: %s", len(unfinished), error)

    def _die(self, error: BaseException) -> None:
        with self._fatal_lock:
            self._fatal = error

    def _stopped(self) -> FeederStopped:
        stopped = FeederStopped(f"{type(self._fatal).__name__}: {self._fatal}")
        stopped.__cause__ = self._fatal
        return stopped

    def _fail_waiting(self) -> None:
        stopped = self._stopped()
        for group in self._groups():
            group.finish(stopped)
        self._running.clear()
        while True:
            try:
                self._incoming.get_nowait().finish(stopped)
            except queue.Empty:
                return
