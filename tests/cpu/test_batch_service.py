"""`herd serve`: the OpenAI Batch API, driven by the real `openai` SDK against a server on 127.0.0.1
answering with the real engine (the tiny Llama on vLLM CPU)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletion
from openai.types.completion import Completion
from openai.types.responses import Response
from prometheus_client.parser import text_string_to_metric_families

from tests.cpu.conftest import free_port, tiny_model_spec
from tests.cpu.process_tree import descendants, end_processes_mentioning, pids_mentioning
from tests.cpu.ray_heads import start_ray_head, token_auth_environment
from tests.cpu.service_process import REPO, ServiceProcess
from tests.tiny_lora import build_tiny_lora, greedy_token_ids

KEY_A = "sk-team-a-0123456789abcdef"
KEY_B = "sk-team-b-0123456789abcdef"
KEY_OPS = "sk-operators-0123456789ab"  # the owner "ops" may read /metrics
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"herd-test-webhook-signing-key-32b").decode()
UPLOAD_LIMIT = 96 * 1024


RECEIVED: list[tuple[dict[str, str], bytes]] = []  # (headers, body) of every webhook call


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        RECEIVED.append(({key.lower(): value for key, value in self.headers.items()}, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *arguments: object) -> None:
        pass


@pytest.fixture(scope="module")
def webhook_receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def _service_file(
    directory: Path, tiny_model: Path, root: Path, webhook: str | None = None, adapter: Path | None = None
) -> Path:
    model = tiny_model_spec(tiny_model)
    if adapter is not None:
        model["adapters"] = [{"name": "tiny-terse", "path": str(adapter)}]
    spec = {
        "root": str(root),
        "models": [
            {
                "name": "tiny-llama",
                "aliases": ["*"],
                "bytes_per_shard": 1024,  # small shards: progress, cancel and restart have something to show
                "job": {
                    "model": model,
                    "prompt": {"format": "llama2-chat"},
                    "retry": {"backoff_base_s": 0.1},
                },
            },
            # The same weights as a base model is served: its tokenizer sets no chat template.
            {
                "name": "tiny-base",
                "job": {"model": tiny_model_spec(tiny_model), "prompt": {"format": "model-template"}},
            },
        ],
        # Turns of a second: a batch gives its model to another owner's waiting one within the test.
        "limits": {
            "max_upload_bytes": UPLOAD_LIMIT,
            "max_lines": 400,
            "completion_windows": ["24h", "4s"],
            "turn_s": 1,
        },
    }
    spec["metrics_readers"] = ["ops"]
    if webhook is not None:
        spec["webhook"] = {"url": webhook, "secret": WEBHOOK_SECRET}
    path = directory / "service.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def service_adapter(tiny_model, tmp_path_factory):
    return build_tiny_lora(tiny_model, tmp_path_factory.mktemp("adapter") / "terse")


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head of its own (`ray start --head`): the module's server runs its replicas there, as a
    service with RAY_ADDRESS does."""
    temp_dir = tempfile.mkdtemp(prefix="hb", dir="/tmp")
    try:
        address = start_ray_head(temp_dir, num_cpus=2)
        yield {"RAY_ADDRESS": address, **token_auth_environment(temp_dir)}, temp_dir
    finally:
        end_processes_mentioning(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def service(tiny_model, tmp_path_factory, webhook_receiver, service_adapter, ray_cluster):
    directory = tmp_path_factory.mktemp("service")
    (directory / "keys").write_text(f"# owner:key\nteam-a:{KEY_A}\nteam-b:{KEY_B}\nops:{KEY_OPS}\n")
    server = ServiceProcess(
        _service_file(directory, tiny_model, directory / "root", webhook_receiver, service_adapter),
        directory / "keys",
        free_port(),
        directory / "service.log",
        cluster=ray_cluster[0],
        log_format="json",  # as a deployment feeding a log pipeline runs it
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()


def _client(service: ServiceProcess, key: str = KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=service.base_url, api_key=key, max_retries=0)


def _requests(count: int, max_tokens: int = 24, **body: object) -> bytes:
    lines = [
        {
            "custom_id": f"req-{index}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"question {index}: tell me about llamas"}],
                "max_tokens": max_tokens,
                **body,
            },
        }
        for index in range(count)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _wait(client: openai.OpenAI, batch_id: str, until: set[str], timeout_s: float = 300.0):
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status}"
        time.sleep(0.2)


def _lines(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line]


@pytest.mark.own_engine
def test_the_openai_sdk_runs_the_example_batch_and_every_custom_id_is_answered_once(service):
    client = _client(service)
    with open(REPO / "examples" / "openai_batch.jsonl", "rb") as handle:
        uploaded = client.files.create(file=handle, purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.filename == "openai_batch.jsonl"
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"team": "a"}
    )
    assert batch.status == "validating" and batch.metadata == {"team": "a"}
    done = _wait(client, batch.id, {"completed", "failed"})
    assert done.status == "completed", done.errors
    assert done.request_counts.total == 5 and done.request_counts.completed + done.request_counts.failed == 5
    assert done.in_progress_at and done.finalizing_at and done.completed_at and done.usage.output_tokens > 0
    answered = _lines(client, done.output_file_id) + _lines(client, done.error_file_id)
    assert sorted(line["custom_id"] for line in answered) == ["chat-1", "chat-2", "chat-3", "chat-4", "completion-1"]
    for line in _lines(client, done.output_file_id):
        kind = ChatCompletion if line["custom_id"].startswith("chat") else Completion
        body = kind.model_validate(line["response"]["body"])  # the SDK's own types
        assert body.choices[0].finish_reason in ("stop", "length") and body.usage.completion_tokens > 0
    # herd's extension: the batch's report.
    report = httpx.get(f"{service.base_url}/batches/{batch.id}/report", headers={"Authorization": f"Bearer {KEY_A}"})
    assert report.status_code == 200 and "<html" in report.text.lower()
    # The webhook, verified by the SDK itself.
    deadline = time.monotonic() + 30
    while not any(json.loads(body)["data"]["id"] == batch.id for _, body in RECEIVED):
        assert time.monotonic() < deadline, "no webhook"
        time.sleep(0.2)
    headers, body = next((h, b) for h, b in RECEIVED if json.loads(b)["data"]["id"] == batch.id)
    event = client.webhooks.unwrap(body, headers, secret=WEBHOOK_SECRET)
    assert event.type == "batch.completed" and event.data.id == batch.id
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body.replace(b"batch", b"botch"), headers, secret=WEBHOOK_SECRET)
    # The operators' Prometheus sees the batch among the totals.
    metrics = httpx.get(
        f"{service.base_url.removesuffix('/v1')}/metrics", headers={"Authorization": f"Bearer {KEY_OPS}"}
    )
    assert metrics.status_code == 200, metrics.text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.text)
        for sample in family.samples
    }
    assert samples[("herd_batches_ended_total", (("status", "completed"),))] >= 1
    assert samples[("herd_tokens_total", (("kind", "completion"),))] >= done.usage.output_tokens
    assert samples[("herd_http_requests_total", (("code", "200"), ("method", "POST")))] >= 2  # the upload, the batch

    # Code written for the Responses API: a batch of /v1/responses requests, read with the SDK's types.
    lines = [
        {
            "custom_id": f"resp-{index}",
            "method": "POST",
            "url": "/v1/responses",
            "body": {
                "model": "gpt-4o-mini",
                "instructions": "Be brief.",
                "input": f"hi {index}",
                "max_output_tokens": 4,
            },
        }
        for index in range(2)
    ]
    upload = client.files.create(
        file=("responses.jsonl", "".join(json.dumps(line) + "\n" for line in lines)), purpose="batch"
    )
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/responses", completion_window="24h")
    done = _wait(client, batch.id, {"completed", "failed"})
    assert done.status == "completed" and done.request_counts.completed == 2, done.errors
    for line in _lines(client, done.output_file_id):
        response = Response.model_validate(line["response"]["body"])
        assert response.model == "tiny-llama" and 0 < response.usage.output_tokens <= 4
        assert response.status in ("completed", "incomplete") and isinstance(response.output_text, str)


