"""The pool of replica actors: how many, on what resources, with which environment.

Each replica first reserves its resources in a placement group: tensor_parallel_size GPUs of one node
(STRICT_PACK, one bundle per GPU), or that many CPUs on the CPU build. A group that does not fit what is
up is what makes an autoscaler add a node; the dispatcher waits for the group before the replica's
start clock runs. Settings the engine reads from the environment are passed to the actors explicitly,
since a Ray worker does not see the driver's environment on a cluster.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from common.layout import OutputLayout
from common.node_cache import cache_root
from common.storage import is_remote, join
from jobs.capacity import choose_device, cluster_shape
from jobs.replica_state import NODE_LEFT, ReplicaState
from schemas.job import JobSpec, ModelSpec
from workers.engine import engine_environment
from workers.replica import HEALTH_GROUP, EngineFactory, Replica, build_vllm_engine

# The variables that configure the engine, its caches or storage endpoints and hold no secret: an
# allow-list, since Ray shows every actor's and job's runtime_env to anyone on the cluster (the
# dashboard, `ray list actors --detail`). Credentials (HF_TOKEN, AWS keys, VLLM_API_KEY) reach local
# workers by inheritance and cluster nodes through their own environment or instance role.
FORWARDED_VARIABLES = frozenset(
    {
        "VLLM_CPU_KVCACHE_SPACE",
        "VLLM_CPU_OMP_THREADS_BIND",
        "VLLM_LOGGING_LEVEL",
        "VLLM_ATTENTION_BACKEND",
        "VLLM_USE_MODELSCOPE",
        "VLLM_ENABLE_V1_MULTIPROCESSING",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "TRANSFORMERS_CACHE",
        "TOKENIZERS_PARALLELISM",
        "HERD_CACHE_DIR",
        "AWS_ENDPOINT_URL",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
    }
)


def _engine_identity(model: ModelSpec) -> dict[str, Any]:
    # The name is only what the output calls the model: engines serve any name alike.
    return model.model_dump(mode="json", exclude={"name"})


def forwarded_environment() -> dict[str, str]:
    """This process's engine and endpoint settings, to hand to processes Ray starts elsewhere."""
    return {name: value for name, value in os.environ.items() if name in FORWARDED_VARIABLES}


def _actor_environment(model: ModelSpec, device: str) -> dict[str, str]:
    env = forwarded_environment()
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Ray starts workers at nice 15, below everything else on the node; the engine is the job's
    # work, and on a busy node the lower priority costs it (vLLM on CPU: 17% slower at nice 15).
    env.setdefault("RAY_worker_niceness", "0")
    for name, value in engine_environment(model, device).items():
        env.setdefault(name, value)
    return env


def replica_log_file(job: JobSpec, number: int) -> str:
    """Where replica `number` of a run writes its output: under the output's logs/ for a local output,
    else in the node's cache (`~/.cache/herd/logs/<job>-<output digest>/`)."""
    name = f"replica-{number}-{os.getpid()}.log"
    if not is_remote(job.output.path):
        return join(OutputLayout(job.output.path).logs_dir, name)
    digest = hashlib.sha256(job.output.path.encode()).hexdigest()[:8]
    return str(cache_root() / "logs" / f"{job.slug}-{digest}" / name)


