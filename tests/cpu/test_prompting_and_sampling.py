"""Templates, samples, seeds, stop sequences, logprobs, structured output, request files: on the tiny
Llama with the real vLLM CPU engine."""

from __future__ import annotations

import json
import math

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from jobs.manifest import OutputInUse
from schemas.errors import ExitCode
from tests.cpu.conftest import TEST_MAX_MODEL_LEN, every_replica_up, read_rows, tiny_model_spec


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_a_template_builds_prompts_from_columns_and_a_missing_column_is_a_row_error(run_tiny, tmp_path, tiny_tokenizer):
    _write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "a", "style": "short", "topic": "rivers"},
            {"id": "b", "style": "long"},
            {"id": "c", "style": "odd", "topic": "stars"},
        ],
    )
    outcome = run_tiny(
        input={"path": str(tmp_path / "in.jsonl"), "id_column": "id"},
        prompt={"format": "raw", "template": "Write a {{ style }} poem about {{ topic | upper }}."},
        sampling={"max_new_tokens": 4},
        output={"path": str(tmp_path / "out")},
        max_error_fraction=0.5,
    )
    assert outcome.exit_code == ExitCode.SUCCESS
    rows = read_rows(str(tmp_path / "out" / "data"))
    assert [row["id"] for row in rows] == ["a", "c"]
    assert rows[0]["prompt_tokens"] == len(tiny_tokenizer.encode("Write a short poem about RIVERS."))
    [error] = read_rows(str(tmp_path / "out" / "errors"))
    assert error["id"] == "b" and error["stage"] == "render"
    assert "prompt.template: 'topic' is undefined" in error["reason"]


def test_a_sharegpt_dataset_gets_its_final_answers_regenerated_and_answers_no_one_asked_for_are_row_errors(
    run_tiny, tmp_path, tiny_tokenizer
):
    """A chat dataset as Hugging Face exports it (Parquet, a list of {from, value} turns ending with the
    answer) and as ShareGPT's own file holds it (one pretty-printed JSON array): each last answer is
    replaced, and the prompt is that of the same turns written with OpenAI's roles, answered alike."""
    from workers.rendering import llama2_chat_token_ids

    turns = [
        ("system", "You answer in one word."),
        ("human", "Name a colour."),
        ("gpt", "Blue."),
        ("human", "And a fruit?"),
        ("gpt", "Pear."),
    ]
    sharegpt = pa.struct([("from", pa.string()), ("value", pa.string())])
    conversations = [
        [{"from": who, "value": text} for who, text in turns],
        [{"from": "human", "value": "Say hello."}],  # nothing to replace
        [{"from": "human", "value": "hi"}, {"from": "bing", "value": "hello"}],
        [{"from": "gpt", "value": "I start."}],
    ]
    inputs = tmp_path / "in"
    inputs.mkdir()
    pq.write_table(
        pa.table(
            {
                "id": ["multi", "open", "bing", "answer-only"],
                "conversations": pa.array(conversations, pa.list_(sharegpt)),
            }
        ),
        inputs / "sharegpt.parquet",
    )
    (inputs / "sharegpt.json").write_text(
        json.dumps([{"id": "json-multi", "conversations": conversations[0]}], indent=2)
    )
    roles = {"system": "system", "human": "user", "gpt": "assistant"}
    asked = [{"role": roles[who], "content": text} for who, text in turns[:-1]]
    _write_jsonl(inputs / "openai.jsonl", [{"id": "openai-roles", "conversations": asked}])
    job = {
        "input": {
            "path": str(inputs),
            "messages_column": "conversations",
            "id_column": "id",
            "keep_columns": [{"conversations": "reference"}],
        },
        "sampling": {"max_new_tokens": 6, "temperature": 0},
        "max_error_fraction": 1.0,
    }
    outcome = run_tiny(
        **job, prompt={"format": "llama2-chat", "regenerate_final_answer": True}, output={"path": str(tmp_path / "new")}
    )
    assert outcome.exit_code == ExitCode.SUCCESS
    rows = {row["id"]: row for row in read_rows(str(tmp_path / "new" / "data"))}
    assert sorted(rows) == ["json-multi", "multi", "open", "openai-roles"]
    assert rows["multi"]["prompt_tokens"] == len(llama2_chat_token_ids(asked, tiny_tokenizer))
    assert rows["multi"]["completion"] == rows["openai-roles"]["completion"] == rows["json-multi"]["completion"]
    assert rows["multi"]["reference"][-1] == {"from": "gpt", "value": "Pear."}  # the dataset's answer, kept
    errors = {row["id"]: row["reason"] for row in read_rows(str(tmp_path / "new" / "errors"))}
    assert errors == {
        "bing": "conversations[1].from: expected system, human, gpt, got 'bing'",
        "answer-only": "conversations: the conversation has no user turn",
    }
    # Without the option, a conversation that ends with its answer is not answered again.
    run_tiny(**job, prompt={"format": "llama2-chat"}, output={"path": str(tmp_path / "as-is")})
    assert sorted(row["id"] for row in read_rows(str(tmp_path / "as-is" / "data"))) == ["open", "openai-roles"]
    errors = {row["id"]: row["reason"] for row in read_rows(str(tmp_path / "as-is" / "errors"))}
    assert "prompt.regenerate_final_answer: true" in errors["multi"]
    # The option decides what an output holds: setting it on that output is another job.
    with pytest.raises(OutputInUse, match=r"changed: prompt.regenerate_final_answer"):
        run_tiny(
            **job,
            prompt={"format": "llama2-chat", "regenerate_final_answer": True},
            output={"path": str(tmp_path / "as-is")},
        )


