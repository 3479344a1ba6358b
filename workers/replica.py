"""The replica: one Ray actor hosting one engine, processing the shards the driver hands it."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from common.storage import Storage
from schemas.errors import StorageUnavailable
from schemas.job import JobSpec, ModelSpec, RetrySpec, StorageSpec
from schemas.shard import AnyShard, ShardResult
from workers.engine import Engine, EngineDead, VllmEngine
from workers.model_source import resolve_model, with_local_adapters
from workers.output_capture import recent_first_error_in, send_output_to, start_failure_explained
from workers.shard_io import ShardInputError
from workers.shard_processor import ReplicaContext, process_shard

EngineFactory = Callable[[str, ModelSpec, str], Engine]
log = logging.getLogger(__name__)

# The actor's concurrency group for heartbeats: one thread of its own, so a heartbeat is answered
# while the shards in flight hold every thread of the default group.
HEALTH_GROUP = "health"

# How long a replica whose engine died waits for the driver to end it before it ends itself.
_EXIT_AFTER_ENGINE_DEATH_S = 60.0


class EngineDied(RuntimeError):
    """A shard's answer from a replica whose engine died: the driver replaces the replica and runs
    the shard elsewhere. The message names the cause, which reaches the driver on any node."""


def build_vllm_engine(model_dir: str, spec: ModelSpec, device: str) -> Engine:
    return VllmEngine(model_dir, spec, device)


class Replica:
    """Wrapped with ray.remote by the driver, which decides its resources and placement."""

    def __init__(
        self,
        model: ModelSpec,
        storage: StorageSpec,
        retry: RetrySpec,
        device: str,
        engine_factory: EngineFactory = build_vllm_engine,
        log_file: str | None = None,
    ) -> None:
        if log_file is not None:
            send_output_to(log_file)
        self.storage = Storage(storage, retry)
        model_dir = resolve_model(model.path, self.storage)
        with start_failure_explained(log_file):
            self.engine = engine_factory(model_dir, with_local_adapters(model, self.storage), device)
        # Where the running engine's part of the log begins: an engine that dies names its cause from there.
        self._log_file = log_file
        self._log_since_start = os.path.getsize(log_file) if log_file is not None and os.path.exists(log_file) else 0
        # pyarrow imports pandas at the first pa.table() of a process: left to the first shard's write,
        # that import holds the shard while the engine idles (64 replicas sharing a machine's cores
        # idled ~20 s each: `python -m bench fleet`); paid here, it is start-up time.
        import pandas  # noqa: F401

        # The actor runs resources.shards_in_flight shards at once; the engine batches all their
        # requests together.
        self.context = ReplicaContext(name=f"{socket.gethostname()}:{os.getpid()}")
        self._engine_died: str | None = None  # why, once it has
        self._shards_held = 0
        self._held_lock = threading.Lock()

    def ready(self) -> str:
        """Its name (host:pid), once its engine is built."""
        return self.context.name

    def heartbeat(self) -> float | None:
        """Seconds since this replica last made progress (an engine step, or a shard moving on a
        stage) while holding shards; None when it holds none. Call it in HEALTH_GROUP."""
        with self._held_lock:
            if not self._shards_held:
                return None
        return time.monotonic() - max(self.context.last_activity, self.engine.last_progress_at())

    def process_group(self, shards: list[AnyShard], job: JobSpec) -> list[ShardResult | BaseException]:
        """Small shards at once, each as process() runs it, so that their requests share the engine's
        batches; each one's result, or what it raised (in the form the driver reads: see
        _portable)."""
        with ThreadPoolExecutor(len(shards), thread_name_prefix="shard") as threads:
            futures = [threads.submit(self.process, shard, job) for shard in shards]
        return [_portable(future.exception()) or future.result() for future in futures]

    def process(self, shard: AnyShard, job: JobSpec) -> ShardResult:
        if self._engine_died is not None:  # sent before the driver learnt it
            raise EngineDied(self._engine_died)
        # Each shard carries the job's own storage settings: one pool can serve several jobs.
        with self._held_lock:
            if not self._shards_held:
                self.context.moved_on()  # idle time before this shard is not a stall
            self._shards_held += 1
        try:
            storage = Storage(job.storage, job.retry)
            return process_shard(shard, job, self.engine, storage, self.context)
        except EngineDead as error:
            raise EngineDied(self._engine_death(error)) from None
        finally:
            with self._held_lock:
                self._shards_held -= 1

    def _engine_death(self, error: EngineDead) -> str:
        """Why the engine died, said once in the log; the replica ends itself if the driver (which
        replaces it on its shards' EngineDied) has not ended it within a minute."""
        with self._held_lock:
            if self._engine_died is None:
                # vLLM's error says only "see stack trace above"; the cause (CUDA out of memory, a
                # GPU fallen off the bus) is the first traceback its processes wrote since it started.
                why = str(error)
                cause = recent_first_error_in(self._log_file, self._log_since_start) if self._log_file else None
                if cause is not None and cause not in why:
                    why += f" (the first error in its log since it started: {cause})"
                self._engine_died = why
                log.error("the engine died, replica %s ends: %s", self.context.name, why)
                ending = threading.Timer(_EXIT_AFTER_ENGINE_DEATH_S, os._exit, (1,))
                ending.daemon = True
                ending.start()
            return self._engine_died


def _portable(error: BaseException | None) -> BaseException | None:
    """An error of one shard of a group, as it travels back to the driver: the kinds it acts on
    (unreadable input, storage down, the engine dead) as they are, any other as a RuntimeError naming
    it (an error object of a library may not survive pickling)."""
    if error is None or isinstance(error, (ShardInputError, StorageUnavailable, EngineDied)):
        return error
    return RuntimeError(f"{type(error).__name__}: {error}")
