"""The spine, end to end: real vLLM (tiny random Llama on CPU), real Ray, real files and S3."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.errors import ExitCode
from tests.cpu.conftest import every_replica_up, manifest_records, read_rows

WORDS = "the quick brown fox jumps over a lazy dog while data engineers write prompts".split()


def _prompts(count: int) -> list[str]:
    return [" ".join(WORDS[(index + k) % len(WORDS)] for k in range(3 + index % 9)) for index in range(count)]


def _write_parquet(path: Path, count: int, row_group_size: int) -> list[str]:
    prompts = _prompts(count)
    table = pa.table({"key": [f"k{index}" for index in range(count)], "prompt": prompts, "topic": ["t"] * count})
    pq.write_table(table, path, row_group_size=row_group_size)
    return prompts


def test_parquet_job_writes_one_row_per_sample_with_exact_token_counts(run_tiny, tmp_path, tiny_tokenizer):
    prompts = _write_parquet(tmp_path / "in.parquet", 40, row_group_size=10)
    outcome = run_tiny(
        input={
            "path": str(tmp_path / "in.parquet"),
            "prompt_column": "prompt",
            "id_column": "key",
            "keep_columns": ["topic"],
            "rows_per_shard": 10,
        },
        sampling={"max_new_tokens": 8, "ignore_eos": True, "n": 2, "temperature": 0.8, "seed": 3},
        output={"path": str(tmp_path / "out")},
    )
    assert outcome.exit_code == ExitCode.SUCCESS
    rows = read_rows(str(tmp_path / "out" / "data"))
    assert len(rows) == 40 * 2
    assert sorted(rows[0]) == sorted(
        ["id", "topic", "sample_index", "completion", "finish_reason", "prompt_tokens", "completion_tokens", "model"]
    )
    by_id = {}
    for row in rows:
        by_id.setdefault(row["id"], []).append(row)
    assert sorted(by_id) == sorted(f"k{index}" for index in range(40))
    for index, prompt in enumerate(prompts):
        samples = by_id[f"k{index}"]
        assert [sample["sample_index"] for sample in samples] == [0, 1]
        for sample in samples:
            assert sample["prompt_tokens"] == len(tiny_tokenizer.encode(prompt))
            assert sample["completion_tokens"] == 8
            assert sample["finish_reason"] == "length"
            assert sample["topic"] == "t"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["rows_in"], summary["rows_out"], summary["error_rows"], summary["shards"]) == (40, 80, 0, 4)
    assert summary["completion_tokens"] == 80 * 8
    assert (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.parametrize(("rows", "shards"), [(64, 16), (8, 2)], ids=["many shards", "as many shards as replicas"])
def test_shards_are_spread_over_both_replicas(run_tiny, tiny_pool, tmp_path, rows, shards):
    # A replica an earlier test ended is started again by the next run; a run of a few seconds would
    # otherwise be over, on the other replica alone, before it is up.
    every_replica_up(tiny_pool)
    _write_parquet(tmp_path / "in.parquet", rows, row_group_size=4)
    run_tiny(
        input={"path": str(tmp_path / "in.parquet"), "prompt_column": "prompt", "rows_per_shard": 4},
        sampling={"max_new_tokens": 48, "ignore_eos": True},
        output={"path": str(tmp_path / "out")},
    )
    records = manifest_records(tmp_path / "out")
    assert len(records) == shards
    assert len({record.replica for record in records}) == 2


def test_a_pandas_file_of_one_row_group_is_shared_by_both_replicas_with_every_row_once(run_tiny, tiny_pool, tmp_path):
    import pandas as pd

    every_replica_up(tiny_pool)

    folder = tmp_path / "prompts" / "date=2026-11-25"  # a Hive folder: its value is a column to keep
    folder.mkdir(parents=True)
    pd.DataFrame({"prompt": _prompts(3000)}).to_parquet(folder / "part-0.parquet")
    assert pq.ParquetFile(folder / "part-0.parquet").metadata.num_row_groups == 1
    outcome = run_tiny(
        input={
            "path": str(tmp_path / "prompts"),
            "prompt_column": "prompt",
            "keep_columns": ["date"],
            "rows_per_shard": 256,
        },
        sampling={"max_new_tokens": 1},
        output={"path": str(tmp_path / "out")},
    )
    assert outcome.exit_code == ExitCode.SUCCESS
    assert outcome.summary.shards >= 12
    records = manifest_records(tmp_path / "out")
    assert len({record.replica for record in records}) == 2
    rows = read_rows(str(tmp_path / "out" / "data"))
    assert sorted(row["id"] for row in rows) == sorted(
        f"date=2026-11-25/part-0.parquet:{index}" for index in range(3000)
    )
    assert {row["date"] for row in rows} == {"2026-11-25"}


def test_the_output_folder_reads_as_one_table_whose_kept_columns_have_their_input_types_and_names(
    run_tiny, tiny_model, tmp_path
):
    """Each shard writes its own file. A column kept from a Parquet input keeps its type in every one
    of them, even in a file where it has no value (a sparse column), so that pyarrow, DuckDB or Spark
    read the folder as one table; from JSON Lines, a column without a value in a file is text there,
    which readers cast to the other files' type, never Arrow's null type, which they cannot cast to.
    Input columns named like herd's own (`id`, `model`) are kept under the names the job gives them,
    with their values and types, beside herd's. Written as JSON Lines, the typed values JSON has no type
    for are text in their usual forms (ISO 8601, exact decimal digits, base64) and a NaN is null: strict
    JSON, which DuckDB, Spark and jq read (Python's own json would write the bare word NaN)."""
    import decimal

    count = 40
    sparse = [None if index < 20 else f"note {index}" for index in range(count)]  # none in the first shards
    prices = [decimal.Decimal(index) * decimal.Decimal("1.25") for index in range(count)]  # precision grows
    stamps = [None if index < 20 else 1_700_000_000_123_456_789 + index for index in range(count)]
    table = pa.table(
        {
            "prompt": _prompts(count),
            "note": pa.array(sparse, pa.string()),
            "price": pa.array(prices, pa.decimal128(12, 2)),
            "at": pa.array(stamps, pa.timestamp("ns", tz="UTC")),
            "id": pa.array(range(1000, 1000 + count), pa.int64()),  # not the job's id_column
            "model": [f"phone-{index}" for index in range(count)],
            "score": pa.array([float("nan") if index % 2 else index / 4 for index in range(count)], pa.float64()),
            "blob": pa.array([bytes([255, index]) for index in range(count)], pa.binary()),
        }
    )
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=10)
    lines = [{"prompt": prompt, "tag": None if index < 20 else index} for index, prompt in enumerate(_prompts(count))]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    typed = ["note", "price", "at", {"id": "input_id"}, {"model": "product_model"}, "score", "blob"]
    runs = {  # output folder: input, how it is cut, output format
        "parquet": ("parquet", {"keep_columns": typed, "rows_per_shard": 10}, "parquet"),
        "jsonl": ("jsonl", {"keep_columns": ["tag"], "bytes_per_shard": 1024}, "parquet"),
        "typed-as-jsonl": ("parquet", {"keep_columns": typed, "rows_per_shard": 20}, "jsonl"),
    }
    for name, (input_name, cut, output_format) in runs.items():
        outcome = run_tiny(
            input={"path": str(tmp_path / f"in.{input_name}"), "prompt_column": "prompt", **cut},
            sampling={"max_new_tokens": 1},
            output={"path": str(tmp_path / f"out-{name}"), "format": output_format},
        )
        assert outcome.exit_code == ExitCode.SUCCESS and outcome.summary.shards >= 2, name

    files = sorted((tmp_path / "out-parquet" / "data").glob("*.parquet"))
    assert len(files) >= 4
    for path in files:
        schema = pq.read_schema(path)
        assert [schema.field(name).type for name in ("note", "price", "at")] == [
            pa.string(),
            pa.decimal128(12, 2),
            pa.timestamp("ns", tz="UTC"),
        ], path.name
        assert schema.field("prompt_tokens").type == pa.int64()
    read = pq.read_table(tmp_path / "out-parquet" / "data")  # the folder, as one dataset
    positions = [int(row_id.rsplit(":", 1)[1]) for row_id in read.column("id").to_pylist()]
    assert sorted(positions) == list(range(count))
    read = read.take(sorted(range(count), key=positions.__getitem__))  # in input order
    assert read.column("note").to_pylist() == sparse
    assert read.column("price").to_pylist() == prices
    assert read.column("at").cast(pa.int64()).to_pylist() == stamps  # to the nanosecond
    assert read.schema.field("input_id").type == pa.int64()
    assert read.column("input_id").to_pylist() == list(range(1000, 1000 + count))
    assert read.column("product_model").to_pylist() == [f"phone-{index}" for index in range(count)]
    assert set(read.column("model").to_pylist()) == {str(tiny_model)}  # herd's own, beside the kept one

    jsonl_files = sorted((tmp_path / "out-jsonl" / "data").glob("*.parquet"))
    tag_types = [pq.read_schema(path).field("tag").type for path in jsonl_files]
    assert pa.string() in tag_types and pa.int64() in tag_types  # a file without a tag, one with
    tags = pq.read_table(tmp_path / "out-jsonl" / "data").column("tag").to_pylist()
    assert sorted(str(tag) for tag in tags if tag is not None) == sorted(str(index) for index in range(20, count))

    def strict(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    written = [
        json.loads(line, parse_constant=strict)
        for path in (tmp_path / "out-typed-as-jsonl" / "data").glob("*.jsonl")
        for line in path.read_text().split("\n")
        if line
    ]
    by_position = {int(row["id"].rsplit(":", 1)[1]): row for row in written}
    assert sorted(by_position) == list(range(count))
    first_stamped = by_position[20]
    assert first_stamped["at"] == "2023-11-14T22:13:20.123456809+00:00"  # ISO 8601, to the nanosecond
    assert by_position[0]["at"] is None
    assert [by_position[index]["price"] for index in range(count)] == [str(price) for price in prices]
    assert [by_position[index]["score"] for index in (0, 1, 2)] == [0.0, None, 0.5]
    assert by_position[3]["blob"] == base64.b64encode(bytes([255, 3])).decode()
    assert by_position[3]["input_id"] == 1003


def test_text_written_as_parquet_binary_is_read_as_text_and_other_bytes_are_a_named_row_error(run_tiny, tmp_path):
    """Impala, Hive and older Spark write text columns as binary without marking them as text: the
    prompt, the id and a template's values are the text those bytes encode, a kept binary column
    stays binary in the output, and a prompt whose bytes are not UTF-8 is that row's error."""
    prompts = _prompts(3)
    table = pa.table(
        {
            "key": pa.array([f"k{index}".encode() for index in range(4)], pa.binary()),
            "question": pa.array([*(prompt.encode() for prompt in prompts), b"\xff\xfe not text"], pa.large_binary()),
            "blob": pa.array([b"\x00\x01", b"tag", None, b"\xff"], pa.binary()),
        }
    )
    pq.write_table(table, tmp_path / "impala.parquet")
    input_section = {"path": str(tmp_path / "impala.parquet"), "id_column": "key", "keep_columns": ["blob"]}
    outcome = run_tiny(
        input={**input_section, "prompt_column": "question"},
        sampling={"max_new_tokens": 2},
        output={"path": str(tmp_path / "out")},
        max_error_fraction=0.5,
    )
    assert outcome.exit_code == ExitCode.SUCCESS and outcome.summary.error_rows == 1
    data = pq.read_table(tmp_path / "out" / "data")
    assert data.schema.field("blob").type == pa.binary()
    rows = sorted(data.to_pylist(), key=lambda row: row["id"])
    assert [row["id"] for row in rows] == ["k0", "k1", "k2"]
    assert [row["blob"] for row in rows] == [b"\x00\x01", b"tag", None]
    [error] = pq.read_table(tmp_path / "out" / "errors").to_pylist()
    assert error["id"] == "k3" and error["row"] == 3
    assert error["reason"].startswith("question: expected text, got bytes that are not UTF-8 text")
    # The same prompts through a template: the same token counts (the text, not "b'...'").
    templated = run_tiny(
        input={**input_section, "rows_per_shard": 2},
        prompt={"format": "raw", "template": "{{ question }}"},
        sampling={"max_new_tokens": 2},
        output={"path": str(tmp_path / "templated")},
        max_error_fraction=0.5,
    )
    assert templated.summary.prompt_tokens == outcome.summary.prompt_tokens
    assert templated.summary.error_rows == 1


def test_jsonl_job_keeps_input_order_and_respects_max_new_tokens(run_tiny, tmp_path):
    prompts = _prompts(30)
    with open(tmp_path / "in.jsonl", "w") as handle:
        for prompt in prompts:
            handle.write(json.dumps({"prompt": prompt}) + "\n")
    outcome = run_tiny(
        input={"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt", "bytes_per_shard": 1024},
        sampling={"max_new_tokens": 12, "temperature": 0.0},
        output={"path": str(tmp_path / "out"), "format": "jsonl"},
    )
    assert outcome.exit_code == ExitCode.SUCCESS
    assert outcome.summary.shards > 1
    rows = read_rows(str(tmp_path / "out" / "data"))
    assert len(rows) == 30
    offsets = [int(row["id"].rsplit(":", 1)[1]) for row in rows]
    assert sorted(offsets) == offsets  # shard files sort by their first byte; rows keep file order
    assert all(row["id"].startswith("in.jsonl:") for row in rows)
    assert all(row["completion_tokens"] <= 12 for row in rows)
    assert all(row["finish_reason"] in ("stop", "length") for row in rows)


def test_s3_input_and_output_through_a_moto_server(run_tiny, tmp_path, s3_endpoint):
    import s3fs

    _write_parquet(tmp_path / "in.parquet", 12, row_group_size=6)
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.put(str(tmp_path / "in.parquet"), "herd-test/inputs/in.parquet")
    outcome = run_tiny(
        input={"path": "s3://herd-test/inputs/*.parquet", "prompt_column": "prompt", "rows_per_shard": 6},
        sampling={"max_new_tokens": 4, "ignore_eos": True},
        output={"path": "s3://herd-test/outputs/run1"},
        storage={"endpoint_url": s3_endpoint},
    )
    assert outcome.exit_code == ExitCode.SUCCESS
    rows = read_rows("s3://herd-test/outputs/run1/data", endpoint_url=s3_endpoint)
    assert len(rows) == 12
    assert {row["id"] for row in rows} == {f"in.parquet:{index}" for index in range(12)}
    assert fs.exists("herd-test/outputs/run1/_SUCCESS")
    assert json.loads(fs.cat("herd-test/outputs/run1/summary.json"))["rows_out"] == 12


def test_a_spreadsheet_saved_as_csv_on_s3_runs_through_a_template_with_its_fields_kept_as_text(
    run_tiny, tmp_path, s3_endpoint
):
    """As Excel saves a sheet (a BOM, CRLF, quoted fields across lines), read from S3 by each replica."""
    import s3fs

    products = [
        (f"P-{index:03}", f"Lamp {index}", f"{index}.50", f"Bright,\nwarm light #{index}") for index in range(60)
    ]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(["Product ID", "name", "price", "notes"])
    writer.writerows(products)
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).pipe(
        "herd-test/sheets/products.csv", text.getvalue().encode("utf-8-sig")
    )
    outcome = run_tiny(
        input={
            "path": "s3://herd-test/sheets/",
            "id_column": "Product ID",
            "keep_columns": ["price", {"notes": "product_notes"}],
            "bytes_per_shard": 1024,
        },
        prompt={"format": "raw", "template": "An ad for {{ name }}, {{ notes }}, at ${{ price }}:"},
        sampling={"max_new_tokens": 4, "ignore_eos": True},
        output={"path": str(tmp_path / "out")},
        storage={"endpoint_url": s3_endpoint},
    )
    assert outcome.exit_code == ExitCode.SUCCESS and outcome.summary.shards > 2
    rows = sorted(read_rows(str(tmp_path / "out" / "data")), key=lambda row: row["id"])
    assert [(row["id"], row["price"], row["product_notes"]) for row in rows] == [
        (product_id, price, notes) for product_id, _, price, notes in products
    ]
    assert all(row["completion_tokens"] == 4 for row in rows)