def test_n_samples_differ_when_sampling_and_are_n_copies_of_the_one_greedy_answer(run_tiny, tmp_path):
    """vLLM refuses n > 1 with greedy decoding; OpenAI answers it (with n equal choices). herd
    generates the greedy answer once and gives each row n copies: what n 1 gives, n times."""
    _write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"tell a story number {index}"} for index in range(4)])

    def samples(output: str, **sampling) -> dict[str, list[str]]:
        run_tiny(
            input={"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"},
            sampling={"max_new_tokens": 12, "ignore_eos": True, **sampling},
            output={"path": str(tmp_path / output)},
        )
        by_id: dict[str, list[str]] = {}
        for row in sorted(read_rows(str(tmp_path / output / "data")), key=lambda row: row["sample_index"]):
            by_id.setdefault(row["id"], []).append(row["completion"])
        return by_id

    sampled = samples("sampled", n=4, temperature=1.0, seed=11)
    assert len(sampled) == 4 and all(len(set(texts)) == 4 for texts in sampled.values())
    greedy = samples("greedy", n=3, do_sample=False)
    once = samples("once", n=1, temperature=0.0)
    assert greedy == {row_id: texts * 3 for row_id, texts in once.items()}


def test_the_same_seed_gives_the_same_completions_with_one_replica_or_two(run_tiny, tiny_pool, tmp_path):
    """Twelve shards spread over the shared pool's two replicas, then every row in one shard on one of them."""
    every_replica_up(tiny_pool)
    prompts = [f"question {index} about the sea" for index in range(24)]
    pq.write_table(pa.table({"prompt": prompts}), tmp_path / "in.parquet")
    sampling = {"max_new_tokens": 10, "temperature": 0.9, "seed": 21}

    def run(output: str, rows_per_shard: int) -> tuple[int, dict[str, str]]:
        source = {"path": str(tmp_path / "in.parquet"), "prompt_column": "prompt", "rows_per_shard": rows_per_shard}
        outcome = run_tiny(input=source, sampling=sampling, output={"path": str(tmp_path / output)})
        replicas = len(outcome.summary.tokens_per_s_by_replica)
        return replicas, {row["id"]: row["completion"] for row in read_rows(str(tmp_path / output / "data"))}

    two, by_two = run("two", rows_per_shard=2)
    one, by_one = run("one", rows_per_shard=24)
    assert (two, one) == (2, 1)
    assert len(by_two) == 24 and by_one == by_two


