"""Placement on a multi-node Ray cluster, and the Llama 2 presets.

The placement tests use a fake engine: vLLM cannot run on logical GPUs, and what is under test is
where Ray puts replicas, not what they generate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas import SpecError, parse_job
from schemas.presets import LLAMA2_CONTEXT_TOKENS, LLAMA2_PRESETS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.background_scenario("tp2_on_3_gpu_nodes")
def test_fake_engine_tp2_replicas_on_3_gpu_nodes_never_span_nodes(scenario_result):
    result = scenario_result
    assert result["device"] == "gpu"
    assert result["replicas"] == 2  # 3 // 2 per node, two nodes
    assert result["committed"] == result["shards"] > 2
    assert result["replicas_used"] == 2
    assert result["strategies"] == ["STRICT_PACK", "STRICT_PACK"]
    assert result["bundle_gpus"] == [[1, 1], [1, 1]]
    assert all(len(nodes) == 1 for nodes in result["bundle_nodes"])
    assert result["bundle_nodes"][0] != result["bundle_nodes"][1]


@pytest.mark.background_scenario("node_lost_mid_job")
def test_fake_engine_job_survives_a_lost_node_without_counting_it_as_a_crash(scenario_result):
    result = scenario_result
    assert result["failed"] == {} and result["committed"] == result["shards"] > 10, result
    # The lost node's replica was replaced although retry.max_replica_restarts is 0: a lost node is
    # not a crash of herd's.
    assert result["replicas_replaced"] >= 1 and result["replica_crashes"] == 0, result
    assert result["replicas_used"] >= 3


@pytest.mark.background_scenario("node_lost_while_loading")
def test_fake_engine_node_lost_while_its_replica_loads_is_not_counted_as_a_crash(scenario_result):
    """Spot capacity reclaimed while a replica's engine still loads its weights (minutes, for 70B):
    with retry.max_replica_restarts 0 the replica is replaced all the same, and every shard commits."""
    result = scenario_result
    assert result["lost_at_commit"] == [0], result  # before any replica had finished starting
    assert result["failed"] == {} and result["committed"] == result["shards"], result
    assert result["replicas_replaced"] >= 1 and result["replica_crashes"] == 0, result


def test_tp8_on_4_gpu_nodes_fails_fast_saying_what_is_missing(tmp_path):
    """Cluster arithmetic, on the shape placement_probe reads from a real cluster (tp2 test above)."""
    from jobs.capacity import ClusterShape, replica_count

    job = parse_job(
        {
            "input": {"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"},
            "model": {"path": str(tmp_path / "model"), "tensor_parallel_size": 8},
            "output": {"path": str(tmp_path / "out")},
        }
    )
    with pytest.raises(SpecError) as raised:
        replica_count(job, ClusterShape([{"CPU": 4.0, "GPU": 4.0}, {"CPU": 4.0, "GPU": 4.0}]), "gpu", 10)
    assert str(raised.value) == "model.tensor_parallel_size 8 needs 8 GPUs on one node; the largest node has 4"


@pytest.mark.parametrize("name", sorted(LLAMA2_PRESETS))
def test_each_preset_resolves_to_its_reference_mp_value_and_4096(name):
    expected_tp = {"7b": 1, "13b": 2, "70b": 8}[name.split("-")[2]]
    job = parse_job(
        {
            "input": {"path": "x.jsonl", "prompt_column": "p"},
            "model": {"path": "/w", "preset": name},
            "output": {"path": "o"},
        }
    )
    assert job.model.tensor_parallel_size == expected_tp
    assert job.model.max_model_len == LLAMA2_CONTEXT_TOKENS == 4096
    assert job.prompt.format == ("llama2-chat" if name.endswith("-chat") else "raw")


def test_preset_overrides_are_kept_and_checked():
    base = {"input": {"path": "x.jsonl", "prompt_column": "p"}, "output": {"path": "o"}}
    job = parse_job(
        {
            **base,
            "model": {"path": "/w", "preset": "llama-2-13b-chat", "tensor_parallel_size": 1, "max_model_len": 2048},
            "prompt": {"format": "raw"},
        }
    )
    assert (job.model.tensor_parallel_size, job.model.max_model_len, job.prompt.format) == (1, 2048, "raw")
    with pytest.raises(SpecError, match=r"tensor_parallel_size 3 does not divide llama-2-13b's attention heads"):
        parse_job({**base, "model": {"path": "/w", "preset": "llama-2-13b", "tensor_parallel_size": 3}})
    with pytest.raises(SpecError, match=r"model\.max_model_len: Input should be less than or equal to 4096"):
        parse_job({**base, "model": {"path": "/w", "preset": "llama-2-7b", "max_model_len": 8192}})


def _cluster_config() -> dict:
    import yaml

    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def test_ray_cluster_yaml_passes_rays_own_cluster_config_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _cluster_config()
    # What `ray up` does: fill in the provider's defaults, then validate against Ray's schema.
    validate_config(prepare_config(config))
    gpus = {name: node.get("resources", {}).get("GPU", 0) for name, node in config["available_node_types"].items()}
    assert gpus[config["head_node_type"]] == 0
    # Every preset's tensor parallel size fits on one node of some worker type.
    assert {preset.tensor_parallel_size for preset in LLAMA2_PRESETS.values()} <= {
        size for count in gpus.values() for size in (1, 2, 4, 8) if size <= count
    }
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_a_typo_in_ray_cluster_yaml_fails_the_validator():
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _cluster_config()
    config["max_workerz"] = config.pop("max_workers")
    with pytest.raises(ValidationError, match="max_workerz"):
        validate_config(prepare_config(config))


def test_fake_engine_replicas_fetch_s3_weights_once_per_node(
    ray_session, tiny_model, tmp_path, s3_endpoint, monkeypatch
):
    import s3fs

    from jobs.replicas import ReplicaPool
    from jobs.runner import run_job
    from tests.cpu.fake_engine import FakeEngineFactory
    from tests.cpu.flaky_s3_proxy import FlakyS3Proxy

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    files = sorted(path.name for path in tiny_model.iterdir())
    for name in files:
        fs.put(str(tiny_model / name), f"herd-test/models/tiny/{name}")
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"prompt": f"p{index}"}) + "\n" for index in range(50)))
    with FlakyS3Proxy(s3_endpoint, failure_rate=0.0) as proxy:
        job = parse_job(
            {
                "input": {"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt", "bytes_per_shard": 1024},
                "model": {"path": "s3://herd-test/models/tiny", "max_model_len": 512},
                "sampling": {"max_new_tokens": 4},
                "output": {"path": str(tmp_path / "out")},
                "storage": {"endpoint_url": proxy.endpoint},
            }
        )
        # Both replicas run on this one node, sharing one cache (HERD_CACHE_DIR reaches the actors).
        monkeypatch.setenv("HERD_CACHE_DIR", str(tmp_path / "cache"))
        pool = ReplicaPool(job.model, job, size=2, engine_factory=FakeEngineFactory())
        try:
            outcome = run_job(job, pool=pool)
        finally:
            pool.shutdown()
        fetched = [path for method, path in proxy.log if method == "GET" and "/models/tiny/" in path]
    assert outcome.summary.replicas == 2 and outcome.exit_code == 0
    assert sorted(path.rsplit("/", 1)[1] for path in fetched) == files