def test_a_hugging_face_dataset_saved_to_disk_on_s3_runs_with_its_ids_and_kept_columns(run_tiny, tmp_path, s3_endpoint):
    """save_to_disk's folder as datasets writes it (two Arrow stream files, its metadata JSON and a
    cache file a `.map()` left there), uploaded to S3: each replica reads its rows through its node's
    Parquet copy; the metadata and the cache file are not rows."""
    import s3fs

    saved = Path(__file__).parent / "data" / "hf_dataset"
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).put(str(saved), "herd-test/hf/questions", recursive=True)
    outcome = run_tiny(
        input={
            "path": "s3://herd-test/hf/questions",
            "prompt_column": "question",
            "id_column": "id",
            "keep_columns": ["topic"],
            "rows_per_shard": 3,
        },
        sampling={"max_new_tokens": 4, "ignore_eos": True},
        output={"path": str(tmp_path / "out")},
        storage={"endpoint_url": s3_endpoint},
    )
    assert outcome.exit_code == ExitCode.SUCCESS and outcome.summary.shards == 4
    rows = sorted(read_rows(str(tmp_path / "out" / "data")), key=lambda row: int(row["id"][1:]))
    assert [(row["id"], row["topic"], row["completion_tokens"]) for row in rows] == [
        (f"q{index}", "math", 4) for index in range(10)
    ]