def test_dedupe_generates_identical_prompts_once_and_gives_every_row_the_answer(run_tiny, tmp_path):
    # 12 rows, 3 distinct prompts; 5-row shards, so copies of a prompt also sit in different shards.
    table = pa.table(
        {"id": [str(index) for index in range(12)], "prompt": [f"topic {index % 3}" for index in range(12)]}
    )
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=5)

    def run(output: str, dedupe: bool) -> tuple[object, dict[str, str]]:
        outcome = run_tiny(
            input={
                "path": str(tmp_path / "in.parquet"),
                "prompt_column": "prompt",
                "id_column": "id",
                "rows_per_shard": 5,
            },
            sampling={"max_new_tokens": 12, "ignore_eos": True, "temperature": 1.0, "seed": 5},
            optimize={"dedupe_prompts": dedupe},
            output={"path": str(tmp_path / output)},
        )
        return outcome, {row["id"]: row["completion"] for row in read_rows(str(tmp_path / output / "data"))}

    deduped, completions = run("deduped", dedupe=True)
    assert len(completions) == 12
    by_prompt = [{completions[str(index)] for index in range(12) if index % 3 == topic} for topic in range(3)]
    # One answer per prompt, across shards and replicas too (the seed comes from the prompt).
    assert all(len(answers) == 1 for answers in by_prompt)
    assert len(set.union(*by_prompt)) == 3
    # Shards of rows 0-4, 5-9, 10-11 hold 3, 3 and 2 distinct prompts: at least their copies are
    # reused; copies in later shards on the same replica are too (see test_replica_engine.py).
    assert 12 - (3 + 3 + 2) <= deduped.summary.reused_rows <= 12 - 3

    plain, completions = run("plain", dedupe=False)
    assert plain.summary.reused_rows == 0
    assert len(set(completions.values())) == 12  # without it each row is seeded by its own id


def test_stop_sequences_cut_the_completion_and_logprobs_come_per_token(run_tiny, tmp_path):
    _write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"the quick brown fox {index}"} for index in range(6)])
    free = run_tiny(
        input={"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"},
        sampling={"max_new_tokens": 24, "do_sample": False, "ignore_eos": True, "logprobs": True},
        output={"path": str(tmp_path / "free")},
    )
    assert free.exit_code == ExitCode.SUCCESS
    free_rows = read_rows(str(tmp_path / "free" / "data"))
    for row in free_rows:
        assert len(row["token_logprobs"]) == row["completion_tokens"] == 24
        assert all(value <= 0.0 and math.isfinite(value) for value in row["token_logprobs"])
    # Stop at a piece of text the greedy completion of the first row is known to contain.
    stop = free_rows[0]["completion"][4:7]
    run_tiny(
        input={"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"},
        sampling={"max_new_tokens": 24, "do_sample": False, "ignore_eos": True, "stop": [stop]},
        output={"path": str(tmp_path / "stopped")},
    )
    first = read_rows(str(tmp_path / "stopped" / "data"))[0]
    assert first["finish_reason"] == "stop"
    assert stop not in first["completion"]
    assert free_rows[0]["completion"].startswith(first["completion"])
    # A stop list that never matches changes no text: completions are decoded one way with or without it.
    run_tiny(
        input={"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"},
        sampling={"max_new_tokens": 24, "do_sample": False, "ignore_eos": True, "stop": ["\u2603 never"]},
        output={"path": str(tmp_path / "never")},
    )
    assert [row["completion"] for row in read_rows(str(tmp_path / "never" / "data"))] == [
        row["completion"] for row in free_rows
    ]