@pytest.mark.own_engine
def test_logprobs_come_in_openais_shape_and_a_tools_request_fails_validation_naming_its_line(service):
    client = _client(service)
    tools_file = (
        _requests(2)[:-1]
        + b"\n"
        + json.dumps(
            {
                "custom_id": "with-tools",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": "weather?"}],
                    "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
                },
            }
        ).encode()
        + b"\n{not json\n"
        + _requests(1)[:-1]
        + b"\n"
    )
    upload = client.files.create(file=("bad.jsonl", tools_file), purpose="batch")
    failed = _wait(
        client,
        client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h").id,
        {"failed", "completed"},
    )
    assert failed.status == "failed"
    problems = {error.line: error for error in failed.errors.data}
    assert problems[3].param == "body.tools" and "tool calls are not supported" in problems[3].message
    assert problems[4].code == "invalid_json_line"
    assert problems[5].code == "duplicate_custom_id" and "line 1" in problems[5].message
    assert failed.output_file_id is None

    # Chat requests to a model that cannot turn messages into a prompt fail before its engine loads.
    base_file = _requests(1)[:-1].replace(b'"gpt-4o-mini"', b'"tiny-base"')
    upload = client.files.create(file=("base.jsonl", base_file), purpose="batch")
    failed = _wait(
        client,
        client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h").id,
        {"failed", "completed"},
    )
    [problem] = failed.errors.data
    assert (failed.status, problem.line, problem.param) == ("failed", 1, "url")
    assert problem.message.startswith("model 'tiny-base' (") and "has no chat template" in problem.message

    upload = client.files.create(file=("logprobs.jsonl", _requests(3, logprobs=True, top_logprobs=2)), purpose="batch")
    done = _wait(
        client,
        client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h").id,
        {"completed", "failed"},
    )
    assert done.status == "completed", done.errors
    lines = _lines(client, done.output_file_id)
    assert len(lines) == 3
    for line in lines:
        choice = ChatCompletion.model_validate(line["response"]["body"]).choices[0]
        tokens = choice.logprobs.content
        assert len(tokens) == line["response"]["body"]["usage"]["completion_tokens"]
        for token in tokens:
            assert len(token.top_logprobs) == 2 and token.top_logprobs[0].logprob >= token.top_logprobs[1].logprob
            assert token.logprob <= 0 and bytes(token.bytes).decode("utf-8") == token.token


