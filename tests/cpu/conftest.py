"""Shared, expensive fixtures: the tiny model, one local Ray, one pool of two warm vLLM engines, moto S3.

A replica takes 10-20 s to start on two cores (its process's imports, then the engine inside it), so
every end-to-end test shares the same two replicas.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

# Test credentials for the moto server; set before Ray starts so its workers inherit them.
FAKE_AWS_KEY_ID = "AKIAHERDTESTKEY00001"
FAKE_AWS_SECRET = "herd-test-secret-do-not-leak-0123456789"
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": FAKE_AWS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": FAKE_AWS_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
)

TEST_MAX_MODEL_LEN = 512


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Subprocess tests that start their own engines run first, together: they keep both cores busy,
    and the background scenarios that keep a core busy wait for them to end (tests/cpu/background.py)
    to run beside the tests after them, which leave one idle. With them, the other tests of their module
    that use the same module-scoped fixture (a Ray head of the module's), which would otherwise be
    started a second time. Then the tests that start something long and mostly idle (a storage outage
    of minutes) in the background, to be checked at their module's place in the run."""

    def module_fixtures(item: pytest.Item) -> set[tuple[str, str]]:
        definitions = getattr(item, "_fixtureinfo", None)
        if definitions is None:
            return set()
        return {
            (item.module.__name__, name)
            for name, defs in definitions.name2fixturedefs.items()
            if defs and defs[-1].scope == "module"
        }

    with_own_engines = {
        fixture for item in items if item.get_closest_marker("own_engine") for fixture in module_fixtures(item)
    }

    def order(item: pytest.Item) -> int:
        if item.get_closest_marker("own_engine") or module_fixtures(item) & with_own_engines:
            return 0
        return 1 if item.get_closest_marker("starts_early") else 2

    items.sort(key=order)
    OWN_ENGINE_GROUP.update(item.nodeid for item in items if order(item) == 0)


