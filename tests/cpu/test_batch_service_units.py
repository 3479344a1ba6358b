"""The batch service's parts that need no server: fair turns, line checks, signatures, ids, keys."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from schemas import parse_job
from schemas.errors import SpecError
from service.keys import ApiKeys
from service.objects import Batch, BatchRecord
from service.store import new_id
from service.webhooks import secret_key, sign
from service.worker import check_lines, custom_ids_in, fair_order

REPO = Path(__file__).resolve().parents[2]


def _record(owner: str) -> BatchRecord:
    batch = Batch(
        id=new_id("batch_"),
        endpoint="/v1/chat/completions",
        input_file_id="f",
        completion_window="24h",
        status="validating",
        created_at=0,
    )
    return BatchRecord(owner=owner, batch=batch)


def test_one_owners_fifty_batches_do_not_starve_anothers_one():
    waiting = [_record("busy-team") for _ in range(50)] + [_record("small-team")]
    last_served: dict[str, float] = {}
    served = []
    for turn in range(4):  # each turn runs the first in fair order, as the worker does
        chosen = fair_order(waiting, last_served)[0]
        waiting.remove(chosen)
        last_served[chosen.owner] = float(turn + 1)
        served.append(chosen.owner)
    assert served[:2] == ["busy-team", "small-team"] and served[2:] == ["busy-team", "busy-team"]
    # Within an owner, the oldest batch first.
    mine = [_record("team") for _ in range(5)]
    assert fair_order(list(reversed(mine)), {}) == mine


def test_a_batch_that_gave_way_waits_for_each_owner_it_gave_way_to_once_not_for_a_stream_of_their_batches(
    tmp_path,
):
    """The worker's choices alone (no engine: what a batch's run would do is replaced by noting that it
    started): team a's batch gave its model to team b; b's first batch runs, and then a's resumes before
    b's next one, which would otherwise keep it waiting for as long as b sends batches."""
    import time

    from common.storage import Storage
    from schemas.job import RetrySpec, StorageSpec
    from service.config import ServiceSpec
    from service.store import Store
    from service.worker import BatchWorker

    spec = ServiceSpec.model_validate(
        {"root": str(tmp_path), "models": [{"name": "m", "job": {"model": {"path": "x"}}}]}
    )
    worker = BatchWorker(spec, Store(str(tmp_path), Storage(StorageSpec(), RetrySpec())), None)
    started: list[str] = []

    def run(record: BatchRecord, model: object) -> None:  # a run that ends at once, freeing its model
        started.append(record.owner + ":" + record.batch.id)
        worker._models_busy.discard("m")

    worker._run = run  # type: ignore[method-assign]

    def waiting_for_m(owner: str) -> BatchRecord:
        record = _record(owner)
        record.batch.status, record.served_model = "in_progress", "m"
        return record

    def take(*records: BatchRecord) -> str:
        started.clear()
        worker._take_batches(list(records))
        for thread in list(worker._running.values()):
            thread.join()
        assert len(started) == 1, started
        return started[0].split(":")[0]

    long = waiting_for_m("team-a")
    worker._last_served["team-a"] = time.monotonic()  # a's batch had its turn
    worker._gave_way[long.batch.id] = time.monotonic()  # and gave way to b
    assert take(long, waiting_for_m("team-b")) == "team-b"
    assert take(long, waiting_for_m("team-b")) == "team-a"  # b had its turn: a's batch resumes first
    assert long.batch.id not in worker._gave_way

    # Team c has waited since before a's batch gave way: an a batch that gave way waits its turn, but
    # one cancelled since only needs finalizing, which it gets at once.
    worker._last_served["team-a"], worker._last_served["team-c"] = time.monotonic(), time.monotonic() + 1
    for status, goes in (("in_progress", "team-c"), ("cancelling", "team-a")):
        gave_way = waiting_for_m("team-a")
        gave_way.batch.status = status
        worker._gave_way[gave_way.batch.id] = time.monotonic() + 2
        assert take(gave_way, waiting_for_m("team-c")) == goes, status