@pytest.mark.own_engine
def test_keys_isolate_teams_and_bad_requests_get_a_clear_4xx(service):
    team_a, team_b = _client(service, KEY_A), _client(service, KEY_B)
    upload = team_a.files.create(file=("mine.jsonl", _requests(2)), purpose="batch")
    batch = team_a.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    # Another key's ids do not exist for it.
    for call in (
        lambda: team_b.files.retrieve(upload.id),
        lambda: team_b.files.content(upload.id),
        lambda: team_b.files.delete(upload.id),
        lambda: team_b.batches.retrieve(batch.id),
        lambda: team_b.batches.cancel(batch.id),
        lambda: team_b.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert upload.id not in [file.id for file in team_b.files.list()]
    assert batch.id not in [listed.id for listed in team_b.batches.list()]
    with pytest.raises(openai.AuthenticationError):
        _client(service, "sk-wrong-0123456789abcdef").models.list()
    anonymous = httpx.get(f"{service.base_url}/models")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key"
    # A load balancer's probe has no key: /health answers it, and shows no one's data.
    probe = httpx.get(service.base_url.removesuffix("/v1") + "/health")
    assert (probe.status_code, probe.json()) == (200, {"status": "ok"})

    auth = {"Authorization": f"Bearer {KEY_A}"}
    oversize = httpx.post(
        f"{service.base_url}/files",
        headers=auth,
        files={"file": ("big.jsonl", b"x" * (UPLOAD_LIMIT + 1))},
        data={"purpose": "batch"},
    )
    assert oversize.status_code == 413 and "limit" in oversize.json()["error"]["message"]
    chunked = httpx.post(  # no Content-Length: the limit holds as the body streams in
        f"{service.base_url}/files",
        headers={**auth, "content-type": "multipart/form-data; boundary=xyz"},
        content=iter(
            [b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n']
            + [b"y" * 8192] * (2 * UPLOAD_LIMIT // 8192)
        ),
    )
    assert chunked.status_code == 413
    malformed = httpx.post(
        f"{service.base_url}/files",
        headers={**auth, "content-type": "multipart/form-data; boundary=xyz"},
        content=b"--xyz\r\nnot a part header\r\n\r\n--xyz--",
    )
    assert malformed.status_code == 400 and malformed.json()["error"]["message"]
    too_many = httpx.post(
        f"{service.base_url}/files",
        headers=auth,
        files={"file": ("many.jsonl", b"{}\n" * 401)},
        data={"purpose": "batch"},
    )
    assert too_many.status_code == 400 and "401 lines; a batch holds at most 400" in too_many.json()["error"]["message"]
    wrong_purpose = httpx.post(
        f"{service.base_url}/files", headers=auth, files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "fine-tune"}
    )
    assert wrong_purpose.status_code == 400 and wrong_purpose.json()["error"]["param"] == "purpose"
    bad_json = httpx.post(
        f"{service.base_url}/batches", headers={**auth, "content-type": "application/json"}, content=b"{"
    )
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]["message"]
    unknown_field = httpx.post(
        f"{service.base_url}/batches",
        headers=auth,
        json={"input_file_id": upload.id, "endpoint": "/v1/chat/completions", "completion_window": "24h", "x": 1},
    )
    assert unknown_field.status_code == 400 and unknown_field.json()["error"]["param"] == "x"
    window = httpx.post(
        f"{service.base_url}/batches",
        headers=auth,
        json={"input_file_id": upload.id, "endpoint": "/v1/chat/completions", "completion_window": "1h"},
    )
    assert window.status_code == 400 and "24h" in window.json()["error"]["message"]
    for query in ("limit=0", "limit=lots"):
        assert httpx.get(f"{service.base_url}/batches?{query}", headers=auth).status_code == 400
    traversal = httpx.get(f"{service.base_url}/files/..%2F..%2Fkeys", headers=auth)
    assert traversal.status_code == 404
    _wait(team_a, batch.id, {"completed"})


@pytest.mark.own_engine
def test_batches_list_in_pages_newest_first(service):
    client = _client(service)
    upload = client.files.create(file=("page.jsonl", _requests(1)), purpose="batch")
    created = [
        client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h").id
        for _ in range(3)
    ]
    first = client.batches.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    every = [batch.id for batch in client.batches.list(limit=2)]  # the SDK follows the pages itself
    assert every[:3] == created[::-1] and len(every) == len(set(every))
    for batch_id in created:
        _wait(client, batch_id, {"completed"})
    # A batch whose output files expire: the worker dates them as OpenAI does, from their creation.
    expiring = client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 3600},
    )
    output = client.files.retrieve(_wait(client, expiring.id, {"completed"}).output_file_id)
    assert output.expires_at == output.created_at + 3600
    assert client.files.retrieve(client.batches.retrieve(created[0]).output_file_id).expires_at is None