class ReplicaPool:
    """Replica actors for one model configuration; reusable across jobs that use the same model.
    The pool owns each replica's state (jobs/replica_state.py); a dispatcher drives its phases."""

    def __init__(
        self,
        model: ModelSpec,
        job: JobSpec,
        size: int,
        engine_factory: EngineFactory = build_vllm_engine,
        quiet: bool = False,
        device: str | None = None,
    ) -> None:
        """`quiet`: each replica's output (vLLM's, transformers') goes to its own log file instead
        of Ray's worker logs and the driver's terminal; see replica_log_file. `device`: gpu or cpu;
        by default chosen from the job's resources.accelerator and the cluster (jobs/capacity.py)."""
        self.model = model
        self._quiet = quiet
        self._started = 0
        self.device = device or choose_device(job.resources.accelerator, cluster_shape())
        self.size = size
        self.shards_in_flight = job.resources.shards_in_flight
        self._job = job
        self._engine_factory = engine_factory
        # Heartbeats have a thread of their own: the shards in flight may hold every other one.
        self._actor_class = ray.remote(concurrency_groups={HEALTH_GROUP: 1})(Replica)
        self._environment = _actor_environment(model, self.device)
        self.replicas: list[ReplicaState] = []  # those not forgotten yet: alive, or dead and not replaced yet

    def serves(self, model: ModelSpec) -> bool:
        return _engine_identity(model) == _engine_identity(self.model)

    def start(self) -> ReplicaState:
        """A new replica, placing: its placement group asks the cluster for its resources."""
        tp = self.model.tensor_parallel_size
        if self.device == "gpu":
            # One bundle per GPU, all on one node. With TP > 1 the replica itself holds no GPU: vLLM's
            # Ray executor places one worker per bundle of the group the replica was placed in.
            bundles = [{"GPU": 1, "CPU": 1}] + [{"GPU": 1}] * (tp - 1)
            actor_resources = {"num_cpus": 1, "num_gpus": 1 if tp == 1 else 0}
        else:
            bundles = [{"CPU": tp}]
            actor_resources = {"num_cpus": tp}
        group = placement_group(bundles, strategy="STRICT_PACK")
        options: dict[str, Any] = {
            **actor_resources,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
            ),
        }
        log_file = self._next_log_file() if self._quiet else None
        actor = self._actor_class.options(
            **options,
            max_restarts=0,  # the driver replaces dead replicas itself, and re-queues their shards
            max_concurrency=self.shards_in_flight,
            runtime_env={"env_vars": self._environment},
        ).remote(
            self.model,
            self._job.storage,
            self._job.retry,
            self.device,
            self._engine_factory,
            log_file,
        )
        replica = ReplicaState(actor=actor, placement_group=group, log_file=log_file)
        self.replicas.append(replica)
        return replica

    def start_missing(self) -> None:
        """Starts replicas until there are `size`."""
        while len(self.replicas) < self.size:
            self.start()

    def resize(self, size: int) -> None:
        """`size` replicas from now on: those started last beyond it end now; start_missing adds the
        ones missing."""
        self.size = size
        for replica in self.replicas[size:]:
            self.forget(replica)

    def _next_log_file(self) -> str:
        self._started += 1
        return replica_log_file(self._job, self._started)

    def node_of(self, replica: ReplicaState) -> str:
        """The node its placement group was placed on (the replica runs in the group's first bundle);
        NODE_LEFT when the group is no longer placed: its node left between the placing and now."""
        table = placement_group_table(replica.placement_group)
        if table.get("state") != "CREATED":
            return NODE_LEFT
        return table.get("bundles_to_node_id", {}).get(0, NODE_LEFT)

    def bundles(self) -> list[dict[str, float]]:
        """What one replica asks the cluster for."""
        return self.replicas[0].placement_group.bundle_specs if self.replicas else []

    def forget(self, replica: ReplicaState) -> None:
        """Ends the replica's actor and frees its resources."""
        if replica in self.replicas:
            self.replicas.remove(replica)
        ray.kill(replica.actor, no_restart=True)
        remove_placement_group(replica.placement_group)

    def shutdown(self) -> None:
        for replica in list(self.replicas):
            self.forget(replica)


def last_log_lines(replica: ReplicaState, count: int = 5) -> str:
    """The end of a replica's log, to say why it died (readable where the replica ran here)."""
    if replica.log_file is None:
        return ""
    try:
        with open(replica.log_file, "rb") as handle:
            handle.seek(max(0, os.path.getsize(replica.log_file) - 8192))
            lines = handle.read().decode("utf-8", errors="replace").splitlines()[-count:]
    except OSError:
        return f"; its log: {replica.log_file}"
    return f"; its log ({replica.log_file}) ends:\n    " + "\n    ".join(lines)
