"""Each place herd reaches past vLLM's documented API (workers/vllm_internals.py), checked on the real
engine: an upgrade that moves one fails here, by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cpu.background import background_scenario

REPO = Path(__file__).resolve().parents[2]

# Run in a process of its own: vLLM starts its engine core with spawn, which needs a main guard.
PROBE = """
import gc, json, os, signal, sys, time
from schemas.job import ModelSpec, SamplingSpec
from tests.cpu.process_tree import descendants
from workers import vllm_internals
from workers.engine import EngineRequest, VllmEngine, engine_environment

def generate_once_ids(engine):
    request = EngineRequest([1, 5, 9], 1, SamplingSpec(max_new_tokens=3, ignore_eos=True))
    return engine.generate([request])[0][0].token_ids

def generate_once(engine):
    try:
        engine.generate([EngineRequest([1, 5, 9], 1, SamplingSpec(max_new_tokens=3, ignore_eos=True))])
        return {"raised": None}
    except Exception as error:
        return {"raised": type(error).__name__}

collections_before_vllm_engine_imported = []

def count_collection(phase, info):
    # The collector's own passes (generations 0 and 1); a full one (2) is herd's gc.collect() first.
    if phase == "start" and info["generation"] < 2 and "vllm.entrypoints.llm" not in sys.modules:
        collections_before_vllm_engine_imported.append(info["generation"])

if __name__ == "__main__":
    assert "torch" not in sys.modules and "vllm" not in sys.modules
    gc.callbacks.append(count_collection)
    spec = ModelSpec(path=sys.argv[1], max_model_len=512, dtype="float32")
    os.environ.update(engine_environment(spec, "cpu"))
    # The engine core in a process of its own, as on a GPU and with tensor parallelism (on CPU with
    # TP 1 it runs in the replica's process, where its death is an exception in the caller).
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    engine = VllmEngine(sys.argv[1], spec, "cpu")
    gc.callbacks.remove(count_collection)
    stepper = vllm_internals.step_engine(engine.llm)
    found = {
        "collections_while_torch_and_vllm_import": len(collections_before_vllm_engine_imported),
        "methods": [name for name in vllm_internals.ENGINE_METHODS if callable(getattr(stepper, name, None))],
        "dead_error_is_exception": issubclass(vllm_internals.engine_dead_error(), Exception),
        "final_only": str(vllm_internals.final_outputs_only()),
        "alive_is_not_dead": vllm_internals.engine_process_died(engine.llm) is False,
        "separate_core": vllm_internals.engine_core_in_this_process(engine.llm) is False,
        # Continuous feeding over these: one request through the engine.
        "generated": len(generate_once_ids(engine)),
    }
    # The engine core dies while nothing runs (killed, out of memory): the next requests meet vLLM's
    # EngineDeadError when they are added, not while stepping.
    for pid in descendants(os.getpid()):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not vllm_internals.engine_process_died(engine.llm) and time.monotonic() < deadline:
        time.sleep(0.1)
    found["dead_is_dead"] = vllm_internals.engine_process_died(engine.llm)
    found["after_death"] = [generate_once(engine), generate_once(engine)]
    vllm_internals.shut_down(engine.llm)
    found["shut_down"] = True
    # herd's CPU default (TP 1): the core in this process, told apart by the same client check.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    inside = VllmEngine(sys.argv[1], spec, "cpu")
    found["core_inside"] = vllm_internals.engine_core_in_this_process(inside.llm)
    found["inside_generated"] = len(generate_once_ids(inside))
    print("FOUND " + json.dumps(found), flush=True)
"""


@background_scenario("vllm_internals_probe", after_own_engine_tests=True)
def vllm_internals_probe(work_dir: Path, tiny_model: Path) -> subprocess.CompletedProcess:
    (work_dir / "probe.py").write_text(PROBE)
    return subprocess.run(
        [sys.executable, str(work_dir / "probe.py"), str(tiny_model)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.background_scenario("vllm_internals_probe")
def test_every_vllm_internal_herd_touches_is_where_herd_expects_it_and_a_dead_engine_is_engine_dead(scenario_result):
    result = scenario_result
    line = next((line for line in result.stdout.splitlines() if line.startswith("FOUND ")), None)
    assert line, result.stderr[-3000:]
    found = json.loads(line.removeprefix("FOUND "))
    assert found["methods"] == ["add_request", "step", "has_unfinished_requests", "abort_request"]
    assert found["dead_error_is_exception"] and found["alive_is_not_dead"] and found["separate_core"]
    assert found["core_inside"] and found["inside_generated"] == 3
    assert found["final_only"].endswith("FINAL_ONLY")
    assert found["generated"] == 3 and found["shut_down"]
    # A dead engine is herd's EngineDead from every later call: the replica ends and its
    # shards run elsewhere, instead of each row failing on its own as a generate error.
    assert found["dead_is_dead"]
    assert [call["raised"] for call in found["after_death"]] == ["EngineDead", "EngineDead"]


@pytest.mark.background_scenario("vllm_internals_probe")
def test_torch_and_vllm_import_with_the_garbage_collector_paused(scenario_result):
    """workers/engine.py's collector_paused_then_heap_frozen: without it, the collector makes hundreds
    of passes over the objects those imports create (~3 s of a replica's start on 2 cores)."""
    line = next((line for line in scenario_result.stdout.splitlines() if line.startswith("FOUND ")), None)
    assert line, scenario_result.stderr[-3000:]
    assert json.loads(line.removeprefix("FOUND "))["collections_while_torch_and_vllm_import"] == 0