def test_a_closed_worker_waits_for_its_look_for_work_and_starts_nothing_that_look_found(tmp_path):
    """close() while the worker is reading the root (slow storage): it returns once that look has
    ended, and the batch the look found is not started on the way out (the next server takes it)."""
    import threading

    from common.storage import Storage
    from schemas.job import RetrySpec, StorageSpec
    from service.config import ServiceSpec
    from service.store import Store
    from service.worker import BatchWorker

    spec = ServiceSpec.model_validate(
        {"root": str(tmp_path), "models": [{"name": "m", "job": {"model": {"path": "x"}}}]}
    )
    store = Store(str(tmp_path), Storage(StorageSpec(), RetrySpec()))
    worker = BatchWorker(spec, store, None)
    started: list[str] = []
    worker._run = lambda record, model: started.append(record.batch.id)  # type: ignore[method-assign]
    looking, answer = threading.Event(), threading.Event()

    def slow_open_batches() -> list[BatchRecord]:
        looking.set()
        answer.wait(timeout=30)
        return [_record("team-a")]

    store.open_batches = slow_open_batches  # type: ignore[method-assign]
    worker.start()
    assert looking.wait(timeout=30)
    threading.Timer(0.5, answer.set).start()
    worker.close()
    assert not worker._thread.is_alive()
    assert started == [] and worker._running == {}


def test_every_bad_line_is_named_with_its_number_before_any_engine_runs():
    good = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    lines = [
        json.dumps(good),
        "",  # blank lines are allowed
        json.dumps({**good, "custom_id": "b", "body": {**good["body"], "functions": []}}),
        json.dumps({**good, "custom_id": "c", "body": {**good["body"], "n": 2, "temperature": 3}}),
        json.dumps({**good, "custom_id": "d", "url": "/v1/embeddings"}),
        json.dumps({**good, "custom_id": "e", "body": {**good["body"], "stream": True}}),
        json.dumps([1, 2]),
        json.dumps({**good, "custom_id": "f", "body": {"messages": good["body"]["messages"]}}),
        json.dumps({**good, "custom_id": "g", "body": {**good["body"], "max_tokens": 0}}),
        json.dumps({**good, "custom_id": "h", "body": {**good["body"], "max_completion_tokens": -1}}),
    ]
    errors, models, total = check_lines("\n".join(lines).encode().split(b"\n"))
    assert total == 9 and models == {"m"}
    by_line = {error.line: error for error in errors}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8, 9, 10]
    assert by_line[3].param == "body.functions" and "function calls are not supported" in by_line[3].message
    assert (by_line[4].param, by_line[4].message) == (
        "body.temperature",
        "body.temperature: Input should be less than or equal to 2",
    )
    assert by_line[5].param == "url" and "/v1/embeddings" in by_line[5].message
    assert by_line[6].param == "body.stream"
    assert "JSON object" in by_line[7].message
    assert by_line[8].param == "body.model"
    # Named as the line names them, not as herd's job file does (max_new_tokens).
    assert by_line[9].message == "body.max_tokens: Input should be greater than or equal to 1"
    assert by_line[10].param == "body.max_completion_tokens"


def test_fields_that_cannot_change_the_answer_are_accepted_and_the_others_refused():
    """null is the API's "not given" (LiteLLM and other clients send every field), and some fields
    only route or ask for what herd does anyway; a field that would change the answer is refused."""
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    accepted = [
        {"tools": None, "tool_choice": None, "stream_options": None, "prediction": None, "response_format": None},
        {"service_tier": "auto", "parallel_tool_calls": False, "store": False, "user": "u-1"},
        {"modalities": ["text"], "tool_choice": "none", "stream": False, "logprobs": None, "stop": None},
        {"n": 2, "temperature": 0},  # n copies of the one greedy answer, as OpenAI gives
    ]
    refused = [
        ({"tool_choice": "auto"}, "body.tool_choice"),
        ({"modalities": ["text", "audio"]}, "body.modalities"),
        ({"prediction": {"type": "content", "content": "x"}}, "body.prediction"),
        ({"reasoning_effort": "low"}, "body.reasoning_effort"),
    ]
    lines = [
        {"custom_id": f"a{i}", "method": "POST", "url": "/v1/chat/completions", "body": {**chat, **extra}}
        for i, extra in enumerate(accepted)
    ]
    lines += [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": {**chat, **extra}}
        for i, (extra, _) in enumerate(refused)
    ]
    errors, _, total = check_lines("\n".join(json.dumps(line) for line in lines).encode().split(b"\n"))
    assert total == len(accepted) + len(refused)
    assert [(error.line, error.param) for error in errors] == [
        (len(accepted) + 1 + index, param) for index, (_, param) in enumerate(refused)
    ]