@pytest.mark.own_engine
def test_cancel_and_expiry_keep_what_was_answered_and_give_every_other_request_an_error_line(service):
    client = _client(service)
    expected = sorted(f"req-{index}" for index in range(300))
    for window, action in (("24h", "cancel"), ("4s", "expire")):
        upload = client.files.create(file=(f"{action}.jsonl", _requests(300, max_tokens=64)), purpose="batch")
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window=window
        )
        if action == "cancel":
            deadline = time.monotonic() + 300
            while client.batches.retrieve(batch.id).request_counts.completed == 0:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert client.batches.cancel(batch.id).status == "cancelling"
        ended = _wait(client, batch.id, {"cancelled", "expired", "completed"})
        assert ended.status == ("cancelled" if action == "cancel" else "expired")
        answers, errors = _lines(client, ended.output_file_id), _lines(client, ended.error_file_id)
        assert answers and errors, (len(answers), len(errors))
        assert sorted(line["custom_id"] for line in answers + errors) == expected
        code = "batch_cancelled" if action == "cancel" else "batch_expired"
        assert {line["error"]["code"] for line in errors} == {code}
        assert ended.request_counts.completed == len(answers) and ended.request_counts.failed == len(errors)


@pytest.mark.own_engine
def test_a_long_batch_gives_its_model_to_another_owners_batch_after_its_turn_and_both_answer_every_request_once(
    service,
):
    """Team b's 3 requests do not wait out team a's 400: after its turn (a second here, `limits.turn_s`)
    a's batch stops at a shard boundary, b's runs on the same warm engines, and a's resumes after it,
    answering each of its requests once."""
    team_a, team_b = _client(service, KEY_A), _client(service, KEY_B)
    upload = team_a.files.create(file=("long.jsonl", _requests(400, max_tokens=64)), purpose="batch")
    long = team_a.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 300
    while team_a.batches.retrieve(long.id).request_counts.completed == 0:  # a holds the model
        assert time.monotonic() < deadline
        time.sleep(0.1)
    small_upload = team_b.files.create(file=("small.jsonl", _requests(3, max_tokens=4)), purpose="batch")
    small = team_b.batches.create(
        input_file_id=small_upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    small_done = _wait(team_b, small.id, {"completed", "failed"})
    long_meanwhile = team_a.batches.retrieve(long.id)
    assert small_done.status == "completed" and small_done.request_counts.completed == 3, small_done.errors
    assert long_meanwhile.status == "in_progress", long_meanwhile.status
    assert 0 < long_meanwhile.request_counts.completed < 400
    assert re.search(rf"batch {long.id} gives tiny-llama to another owner's batch", service.log())

    long_done = _wait(team_a, long.id, {"completed", "failed"}, timeout_s=600)
    assert long_done.status == "completed", long_done.errors
    answered = _lines(team_a, long_done.output_file_id) + _lines(team_a, long_done.error_file_id)
    assert sorted(line["custom_id"] for line in answered) == sorted(f"req-{index}" for index in range(400))
    assert long_done.request_counts.completed + long_done.request_counts.failed == 400


@pytest.mark.own_engine
def test_a_request_naming_a_lora_adapter_gets_what_peft_generates_and_models_lists_the_adapter(
    service, service_adapter, tiny_model, tiny_tokenizer
):
    client = _client(service)
    models = {model.id: model for model in client.models.list()}
    assert getattr(models["tiny-terse"], "parent", None) == "tiny-llama"
    prompt = "the quick brown fox"
    lines = [
        {
            "custom_id": model,
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0},
        }
        for model in ("gpt-4o-mini", "tiny-terse")
    ]
    upload = client.files.create(
        file=("adapters.jsonl", "".join(json.dumps(line) + "\n" for line in lines)), purpose="batch"
    )
    done = _wait(
        client,
        client.batches.create(input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h").id,
        {"completed", "failed"},
    )
    assert done.status == "completed" and done.request_counts.completed == 2, done.errors
    bodies = {
        line["custom_id"]: Completion.model_validate(line["response"]["body"])
        for line in _lines(client, done.output_file_id)
    }
    ids = tiny_tokenizer.encode(prompt)
    for custom_id, adapter in (("gpt-4o-mini", None), ("tiny-terse", service_adapter)):
        expected = greedy_token_ids(tiny_model, adapter, ids, 8, stop_at_eos=True)
        assert bodies[custom_id].choices[0].text == tiny_tokenizer.decode(expected, skip_special_tokens=True)
        assert bodies[custom_id].usage.prompt_tokens == len(ids)
    assert bodies["tiny-terse"].model == "tiny-terse"
    assert bodies["gpt-4o-mini"].model == "tiny-llama"  # the served model's name, not where its weights are
    assert bodies["gpt-4o-mini"].choices[0].text != bodies["tiny-terse"].choices[0].text


@pytest.mark.own_engine
def test_batches_of_one_model_share_its_warm_engine_on_the_cluster_ray_address_names(service, ray_cluster):
    # Every batch of this module ran on the engine the first one started.
    log = service.log()
    assert log.count(" is ready") == 1, log
    # That engine's replica is a worker of the cluster's head, not of a Ray the service started.
    replica_pid = int(re.search(r"replica \S+:(\d+) is ready", log).group(1))
    head_processes = pids_mentioning(ray_cluster[1])
    assert any(replica_pid in descendants(pid) for pid in head_processes), (replica_pid, head_processes)
    assert not any(Path(service.ray_dir).rglob("session_*")), "the service started a Ray of its own"


@pytest.mark.own_engine
def test_with_log_format_json_every_line_the_service_wrote_is_one_json_object_even_for_a_request_not_in_http(
    service,
):
    """Its own lines, each request's, and the HTTP server's (uvicorn's, which has a plain-text
    handler of its own unless told otherwise) for bytes that are not HTTP, as a port scanner sends."""
    import socket

    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as raw:
        raw.sendall(b"NOT HTTP \x00\x01\r\n\r\n")
        assert raw.recv(1024).startswith(b"HTTP/1.1 400")
    deadline = time.monotonic() + 30
    while "Invalid HTTP request received." not in service.log():
        assert time.monotonic() < deadline, service.log()[-3000:]
        time.sleep(0.2)
    written = service.log()
    lines = written[: written.rfind("\n")].splitlines()  # whole lines: the server may be writing one
    objects = [json.loads(line) for line in lines]  # fails on any line that is not one JSON object
    said = {"logger": "uvicorn.error", "level": "warning", "message": "Invalid HTTP request received."}
    assert any(said.items() <= entry.items() for entry in objects)
    requests = [entry["message"] for entry in objects if entry.get("logger") == "herd.service.requests"]
    assert any(re.fullmatch(r"team-a GET /v1/batches/batch_\w+ 200 \d+ ms", message) for message in requests)


@pytest.mark.own_engine
def test_a_server_killed_mid_batch_is_resumed_by_the_next_and_two_servers_on_one_root_run_it_once(
    service, tmp_path, ray_cluster
):
    """The server killed is the module's own (so this test comes last in the module: an engine start
    fewer); the next two join the same cluster (the killed one's replica ends with it, as a driver's
    actors do), which spares each a Ray of its own to start."""
    client = _client(service)
    upload = client.files.create(file=("big.jsonl", _requests(300, max_tokens=64)), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 300
    while client.batches.retrieve(batch.id).request_counts.completed == 0:
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.1)
    service.kill()
    assert client_status(service.service_file.parent, batch.id) == "in_progress"
    later = [
        ServiceProcess(service.service_file, service.keys_file, free_port(), tmp_path / f"next-{n}.log", ray_cluster[0])
        for n in range(2)
    ]
    try:
        for server in later:
            server.wait_ready()
        done = _wait(_client(later[0]), batch.id, {"completed", "failed"})
        assert done.status == "completed", done.errors
        answers = _lines(_client(later[1]), done.output_file_id)
        assert sorted(line["custom_id"] for line in answers) == sorted(f"req-{index}" for index in range(300))
        assert done.request_counts.completed == 300 and done.error_file_id is None
        # One of the two servers ran the rest; the other never started an engine.
        assert sorted(server.log().count(" is ready") for server in later) == [0, 1]
        # The other found the batch held every second, and said so once.
        assert sorted(server.log().count("runs on another server") for server in later) == [0, 1]
    finally:
        for server in later:
            server.kill()


def client_status(root_parent: Path, batch_id: str) -> str:
    [record] = (root_parent / "root" / "batches").rglob(f"{batch_id}.json")
    return json.loads(record.read_text())["batch"]["status"]