OWN_ENGINE_GROUP: set[str] = set()  # the tests that run first (pytest_collection_modifyitems)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.nodeid not in OWN_ENGINE_GROUP:
        from tests.cpu.background import OWN_ENGINE_TESTS_OVER

        OWN_ENGINE_TESTS_OVER.set()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_llama import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    # Logical CPUs are scheduling tokens: two for the shared vLLM replicas (one per real core), two
    # for the fake-engine replicas of the scheduling and fault tests, and one for the fake replica of
    # the long storage outage that runs beside them (test_storage_outages.py).
    ray.init(num_cpus=5, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def tiny_model_spec(tiny_model: Path) -> dict[str, Any]:
    return {"path": str(tiny_model), "max_model_len": TEST_MAX_MODEL_LEN, "dtype": "float32"}


@pytest.fixture(scope="session")
def tiny_pool(ray_session: None, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Two replicas of the tiny Llama on vLLM CPU, one per core, shared by every end-to-end test."""
    from jobs.replicas import ReplicaPool
    from schemas import parse_job

    base = parse_job(
        {
            "input": {"path": "unused.jsonl", "prompt_column": "prompt"},
            "model": tiny_model_spec(tiny_model),
            "output": {"path": str(tmp_path_factory.mktemp("unused"))},
        }
    )
    pool = ReplicaPool(base.model, base, size=2)
    yield pool
    pool.shutdown()


def every_replica_up(pool: Any) -> None:
    """Returns once each of the pool's replicas has its engine up (a run then spreads over them all
    from its first shard, instead of the first replica up taking every shard of a short job)."""
    import ray

    pool.start_missing()
    ray.get([replica.actor.ready.remote() for replica in pool.replicas])


def started_replica(pool: Any) -> tuple[Any, int]:
    """The pool's first replica, once it is up, and its process id."""
    import ray

    pool.start_missing()
    replica = pool.replicas[0].actor
    name = ray.get(replica.ready.remote())  # "host:pid"
    return replica, int(name.rsplit(":", 1)[1])


@pytest.fixture(scope="session", autouse=True)
def background_scenarios(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Starts, at the session's start, the background scenarios (tests/cpu/background.py) that the
    selected tests name with @pytest.mark.background_scenario(NAME), in the order those tests run."""
    names = list(
        dict.fromkeys(
            marker.args[0] for item in request.session.items for marker in item.iter_markers("background_scenario")
        )
    )
    if not names:
        yield None
        return
    import tests.cpu.cluster_scenarios  # noqa: F401 - registers the cluster scenarios
    from tests.cpu.background import BackgroundScenarios

    scenarios = BackgroundScenarios(
        names, tmp_path_factory.mktemp("background-scenarios"), request.getfixturevalue("tiny_model")
    )
    yield scenarios
    scenarios.shutdown()


@pytest.fixture
def scenario_result(request: pytest.FixtureRequest, background_scenarios: Any) -> Any:
    """The result of the background scenario this test names with @pytest.mark.background_scenario."""
    return background_scenarios.result(request.node.get_closest_marker("background_scenario").args[0])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with a bucket named herd-test."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import s3fs

    s3fs.S3FileSystem(endpoint_url=endpoint).mkdir("herd-test")
    yield endpoint
    server.stop()


@pytest.fixture
def run_tiny(tiny_pool: Any, tiny_model: Path) -> Any:
    """Runs a job on the shared tiny-model pool: run_tiny(input={...}, output={...}, sampling={...})."""
    from jobs.runner import run_job
    from schemas import parse_job

    def run(overwrite: bool = False, **sections: Any) -> Any:
        spec = {"model": tiny_model_spec(tiny_model), "prompt": {"format": "raw"}, **sections}
        return run_job(parse_job(spec), overwrite=overwrite, pool=tiny_pool)

    return run


def manifest_records(output: str | Path, endpoint_url: str | None = None) -> list[Any]:
    """The output's committed ShardRecords, read as a resume reads them (checkpoints and record files)."""
    from common.layout import OutputLayout
    from common.storage import Storage
    from jobs.committed import committed_shards
    from schemas.job import RetrySpec, StorageSpec

    storage = Storage(StorageSpec(endpoint_url=endpoint_url), RetrySpec())
    return list(committed_shards(storage, OutputLayout(str(output))).values())


def died_before_its_first_checkpoint(
    output: str | Path, uncommitted: Collection[str] = (), endpoint_url: str | None = None
) -> list[Any]:
    """Leaves the manifest as a run that died before its first checkpoint would have: a record file
    per committed shard and no checkpoint, the shards in `uncommitted` not committed at all (their
    data files stay, as a crash between a shard's write and its commit leaves them). Returns the
    records kept."""
    from common.layout import OutputLayout
    from common.storage import Storage, join
    from jobs.committed import CHECKPOINT_FILE, commit_shard
    from schemas.job import RetrySpec, StorageSpec

    storage = Storage(StorageSpec(endpoint_url=endpoint_url), RetrySpec())
    layout = OutputLayout(str(output))
    records = manifest_records(output, endpoint_url)
    skipped = set(uncommitted)
    kept = [record for record in records if record.shard_id not in skipped]
    storage.delete([layout.shard_record(record.shard_id) for record in records])
    storage.delete(
        [
            join(layout.manifest_dir, name)
            for name in storage.list_names(layout.manifest_dir)
            if CHECKPOINT_FILE.fullmatch(name)
        ]
    )
    for record in kept:
        commit_shard(storage, layout, record)
    return kept


def read_rows(directory: str, endpoint_url: str | None = None) -> list[dict[str, Any]]:
    """Every row of every Parquet/JSONL file in `directory`, files in name order."""
    import pyarrow.parquet as pq

    from common.jsonl import decode_jsonl
    from common.storage import Storage, join
    from schemas.job import RetrySpec, StorageSpec

    storage = Storage(StorageSpec(endpoint_url=endpoint_url), RetrySpec())
    rows: list[dict[str, Any]] = []
    for name in storage.list_names(directory):
        data = storage.read_bytes(join(directory, name))
        if name.endswith(".parquet"):
            import io

            rows += pq.read_table(io.BytesIO(data)).to_pylist()
        elif name.endswith(".jsonl"):
            rows += decode_jsonl(data)
    return rows


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.cpu.fault_tally import TALLY, line

    if TALLY["faults injected"]:
        terminalreporter.write_line(line())


@pytest.fixture(scope="session")
def llama2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from tests.llama2_vocab import VOCAB_FILE, asset_cache, fetch_llama2_vocab

    return AutoTokenizer.from_pretrained(fetch_llama2_vocab(asset_cache()), gguf_file=VOCAB_FILE)