def test_responses_requests_become_messages_with_their_instructions_and_refuse_what_herd_cannot_honour():
    from workers.request_formats import openai_batch_request

    def line(custom_id: str, **body: object) -> dict:
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": {"model": "m", **body}}

    history = [
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
        {"role": "user", "content": "and you?"},
    ]
    parsed = openai_batch_request(line("a", input="tell me", instructions="Answer in French.", max_output_tokens=9))
    assert parsed.source.messages == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "tell me"},
    ]
    assert parsed.source.result_kind == "response" and parsed.overrides == {"max_new_tokens": 9}
    parsed = openai_batch_request(line("b", input=history, temperature=0, top_p=0.5))
    assert [message["role"] for message in parsed.source.messages] == ["system", "user", "assistant", "user"]
    assert parsed.source.messages[1]["content"] == "hi" and parsed.source.messages[2]["content"] == "hello"
    assert parsed.overrides == {"temperature": 0, "top_p": 0.5}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    parsed = openai_batch_request(
        line("c", input="x", text={"format": {"type": "json_schema", "name": "s", "schema": schema}})
    )
    assert parsed.overrides == {"structured": {"json_schema": schema}}
    assert openai_batch_request(line("d", input="x", truncation="disabled", include=[], store=False)).overrides == {}
    # Logprobs are listed when include asks for them, with top_logprobs alternatives; alone, top_logprobs
    # changes nothing (the hosted API's rule).
    logprobs = ["message.output_text.logprobs"]
    parsed = openai_batch_request(line("e", input="x", include=logprobs, top_logprobs=3))
    assert parsed.overrides == {"logprobs": True, "top_logprobs": 3}
    assert openai_batch_request(line("f", input="x", include=logprobs)).overrides == {"logprobs": True}
    assert openai_batch_request(line("g", input="x", top_logprobs=3)).overrides == {}

    refused = [
        (line("r0", input="x", tools=[{"type": "web_search"}]), "body.tools"),
        (line("r1", input="x", previous_response_id="resp_1"), "body.previous_response_id"),
        (line("r2", input="x", reasoning={"effort": "low"}), "body.reasoning"),
        (line("r3", input="x", truncation="auto"), "body.truncation"),
        (line("r4", input="x", n=2), "body.n"),  # not a Responses field, though chat's
        (line("r5", input=[{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]), "body.input[0]"),
        (line("r6", input=[{"type": "function_call_output", "call_id": "c", "output": "o"}]), "body.input[0].type"),
        (line("r7", input="x", text={"format": {"type": "json_schema", "name": "s"}}), "body.text.format.schema"),
        (line("r8", input="x", text={"verbosity": "low"}), "body.text.verbosity"),
        (line("r9"), "body.input"),
        (line("r10", input="x", max_output_tokens=0), "body.max_output_tokens"),
        (line("r11", input="x", include=[*logprobs, "reasoning.encrypted_content"]), "body.include[1]"),
        (line("r12", input="x", include="message.output_text.logprobs"), "body.include"),
        (line("r13", input="x", include=logprobs, top_logprobs=21), "body.top_logprobs"),
        (line("r14", input="x", top_logprobs=True), "body.top_logprobs"),  # checked even without include
    ]
    errors, models, total = check_lines("\n".join(json.dumps(request) for request, _ in refused).encode().split(b"\n"))
    assert total == len(refused) and models == set()
    assert [(error.line, error.param) for error in errors] == [
        (number, param) for number, (_, param) in enumerate(refused, start=1)
    ]


def test_a_file_from_a_windows_tool_with_a_byte_order_mark_and_crlf_lines_is_accepted():
    """Windows PowerShell's `Out-File -Encoding utf8` and Notepad's "UTF-8 with BOM" start the file
    with U+FEFF; herd's reader skips it, so the check before the batch runs must too."""
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions", "body": {"model": "m", "prompt": "hi"}}
        for i in range(3)
    ]
    data = ("\ufeff" + "\r\n".join(json.dumps(line) for line in lines) + "\r\n").encode()
    errors, models, total = check_lines(data.split(b"\n"))
    assert errors == [] and models == {"m"} and total == 3
    assert custom_ids_in(data.split(b"\n")) == ["r0", "r1", "r2"]