def test_completions_are_the_ids_decoded_as_the_llama2_reference_does_with_or_without_stop(llama2_tokenizer):
    from workers.engine import completion_text

    ids = llama2_tokenizer.encode("Paris is the capital of France.", add_special_tokens=False)
    assert llama2_tokenizer.convert_ids_to_tokens(ids[0]).startswith("\u2581")  # SentencePiece's leading space
    plain = completion_text(ids, [], llama2_tokenizer)
    assert plain == llama2_tokenizer.decode(ids, skip_special_tokens=True) == "Paris is the capital of France."
    assert completion_text(ids, ["never there"], llama2_tokenizer) == plain
    assert completion_text(ids, [" capital", " is"], llama2_tokenizer) == "Paris"
    assert completion_text([*ids, llama2_tokenizer.eos_token_id], ["."], llama2_tokenizer) == plain[:-1]


SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "enum": ["yes", "no"]},
        "score": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["answer", "score"],
    "additionalProperties": False,
}


def test_a_json_schema_job_yields_completions_that_parse_and_validate(run_tiny, tmp_path):
    _write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"is {index} a lucky number?"} for index in range(8)])
    outcome = run_tiny(
        input={"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"},
        sampling={"max_new_tokens": 40, "temperature": 0.8, "structured": {"json_schema": SCHEMA}},
        output={"path": str(tmp_path / "out")},
    )
    assert outcome.exit_code == ExitCode.SUCCESS
    rows = read_rows(str(tmp_path / "out" / "data"))
    assert len(rows) == 8
    for row in rows:
        jsonschema.validate(json.loads(row["completion"]), SCHEMA)
        assert row["structured_valid"] is True


def test_a_completion_cut_short_by_max_new_tokens_is_flagged_not_dropped(run_tiny, tmp_path):
    _write_jsonl(tmp_path / "in.jsonl", [{"prompt": "answer in JSON"}])
    run_tiny(
        input={"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"},
        sampling={"max_new_tokens": 3, "structured": {"json_schema": SCHEMA}},
        output={"path": str(tmp_path / "out")},
    )
    [row] = read_rows(str(tmp_path / "out" / "data"))
    assert row["finish_reason"] == "length" and row["structured_valid"] is False


def test_choices_constrain_every_completion(run_tiny, tmp_path):
    _write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"pick one {index}"} for index in range(6)])
    run_tiny(
        input={"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"},
        sampling={"max_new_tokens": 8, "temperature": 1.0, "structured": {"choices": ["alpha", "beta", "gamma"]}},
        output={"path": str(tmp_path / "out")},
    )
    rows = read_rows(str(tmp_path / "out" / "data"))
    assert len(rows) == 6 and all(row["completion"] in ("alpha", "beta", "gamma") for row in rows)


