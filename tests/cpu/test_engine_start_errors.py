"""An engine that cannot start is reported by its cause, not by vLLM's "See root cause above"."""

from __future__ import annotations

import json
import shutil

import pytest

from jobs.runner import run_job
from schemas import parse_job
from schemas.errors import ExitCode
from tests.cpu.conftest import tiny_model_spec
from workers.output_capture import EngineStartFailed, first_error_in, recent_first_error_in, start_failure_explained

# How an engine core that failed to start writes to its replica's log on GPU (the H200 run of
# `python -m bench gpu`, 2026-12-04, without FlashInfer): its own traceback, each line under its
# process's name, then its parent's, ending in the error that reaches the caller.
ENGINE_CORE_LOG = """\
INFO 12-04 15:50:31 [core.py:97] Initializing a V1 LLM engine (v0.26.0) with config: model='llama-2-7b-shape'
(EngineCore pid=3121) Traceback (most recent call last):
(EngineCore pid=3121)   File "/tmp/gsite/vllm/v1/worker/gpu/sample/sampler.py", line 52, in __init__
(EngineCore pid=3121)     self.use_flashinfer = flashinfer_sampler_supported()
(EngineCore pid=3121)                           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
(EngineCore pid=3121)   File "/tmp/gsite/vllm/v1/attention/backends/flashinfer.py", line 12, in <module>
(EngineCore pid=3121)     from flashinfer import (
(EngineCore pid=3121) ModuleNotFoundError: No module named 'flashinfer'
Traceback (most recent call last):
  File "/tmp/gsite/vllm/v1/engine/utils.py", line 1272, in wait_for_engine_startup
    raise RuntimeError(
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_the_first_error_of_an_engine_log_is_the_child_processes_under_its_process_prefix(tmp_path):
    log = tmp_path / "replica-1.log"
    log.write_text(ENGINE_CORE_LOG)
    assert first_error_in(str(log)) == "ModuleNotFoundError: No module named 'flashinfer'"


def test_the_first_error_is_looked_for_only_in_what_this_start_wrote_and_an_error_saying_it_passes_as_it_is(
    tmp_path,
):
    log = tmp_path / "replica-1.log"
    log.write_text(ENGINE_CORE_LOG)  # an earlier start's, in a log appended to
    with pytest.raises(RuntimeError, match=r"^the weights are gone$"), start_failure_explained(str(log)):
        raise RuntimeError("the weights are gone")
    cause = "the engine did not start: OSError: the weights are gone"
    with pytest.raises(EngineStartFailed, match=cause), start_failure_explained(str(log)):
        with open(log, "a") as handle:
            handle.write("ERROR 12-04 16:05:02 [loader.py:9] Traceback (most recent call last):\n")
            handle.write('ERROR 12-04 16:05:02 [loader.py:9]   File "loader.py", line 9, in load\n')
            handle.write("ERROR 12-04 16:05:02 [loader.py:9] OSError: the weights are gone\n")
        raise RuntimeError("Engine core initialization failed. See root cause above.")


def test_an_engine_death_is_named_by_the_first_error_since_its_start_within_the_logs_last_megabytes(tmp_path):
    log = tmp_path / "replica-1.log"
    log.write_text("Traceback (most recent call last):\n  File 'x'\nOSError: a failed earlier start\n")
    started = log.stat().st_size
    with open(log, "a") as handle:
        handle.write("Traceback (most recent call last):\n  File 'y'\nValueError: days ago, a passing error\n")
        handle.write("INFO a line of a long run\n" * 250_000)  # ~6 MB written over days
        handle.write(ENGINE_CORE_LOG)
    assert first_error_in(str(log), started) == "ValueError: days ago, a passing error"
    assert recent_first_error_in(str(log), started) == "ModuleNotFoundError: No module named 'flashinfer'"
    assert recent_first_error_in(str(tmp_path / "gone.log"), 0) is None


def test_a_checkpoint_cut_short_fails_the_job_naming_the_engine_cores_error_when_the_core_runs_apart(
    ray_session, tiny_model, tmp_path, monkeypatch
):
    """The engine core in a process of its own, as vLLM runs it on GPU; an interrupted copy of the
    weights is what a user may well have."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "hello"}) + "\n")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    job = parse_job(
        {
            "input": {"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"},
            "model": {**tiny_model_spec(tiny_model), "path": str(model)},
            "output": {"path": str(tmp_path / "out")},
            "retry": {"max_replica_restarts": 0},
        }
    )
    outcome = run_job(job, quiet=True)
    assert outcome.exit_code == ExitCode.SHARDS_FAILED
    (failure,) = outcome.summary.shards_failed
    assert "the engine did not start: safetensors" in failure and "SafetensorError" in failure
    assert "See root cause above" not in failure