def test_webhook_signatures_follow_standard_webhooks():
    key = b"0123456789abcdef0123456789abcdef"
    secret = "whsec_" + base64.b64encode(key).decode()
    assert secret_key(secret) == key
    # The example of the standard-webhooks specification's reference implementations.
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    spec_key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert sign(spec_key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}') == expected


def test_ids_sort_by_the_time_they_were_made_and_keys_are_kept_as_hashes():
    ids = [new_id("batch_") for _ in range(20)]
    assert ids == sorted(ids) and len(set(ids)) == 20
    keys = ApiKeys.parse("# comment\nteam-a: sk-aaaaaaaaaaaaaaaa\n\nteam-b:sk-bbbbbbbbbbbbbbbb\n", "keys")
    assert keys.owner_of("sk-aaaaaaaaaaaaaaaa") == "team-a" and keys.owner_of("sk-bbbbbbbbbbbbbbbb") == "team-b"
    assert keys.owner_of("sk-aaaaaaaaaaaaaaab") is None and keys.owner_of(None) is None
    assert "sk-aaaaaaaaaaaaaaaa" not in repr(vars(keys))
    with pytest.raises(SpecError, match="keys line 1: expected OWNER:KEY"):
        ApiKeys.parse("team-a:short", "keys")
    with pytest.raises(SpecError, match="line 2: this key is given twice"):
        ApiKeys.parse("a:sk-aaaaaaaaaaaaaaaa\nb:sk-aaaaaaaaaaaaaaaa", "keys")


def test_a_request_naming_an_adapter_goes_to_its_base_model_and_no_name_means_two_models():
    from service.config import ServiceSpec

    def served(name: str, aliases: list[str], adapters: list[str]) -> dict:
        model = {"path": f"/models/{name}", "adapters": [{"name": a, "path": f"/adapters/{a}"} for a in adapters]}
        return {"name": name, "aliases": aliases, "job": {"model": model}}

    spec = ServiceSpec.model_validate({"models": [served("chat", ["*"], []), served("base", [], ["tone-a", "tone-b"])]})
    spec.check_models()
    # An adapter's name wins over another model's "*".
    assert spec.model_named("tone-b").name == "base" and spec.model_named("gpt-4o").name == "chat"
    clash = ServiceSpec.model_validate({"models": [served("chat", ["tone-a"], []), served("base", [], ["tone-a"])]})
    with pytest.raises(SpecError, match="'tone-a' names both chat and base"):
        clash.check_models()


def test_result_lines_name_the_served_model_unless_its_job_names_it_and_never_as_an_adapter():
    from service.config import ServiceSpec

    spec = ServiceSpec.model_validate(
        {
            "models": [
                {"name": "llama-2-13b-chat", "job": {"model": {"path": "s3://weights/Llama-2-13b-chat-hf"}}},
                {"name": "base", "job": {"model": {"path": "/models/base", "name": "llama-2-7b"}}},
            ]
        }
    )
    chat, base = (model.job_for("in.jsonl", "out").model for model in spec.models)
    assert (chat.output_name, chat.path) == ("llama-2-13b-chat", "s3://weights/Llama-2-13b-chat-hf")
    assert base.output_name == "llama-2-7b"
    adapter = {"name": "tone", "path": "/adapters/tone"}
    with pytest.raises(SpecError, match="name: 'tone' is also an adapter's name"):
        parse_job(
            {
                "input": {"path": "in.jsonl", "prompt_column": "prompt"},
                "model": {"path": "/models/base", "name": "tone", "adapters": [adapter]},
                "output": {"path": "out"},
            }
        )