def test_same_seed_reproduces_completions_and_another_seed_does_not(run_tiny, tmp_path):
    _write_parquet(tmp_path / "in.parquet", 16, row_group_size=4)

    def completions(output: str, seed: int, rows_per_shard: int) -> dict[str, str]:
        run_tiny(
            input={"path": str(tmp_path / "in.parquet"), "prompt_column": "prompt", "rows_per_shard": rows_per_shard},
            sampling={"max_new_tokens": 10, "temperature": 1.0, "seed": seed},
            output={"path": str(tmp_path / output)},
        )
        return {row["id"]: row["completion"] for row in read_rows(str(tmp_path / output / "data"))}

    first = completions("a", seed=7, rows_per_shard=4)
    # A different shard size puts each row in a different batch, on either replica.
    assert completions("b", seed=7, rows_per_shard=16) == first
    other = completions("c", seed=8, rows_per_shard=4)
    assert other != first


def test_a_shard_large_enough_to_be_prefilled_in_chunks_generates_with_per_row_seeds(run_tiny, tmp_path):
    # 600 sampled, seeded prompts in one batch: more prompt tokens than one engine step takes. vLLM's
    # chunked prefill then rewinds seeded generators, which kills the CPU engine; herd turns it off.
    prompts = [" ".join(WORDS[(index + k) % len(WORDS)] for k in range(40)) for index in range(600)]
    pq.write_table(pa.table({"prompt": prompts}), tmp_path / "in.parquet")  # about 27,000 prompt tokens
    outcome = run_tiny(
        input={"path": str(tmp_path / "in.parquet"), "prompt_column": "prompt", "rows_per_shard": 600},
        sampling={"max_new_tokens": 4, "ignore_eos": True, "temperature": 0.8, "seed": 5},
        output={"path": str(tmp_path / "out")},
    )
    assert outcome.exit_code == ExitCode.SUCCESS
    assert (outcome.summary.shards, outcome.summary.rows_out, outcome.summary.error_rows) == (1, 600, 0)