def test_an_openai_batch_file_round_trips_every_custom_id_once_under_the_models_name(run_tiny, tiny_model, tmp_path):
    requests = []
    for index in range(10):
        body = {"model": "gpt-4o-mini", "max_tokens": 5 + index % 3}
        if index % 2:
            request = {
                "url": "/v1/chat/completions",
                "body": {**body, "messages": [{"role": "user", "content": f"hi {index}"}]},
            }
        else:
            request = {"url": "/v1/completions", "body": {**body, "prompt": f"once upon a time {index}", "n": 2}}
        requests.append({"custom_id": f"req-{index}", "method": "POST", **request})
    # The same conversation as a Responses request (instructions, then input) and as a chat request.
    conversation = {"model": "gpt-4o-mini", "temperature": 0}
    requests.append(
        {
            "custom_id": "twin-response",
            "method": "POST",
            "url": "/v1/responses",
            "body": {
                **conversation,
                "instructions": "Be brief.",
                "input": "hi there",
                "max_output_tokens": 6,
                "include": ["message.output_text.logprobs"],
                "top_logprobs": 2,
            },
        }
    )
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}]
    requests.append(
        {
            "custom_id": "twin-chat",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                **conversation,
                "messages": messages,
                "max_completion_tokens": 6,
                "logprobs": True,
                "top_logprobs": 2,
            },
        }
    )
    requests.append({"custom_id": "bad-url", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}})
    # vLLM itself refuses this one (the tiny model has 512 tokens), and with it the whole call it is in.
    requests.append(
        {
            "custom_id": "bad-bias",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"prompt": "x", "max_tokens": 3, "logit_bias": {"100000": 5}},
        }
    )
    requests.append(
        {
            "custom_id": "bad-params",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"prompt": "x", "temperature": -3},
        }
    )
    _write_jsonl(tmp_path / "batch.jsonl", requests)
    outcome = run_tiny(
        input={"path": str(tmp_path / "batch.jsonl"), "format": "openai-batch"},
        # Named: result lines say this instead of the path (the shared engines serve it, named or not).
        model={**tiny_model_spec(tiny_model), "name": "tiny-llama-chat"},
        prompt={"format": "llama2-chat"},
        output={"path": str(tmp_path / "out"), "format": "openai"},
        max_error_fraction=0.5,
    )
    assert outcome.exit_code == ExitCode.SUCCESS
    results = read_rows(str(tmp_path / "out" / "data"))
    errors = read_rows(str(tmp_path / "out" / "errors"))
    assert sorted(line["custom_id"] for line in results + errors) == sorted(
        request["custom_id"] for request in requests
    )
    assert {line["custom_id"] for line in errors} == {"bad-url", "bad-params", "bad-bias"}
    [bias_error] = [line["error"]["message"] for line in errors if line["custom_id"] == "bad-bias"]
    assert "out-of-vocab" in bias_error
    assert all(line["response"] is None and line["error"]["message"] for line in errors)
    twins = {line["custom_id"]: line["response"]["body"] for line in results if line["custom_id"].startswith("twin")}
    results = [line for line in results if line["custom_id"] not in twins]
    response = Response.model_validate(twins["twin-response"])  # the SDK's own type
    chat = ChatCompletion.model_validate(twins["twin-chat"])
    assert response.output_text == chat.choices[0].message.content and response.model == "tiny-llama-chat"
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens
    assert response.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")
    # Each generated token's logprob and its two alternatives, as chat lists them.
    listed = response.output[0].content[0].logprobs
    chat_listed = chat.choices[0].logprobs.content
    assert [token.token for token in listed] == [token.token for token in chat_listed]
    assert len(listed) == response.usage.output_tokens and all(len(token.top_logprobs) == 2 for token in listed)
    assert [token.logprob for token in listed] == pytest.approx([token.logprob for token in chat_listed], abs=1e-3)
    for line in results:
        index = int(line["custom_id"].split("-")[1])
        body = line["response"]["body"]
        assert line["response"]["status_code"] == 200 and line["error"] is None
        assert body["object"] == ("chat.completion" if index % 2 else "text_completion")
        assert body["model"] == "tiny-llama-chat"
        assert len(body["choices"]) == (1 if index % 2 else 2)
        assert body["usage"]["completion_tokens"] <= (5 + index % 3) * len(body["choices"])
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        text = body["choices"][0]["message"]["content"] if index % 2 else body["choices"][0]["text"]
        assert isinstance(text, str)