def test_herd_serve_refuses_to_start_on_weights_adapters_or_a_root_that_are_not_usable(
    tmp_path, tiny_model, s3_endpoint
):
    """Exit 2 naming what is wrong, before it answers anything, instead of failing each batch later."""
    import os
    import subprocess
    import sys

    import yaml

    def serve(
        model: dict, root: str = str(tmp_path / "root"), *options: str, **environment: str
    ) -> subprocess.CompletedProcess:
        service_file = tmp_path / "service.yaml"
        service_file.write_text(yaml.safe_dump({"root": root, "models": [{"name": "llama", "job": {"model": model}}]}))
        variables = {**os.environ, "AWS_ENDPOINT_URL": s3_endpoint, **environment}
        return subprocess.run(
            [sys.executable, "submit.py", "serve", str(service_file), "--port", "0", *options],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env={name: value for name, value in variables.items() if value},
        )

    missing = serve({"path": str(tmp_path / "Llama-2-7b-chat-hf")})
    assert missing.returncode == 2, missing.stderr
    assert f"models[llama].job: model.path: '{tmp_path / 'Llama-2-7b-chat-hf'}' holds no files" in missing.stderr
    not_an_adapter = serve({"path": str(tiny_model), "adapters": [{"name": "tone", "path": str(tiny_model)}]})
    assert not_an_adapter.returncode == 2, not_an_adapter.stderr
    assert "models[llama].job: model.adapters tone:" in not_an_adapter.stderr
    assert "holds no adapter_config.json" in not_an_adapter.stderr
    assert not (tmp_path / "root").exists()  # nothing written, no server started
    model = {"path": str(tiny_model)}
    no_bucket = serve(model, "s3://no-such-bucket/batches")
    assert no_bucket.returncode == 2, no_bucket.stderr
    assert "herd: root: cannot use s3://no-such-bucket/batches: FileNotFoundError" in no_bucket.stderr
    nowhere = str(tmp_path / "none")  # no credentials file, no instance role to fall back on
    no_credentials = serve(
        model,
        "s3://herd-test/batches",
        AWS_ACCESS_KEY_ID="",
        AWS_SECRET_ACCESS_KEY="",
        AWS_SHARED_CREDENTIALS_FILE=nowhere,
        AWS_CONFIG_FILE=nowhere,
        AWS_EC2_METADATA_DISABLED="true",
    )
    assert no_credentials.returncode == 2, no_credentials.stderr
    assert "herd: root: cannot use s3://herd-test/batches: NoCredentialsError" in no_credentials.stderr
    # A keys file with no key would have meant "no keys": refused, said in JSON with --log-format json.
    (tmp_path / "keys.txt").write_text("# every key removed\n")
    no_keys = serve(model, str(tmp_path / "root"), "--keys", str(tmp_path / "keys.txt"), "--log-format", "json")
    assert no_keys.returncode == 2, no_keys.stderr
    assert json.loads(no_keys.stderr.strip().splitlines()[-1]) == {
        "event": "error",
        "message": f"{tmp_path / 'keys.txt'}: the keys file holds no key",
        "exit_code": 2,
    }


def test_each_owner_has_a_bucket_of_five_seconds_of_requests_that_refills_at_its_rate():
    from service.rate_limit import RequestRate

    now = [0.0]
    rate = RequestRate(2.0, clock=lambda: now[0])
    assert [rate.wait_s("team-a") for _ in range(10)] == [0.0] * 10  # a burst of 5 s at 2 a second
    assert rate.wait_s("team-a") == 0.5  # then the rate
    assert rate.wait_s("team-b") == 0.0  # a bucket of its own
    now[0] += 0.5
    assert rate.wait_s("team-a") == 0.0 and rate.wait_s("team-a") == 0.5
    now[0] += 3600  # an idle hour fills the bucket, no more
    assert [rate.wait_s("team-a") for _ in range(11)][-2:] == [0.0, 0.5]


def test_a_lines_sampling_is_checked_over_its_served_models_job_as_the_run_lays_it():
    """The model's job asks for logprobs: a line that asks only for top_logprobs is answered (the run
    lays it over the job's sampling), so validation does not refuse it; over herd's defaults it would be
    refused, as it is for a model whose job does not ask for logprobs."""
    from service.config import ServiceSpec
    from service.worker import job_sampling_of

    spec = ServiceSpec.model_validate(
        {
            "models": [
                {"name": "with-logprobs", "job": {"model": {"path": "x"}, "sampling": {"logprobs": True}}},
                {"name": "plain", "job": {"model": {"path": "x"}}},
            ]
        }
    )

    def line(model: str) -> bytes:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}
        return json.dumps({"custom_id": model, "method": "POST", "url": "/v1/chat/completions", "body": body}).encode()

    errors, _, _ = check_lines([line("with-logprobs"), line("plain")], job_sampling_of(spec))
    assert [(error.line, error.message) for error in errors] == [(2, "body: top_logprobs needs logprobs: true")]