# Characters that JSON leaves unescaped inside strings and str.splitlines() takes for line ends.
LINE_BREAKING_TEXT = "next\x85line\u2028separator\u2029paragraph"


def test_unicode_line_separators_in_rows_stay_inside_their_rows_in_data_errors_report_and_resume(run_tiny, tmp_path):
    rows = [{"id": f"row\u2028{index}", "prompt": f"say {index}", "note": LINE_BREAKING_TEXT} for index in range(12)]
    rows[5]["prompt"] = None  # an error row, whose id holds U+2028
    with open(tmp_path / "in.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)  # as DuckDB writes them
    job = {
        "input": {
            "path": str(tmp_path / "in.jsonl"),
            "prompt_column": "prompt",
            "id_column": "id",
            "keep_columns": ["note"],
        },
        "sampling": {"max_new_tokens": 4},
        "output": {"path": str(tmp_path / "out"), "format": "jsonl"},
        "max_error_fraction": 0.5,
    }
    outcome = run_tiny(**job)
    assert outcome.exit_code == ExitCode.SUCCESS and outcome.summary.error_rows == 1

    written = read_rows(str(tmp_path / "out" / "data"))
    assert sorted(row["id"] for row in written) == sorted(row["id"] for row in rows if row["prompt"])
    assert {row["note"] for row in written} == {LINE_BREAKING_TEXT}
    [error] = read_rows(str(tmp_path / "out" / "errors"))
    assert error["id"] == "row\u20285" and error["stage"] == "render"
    # The report reads the data and error files back (it failed on such a line before).
    assert "row\u20285" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    # A resume reads the manifest index: nothing runs again.
    again = run_tiny(**job)
    assert again.exit_code == ExitCode.SUCCESS and again.summary.shards_skipped == again.summary.shards


def test_a_jsonl_shard_without_a_line_start_leaves_no_file_and_broken_unicode_is_a_row_error(run_tiny, tmp_path):
    # Line 1 spans bytes 0-3040: the shards of bytes 1024-2048 and 2048-3072 hold no line start.
    lines = [json.dumps({"id": "long", "prompt": "a long line", "padding": "x" * 3000})]
    lines += [json.dumps({"id": f"short{index}", "prompt": f"say {index}"}) for index in range(5)]
    lines[3] = '{"id": "broken", "prompt": "half a pair \\ud83e here"}'  # valid JSON, not valid Unicode
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    outcome = run_tiny(
        input={
            "path": str(tmp_path / "in.jsonl"),
            "prompt_column": "prompt",
            "id_column": "id",
            "bytes_per_shard": 1024,
        },
        sampling={"max_new_tokens": 4},
        output={"path": str(tmp_path / "out"), "format": "jsonl"},
        max_error_fraction=0.5,
    )
    assert outcome.exit_code == ExitCode.SUCCESS
    assert outcome.summary.shards == 4 and outcome.summary.rows_in == 6 and outcome.summary.error_rows == 1
    # Every file written is one a reader takes (a zero-byte JSONL file is not), and every row is once.
    import pyarrow.json as pajson

    for folder in ("data", "errors"):
        for path in (tmp_path / "out" / folder).iterdir():
            assert pajson.read_json(path).num_rows > 0, path
    written = read_rows(str(tmp_path / "out" / "data"))
    assert sorted(row["id"] for row in written) == ["long", "short0", "short1", "short3", "short4"]
    [error] = read_rows(str(tmp_path / "out" / "errors"))
    assert error["stage"] == "read" and error["reason"].startswith(
        "prompt: the text is valid JSON but not valid Unicode"
    )