def test_truncation_keeps_a_long_prompts_end_and_a_request_whose_max_tokens_fills_the_context_is_a_row_error(
    run_tiny, tmp_path
):
    """prompt.on_overflow: truncate keeps the last tokens that leave room for the completion; a request
    asking for the whole context itself (its own max_tokens) leaves no room for any prompt, and is an
    error row rather than an empty prompt sent to the engine."""
    long_prompt = " ".join(f"word{index}" for index in range(400))  # well over 512 tokens

    def line(custom_id: str, **body: object) -> dict:
        return {"custom_id": custom_id, "url": "/v1/completions", "body": {"prompt": long_prompt, **body}}

    requests = [
        line("cut"),
        line("cut-more", max_tokens=100),
        line("whole", max_tokens=512),
        line("over", max_tokens=600),
    ]
    _write_jsonl(tmp_path / "batch.jsonl", requests)
    outcome = run_tiny(
        input={"path": str(tmp_path / "batch.jsonl"), "format": "openai-batch"},
        prompt={"format": "raw", "on_overflow": "truncate"},
        sampling={"max_new_tokens": 8},
        output={"path": str(tmp_path / "out")},
        max_error_fraction=1.0,
    )
    assert outcome.exit_code == ExitCode.SUCCESS
    rows = {row["id"]: row for row in read_rows(str(tmp_path / "out" / "data"))}
    assert rows["cut"]["prompt_tokens"] == TEST_MAX_MODEL_LEN - 8
    assert rows["cut-more"]["prompt_tokens"] == TEST_MAX_MODEL_LEN - 100
    errors = {error["id"]: error["reason"] for error in read_rows(str(tmp_path / "out" / "errors"))}
    assert errors == {
        "whole": f"max_new_tokens 512 leaves no room for a prompt in max_model_len {TEST_MAX_MODEL_LEN}",
        "over": f"max_new_tokens 600 leaves no room for a prompt in max_model_len {TEST_MAX_MODEL_LEN}",
    }


def test_openai_json_mode_is_honoured_with_guided_json_and_bad_response_formats_are_row_errors(run_tiny, tmp_path):
    def request(custom_id, response_format):
        body = {"messages": [{"role": "user", "content": f"describe {custom_id} as JSON"}], "max_tokens": 40}
        return {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {**body, "response_format": response_format},
        }

    requests = [
        request("json-1", {"type": "json_object"}),
        request("json-2", {"type": "json_object"}),
        request("text", {"type": "text"}),
        request("xml", {"type": "xml"}),
        request("string", "json"),
    ]
    _write_jsonl(tmp_path / "batch.jsonl", requests)
    outcome = run_tiny(
        input={"path": str(tmp_path / "batch.jsonl"), "format": "openai-batch"},
        prompt={"format": "llama2-chat"},
        output={"path": str(tmp_path / "out"), "format": "jsonl"},
        max_error_fraction=1.0,
    )
    assert outcome.exit_code == ExitCode.SUCCESS
    rows = {row["id"]: row for row in read_rows(str(tmp_path / "out" / "data"))}
    errors = {error["id"]: error["reason"] for error in read_rows(str(tmp_path / "out" / "errors"))}
    assert set(rows) == {"json-1", "json-2", "text"}
    # Guided JSON: the random test model starts every object with "{" only because it is made to.
    assert all(rows[name]["completion"].startswith("{") for name in ("json-1", "json-2"))
    assert all(isinstance(rows[name]["structured_valid"], bool) for name in ("json-1", "json-2"))
    assert "body.response_format.type: expected text, json_object or json_schema, got 'xml'" in errors["xml"]
    assert "body.response_format: expected an object" in errors["string"]


def test_hosted_llama2_request_bodies_are_accepted(run_tiny, tmp_path):
    body = {
        "input_data": {
            "input_string": ["I believe the meaning of life is", "Simply put, the theory of relativity states that"],
            "parameters": {"top_p": 0.9, "temperature": 0.6, "max_new_tokens": 6, "do_sample": True},
        }
    }
    _write_jsonl(tmp_path / "hosted.jsonl", [body, {"input_data": {"input_string": "not a list"}}])
    outcome = run_tiny(
        input={"path": str(tmp_path / "hosted.jsonl"), "format": "llama2-hosted"},
        output={"path": str(tmp_path / "out")},
        max_error_fraction=0.5,
    )
    assert outcome.exit_code == ExitCode.SUCCESS
    rows = read_rows(str(tmp_path / "out" / "data"))
    assert [row["id"] for row in rows] == ["hosted.jsonl:0.0", "hosted.jsonl:0.1"]
    assert all(row["completion_tokens"] <= 6 for row in rows)
    [error] = read_rows(str(tmp_path / "out" / "errors"))
    assert "input_data.input_string: expected a non-empty list of strings" in error["reason"]
