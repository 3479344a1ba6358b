"""Planning from metadata, and reading shards back: every row exactly once, whatever the file's layout.

These run the planner and the shard reader directly (no engine): the files are the ones real tools
write (pandas' single huge row group, compressed JSONL, Hive folders, Spark's bookkeeping files).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from common.storage import Storage
from jobs.planner import plan_shards, select_inputs
from schemas import SpecError
from schemas.job import InputSpec, PromptSpec, RetrySpec, StorageSpec
from schemas.shard import TO_END_OF_FILE
from tests.cpu.flaky_s3_proxy import FlakyS3Proxy
from workers.shard_io import read_shard

STORAGE = Storage(StorageSpec(), RetrySpec())
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _own_spill_cache(tmp_path, monkeypatch):
    # Each test starts with an empty node cache: a copy left by another test would hide reads.
    monkeypatch.setenv("HERD_CACHE_DIR", str(tmp_path / "node-cache"))


def _plan(spec: InputSpec, storage: Storage = STORAGE, prompt: PromptSpec | None = None):
    return plan_shards(spec, select_inputs(spec, storage.expand_inputs(spec.path), storage).files, storage, prompt)


def _read_all(spec: InputSpec, shards, storage: Storage = STORAGE):
    rows, errors = [], []
    for shard in shards:
        read = read_shard(shard, spec, storage)
        rows += read.rows
        errors += read.errors
    return rows, errors


def _lines(count: int) -> list[str]:
    # Lines of very different lengths, some with multi-byte characters, one blank.
    return [json.dumps({"prompt": "ü😀x" * (index % 13) + str(index)}) if index != 7 else "" for index in range(count)]


@pytest.mark.parametrize("bytes_per_shard", [1024, 1500, 4096, 10**6])
def test_jsonl_byte_ranges_give_every_line_to_exactly_one_shard(tmp_path, bytes_per_shard):
    lines = _lines(400)
    (tmp_path / "in.jsonl").write_text("\n".join(lines))  # no newline after the last line
    spec = InputSpec(path=str(tmp_path / "in.jsonl"), prompt_column="prompt", bytes_per_shard=bytes_per_shard)
    rows, _ = _read_all(spec, _plan(spec))
    assert [row.values["prompt"] for row in rows] == [json.loads(line)["prompt"] for line in lines if line]


def test_jsonl_on_s3_without_a_final_newline_reads_every_line_in_several_shards(tmp_path, s3_endpoint):
    import s3fs

    lines = _lines(300)
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).pipe("herd-test/no-final-newline/in.jsonl", "\n".join(lines).encode())
    storage = Storage(StorageSpec(endpoint_url=s3_endpoint), RetrySpec(attempts=1))
    spec = InputSpec(path="s3://herd-test/no-final-newline/in.jsonl", prompt_column="prompt", bytes_per_shard=1024)
    shards = _plan(spec, storage)
    assert len(shards) > 3
    rows, errors = _read_all(spec, shards, storage)
    assert not errors
    assert [row.values["prompt"] for row in rows] == [json.loads(line)["prompt"] for line in lines if line]


def test_the_same_input_plans_the_same_shard_ids(tmp_path):
    (tmp_path / "in.jsonl").write_text("\n".join(_lines(300)))
    pd.DataFrame({"prompt": [f"p{index}" for index in range(3000)]}).to_parquet(tmp_path / "in.parquet")
    spec = InputSpec(path=str(tmp_path / "*"), prompt_column="prompt", bytes_per_shard=2048, rows_per_shard=100)
    first = [shard.shard_id for shard in _plan(spec)]
    again = [shard.shard_id for shard in _plan(spec)]
    assert first == again and len(set(first)) == len(first) > 30


def test_small_row_groups_are_joined_into_shards_of_at_most_rows_per_shard(tmp_path):
    pq.write_table(
        pa.table({"prompt": [f"p{index}" for index in range(100)]}), tmp_path / "a.parquet", row_group_size=10
    )
    spec = InputSpec(path=str(tmp_path), prompt_column="prompt", rows_per_shard=25)
    shards = _plan(spec)
    assert [(shard.start, shard.end, shard.row_groups) for shard in shards] == [
        (start, start + 20, (start // 10, start // 10 + 2)) for start in range(0, 100, 20)
    ]
    assert all(shard.whole_row_groups for shard in shards)
    rows, _ = _read_all(spec, shards)
    assert [row.row_id for row in rows] == [f"a.parquet:{index}" for index in range(100)]


def test_a_pandas_file_of_one_row_group_is_cut_into_row_ranges_with_the_ids_of_small_groups(tmp_path):
    frame = pd.DataFrame({"prompt": [f"question {index}" for index in range(3000)], "topic": ["t"] * 3000})
    (tmp_path / "one-group").mkdir()
    (tmp_path / "small-groups").mkdir()
    frame.to_parquet(tmp_path / "one-group" / "in.parquet")  # pandas: one row group of 3,000 rows
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "small-groups" / "in.parquet", row_group_size=100)
    assert pq.ParquetFile(tmp_path / "one-group" / "in.parquet").metadata.num_row_groups == 1

    ids = {}
    for layout in ("one-group", "small-groups"):
        spec = InputSpec(path=str(tmp_path / layout), prompt_column="prompt", rows_per_shard=256)
        shards = _plan(spec)
        assert len(shards) >= 12 and max(shard.end - shard.start for shard in shards) <= 256
        rows, errors = _read_all(spec, shards)
        assert not errors
        ids[layout] = [(row.row_id, row.values["prompt"]) for row in rows]
    assert ids["one-group"] == ids["small-groups"]
    assert [row_id for row_id, _ in ids["one-group"]] == [f"in.parquet:{index}" for index in range(3000)]


def test_parquet_shards_are_also_capped_by_the_bytes_of_the_columns_read(tmp_path):
    # 4 KB prompts: 64 KB a shard is 16 rows, although rows_per_shard allows 1,000. The unread
    # column is far larger and does not count.
    pd.DataFrame(
        {"prompt": [f"{index} " + "x" * 4096 for index in range(400)], "unread": ["y" * 20000] * 400}
    ).to_parquet(tmp_path / "in.parquet")
    spec = InputSpec(path=str(tmp_path / "in.parquet"), prompt_column="prompt", bytes_per_shard=64 * 1024)
    shards = _plan(spec)
    assert 15 <= max(shard.end - shard.start for shard in shards) <= 16
    assert all(shard.columns == ("prompt",) for shard in shards)


def test_reading_a_row_group_cut_into_16_shards_fetches_its_columns_about_once(tmp_path, s3_endpoint):
    import s3fs

    rows = 64_000
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    rng = random.Random(0)
    frame = pd.DataFrame(
        {
            "unread": [f"{index:08d}" * 40 for index in range(rows)],  # never needed: never fetched
            "prompt": [" ".join(rng.choice(words) for _ in range(20)) + str(index) for index in range(rows)],
        }
    )
    frame.to_parquet(tmp_path / "in.parquet")
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).put(str(tmp_path / "in.parquet"), "herd-test/one-group/in.parquet")
    metadata = pq.ParquetFile(tmp_path / "in.parquet").metadata
    assert metadata.num_row_groups == 1
    column_bytes = metadata.row_group(0).column(1).total_compressed_size
    with FlakyS3Proxy(s3_endpoint, failure_rate=0.0) as proxy:
        storage = Storage(StorageSpec(endpoint_url=proxy.endpoint), RetrySpec(attempts=1))
        spec = InputSpec(path="s3://herd-test/one-group/in.parquet", prompt_column="prompt", rows_per_shard=4000)
        shards = _plan(spec, storage)
        assert len(shards) == 16
        planned = proxy.bytes_read
        read, _ = _read_all(spec, shards, storage)
        fetched = proxy.bytes_read - planned
    assert [row.values["prompt"] for row in read] == frame["prompt"].tolist()
    assert fetched <= 1.5 * column_bytes, (fetched, column_bytes)


def test_reading_memory_does_not_grow_with_the_row_group_size(tmp_path):
    """Peak RSS of a process that plans and reads every shard of 200,000 rows (about 200 MB of
    prompts in memory), once as one row group and once as groups of 1,000 rows."""
    frame = pd.DataFrame({"prompt": [f"{index} " + "words and more words " * 50 for index in range(200_000)]})
    frame.to_parquet(tmp_path / "one-group.parquet")
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "small-groups.parquet", row_group_size=1000)
    del frame
    # VmHWM, not ru_maxrss: the latter keeps the parent's (pytest's) peak across fork and exec.
    script = (
        "import sys\n"
        "from common.storage import Storage\n"
        "from jobs.planner import plan_shards\n"
        "from schemas.job import InputSpec, RetrySpec, StorageSpec\n"
        "from workers.shard_io import read_shard\n"
        "def peak_kb():\n"
        "    status = open('/proc/self/status').read()\n"
        "    return int(status.split('VmHWM:')[1].split()[0])\n"
        "storage = Storage(StorageSpec(), RetrySpec())\n"
        "spec = InputSpec(path=sys.argv[1], prompt_column='prompt')\n"
        "base = peak_kb()\n"
        "shards = plan_shards(spec, storage.expand_inputs(spec.path), storage)\n"
        "rows = sum(len(read_shard(shard, spec, storage).rows) for shard in shards)\n"
        "assert rows == 200_000, rows\n"
        "print(peak_kb() - base)\n"
    )
    growth = {}
    for name in ("one-group", "small-groups"):
        result = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / f"{name}.parquet")],
            cwd=REPO,
            env={**os.environ, "HERD_CACHE_DIR": str(tmp_path / f"cache-{name}")},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        growth[name] = int(result.stdout.split()[-1]) / 1024  # MB
    # Holding the row group whole would add about 200 MB.
    assert growth["one-group"] < growth["small-groups"] + 60, growth


@pytest.mark.parametrize(
    ("suffix", "compress"),
    [(".jsonl.gz", gzip.compress), (".jsonl.bz2", bz2.compress), (".ndjson.zst", None), (".json.gz", gzip.compress)],
)
def test_compressed_jsonl_is_read_in_several_shards_with_the_ids_of_the_plain_file(tmp_path, suffix, compress):
    # A BOM before the first line and CRLF line ends, as Windows tools write them.
    lines = [json.dumps({"prompt": f"question {index} " + "é" * (index % 5)}) for index in range(3000)]
    text = ("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8")
    compressed = compress(text) if compress else pa.compress(text, codec="zstd", asbytes=True)
    (tmp_path / "packed").mkdir()
    (tmp_path / "plain").mkdir()
    (tmp_path / "packed" / f"in{suffix}").write_bytes(compressed)
    (tmp_path / "plain" / "in.jsonl").write_bytes(text)

    results = {}
    for folder in ("packed", "plain"):
        spec = InputSpec(path=str(tmp_path / folder), prompt_column="prompt", bytes_per_shard=8 * 1024)
        shards = _plan(spec)
        assert len(shards) > 2  # bz2 has no size field: its plan is a guess from the compressed size
        rows, errors = _read_all(spec, shards)
        assert not errors
        results[folder] = [(row.row_id.split(":")[1], row.values["prompt"]) for row in rows]
    assert results["packed"] == results["plain"]
    assert [prompt for _, prompt in results["packed"]] == [json.loads(line)["prompt"] for line in lines]


def _alpaca_records(count: int) -> list[dict]:
    # Alpaca's fields; text with line breaks, quotes and non-ASCII, an integer past 64 bits, a null.
    return [
        {
            "instruction": f'Rewrite sentence {index} "politely".\nKeep it short. — é😀',
            "input": "" if index % 3 else f"context {index}",
            "output": "Sure." * (index % 7),
            "votes": 2**70 + index,
            "source": None,
        }
        for index in range(count)
    ]


def test_a_json_array_file_is_read_as_its_items_in_several_shards_as_the_same_records_in_json_lines_are(tmp_path):
    """Alpaca's and ShareGPT's datasets are one JSON document holding a list: pretty-printed (as
    alpaca_data.json is), compact and compressed, each reads as the JSON Lines file of its records."""
    records = _alpaca_records(400)
    for name, content in {
        "pretty.json": json.dumps(records, indent=4, ensure_ascii=False).encode(),
        "bom-crlf.json": ("\ufeff" + json.dumps(records, indent=2).replace("\n", "\r\n")).encode(),
        "compact.json.gz": gzip.compress(json.dumps(records).encode()),
        "lines.jsonl": "".join(json.dumps(record) + "\n" for record in records).encode(),
    }.items():
        (tmp_path / name).write_bytes(content)
        spec = InputSpec(path=str(tmp_path / name), prompt_column="instruction", bytes_per_shard=8 * 1024)
        shards = _plan(spec)
        assert len(shards) > 3, name
        assert {shard.copied_from for shard in shards} == {"json-array" if name.endswith(".json") else None}, name
        rows, errors = _read_all(spec, shards)
        assert not errors, (name, errors[:1])
        assert [row.values for row in rows] == records, name


@pytest.mark.parametrize("name", ["broken.json", "broken.json.gz"])
def test_a_malformed_item_in_a_json_array_is_one_error_row_where_it_starts_after_every_item_before_it(tmp_path, name):
    good = _alpaca_records(50)
    text = json.dumps(good, indent=2)
    broken = text[: text.rindex("]")] + ',\n  {"instruction": "cut", oops},\n  {"instruction": "after"}\n]'
    (tmp_path / name).write_bytes(gzip.compress(broken.encode()) if name.endswith(".gz") else broken.encode())
    spec = InputSpec(path=str(tmp_path / name), prompt_column="instruction", bytes_per_shard=2048)
    rows, errors = _read_all(spec, _plan(spec))
    assert [row.values["instruction"] for row in rows] == [record["instruction"] for record in good]
    # The item that does not parse and everything after it (the array cannot be followed past it).
    [error] = errors
    assert error["reason"].startswith(
        "the JSON array is malformed from here on: JSONDecodeError: Expecting property name enclosed in double quotes"
    )
    assert error["id"] == f"{name}:{error['row']}" and error["stage"] == "read"


def test_csv_and_tsv_files_are_read_as_their_records_in_several_shards_with_every_field_as_text(tmp_path):
    """As pandas writes a CSV (an unnamed index column), as Excel saves one (a BOM, CRLF), as Excel
    saves one where the comma is the decimal mark (semicolons, `0,25`), with pipes, and a compressed
    TSV: fields with commas, quotes, line breaks and non-ASCII text, every value as text. The delimiter
    is the one the header shows."""
    frame = pd.DataFrame(
        {
            "id": range(300),
            "question": [f'Is "{index}", or\n{index + 1}, the answer? é😀\u2028' for index in range(300)],
            "score": [index / 4 for index in range(300)],
        }
    )
    expected = [{"id": str(row.id), "question": row.question, "score": str(row.score)} for row in frame.itertuples()]
    frame.to_csv(tmp_path / "pandas.csv")
    with open(tmp_path / "excel.csv", "w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(["id", "question", "score"])
        writer.writerows([record.values() for record in expected])
    (tmp_path / "tabs.tsv.gz").write_bytes(gzip.compress(frame.to_csv(sep="\t", index=False).encode()))
    with open(tmp_path / "europe.csv", "w", newline="", encoding="utf-8-sig") as handle:
        frame.to_csv(handle, sep=";", decimal=",", index=False, lineterminator="\r\n")
    frame.to_csv(tmp_path / "pipes.csv", sep="|", index=False)
    decimal_commas = [{**record, "score": record["score"].replace(".", ",")} for record in expected]
    for name, records in {
        "pandas.csv": [{"Unnamed: 0": record["id"], **record} for record in expected],
        "excel.csv": expected,
        "tabs.tsv.gz": expected,
        "europe.csv": decimal_commas,
        "pipes.csv": expected,
    }.items():
        spec = InputSpec(path=str(tmp_path / name), prompt_column="question", bytes_per_shard=4096)
        shards = _plan(spec)
        assert {shard.copied_from for shard in shards} == {name.split(".")[1]}, name
        assert [row["score"] for row in records[:2]] == (["0,0", "0,25"] if name == "europe.csv" else ["0.0", "0.25"])
        assert len(shards) > 3, name
        rows, errors = _read_all(spec, shards)
        assert not errors, (name, errors[:1])
        assert [row.values for row in rows] == records, name


def test_a_nodes_copy_of_a_file_is_not_reused_by_a_herd_that_copies_differently(tmp_path, monkeypatch):
    """The node's cache outlives an upgrade: a copy made by an earlier copier (a semicolon CSV read as
    one column of "id;question") must not be read by a herd whose copier finds the delimiter."""
    from workers import spill_cache

    monkeypatch.setenv("HERD_CACHE_DIR", str(tmp_path / "node-cache"))
    (tmp_path / "sheet.csv").write_text("id;question\n1;hello\n")
    [shard] = _plan(InputSpec(path=str(tmp_path / "sheet.csv"), prompt_column="question"))
    current = spill_cache.jsonl_copy(shard, STORAGE, "utf-8")
    assert current == spill_cache.jsonl_copy(shard, STORAGE, "utf-8")  # made once a node
    monkeypatch.setattr(spill_cache, "COPY_VERSION", spill_cache.COPY_VERSION - 1)
    assert spill_cache.jsonl_copy(shard, STORAGE, "utf-8") != current
    assert json.loads(current.read_text().splitlines()[0]) == {"id": "1", "question": "hello"}


def test_a_csv_record_that_cannot_be_read_is_one_error_row_and_the_records_around_it_are_read(tmp_path):
    (tmp_path / "odd.csv").write_bytes(
        b"question,topic,topic\n"  # a repeated name is kept as pandas keeps it: topic, topic.1
        b"first,a,b\n"
        b"\n"  # a blank line is no record
        b"one field too many,a,b,c\n"
        b"caf\xe9 in Latin-1,a,b\n"
        b'"a quoted\nquestion",a,b\n'
        b"last,a,b"  # no line end at the end of the file
    )
    spec = InputSpec(path=str(tmp_path / "odd.csv"), prompt_column="question")
    rows, errors = _read_all(spec, _plan(spec))
    assert [row.values for row in rows] == [
        {"question": question, "topic": "a", "topic.1": "b"} for question in ("first", "a quoted\nquestion", "last")
    ]
    assert [error["reason"] for error in errors] == [
        "the CSV record ending on line 4 has 4 fields; the header names 3",
        "the CSV record ending on line 5 is not UTF-8 text: save the file as UTF-8",
    ]
    assert all(error["id"] == f"odd.csv:{error['row']}" for error in errors)


def test_text_files_in_another_encoding_are_read_as_the_text_they_hold(tmp_path):
    """A CSV that Excel saved on Windows (cp1252), its Unicode Text (UTF-16 with tabs), and JSON Lines
    and a JSON array in Latin-1, with input.encoding."""
    records = [{"id": str(index), "question": f"Café n° {index}: naïve, façade, {index}€"} for index in range(200)]
    euro_free = [{**record, "question": record["question"].replace("€", "$")} for record in records]
    header = "id,question\r\n"
    sheet = header + "".join(f'{record["id"]},"{record["question"]}"\r\n' for record in records)
    (tmp_path / "excel.csv").write_bytes(sheet.encode("cp1252"))
    tabs = "id\tquestion\r\n" + "".join(f"{record['id']}\t{record['question']}\r\n" for record in records)
    (tmp_path / "unicode.txt").write_bytes(tabs.encode("utf-16"))
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in euro_free)
    (tmp_path / "latin.jsonl").write_bytes(lines.encode("latin-1"))
    (tmp_path / "latin.json").write_bytes(json.dumps(euro_free, ensure_ascii=False, indent=1).encode("latin-1"))
    for name, options, expected in [
        ("excel.csv", {"encoding": "cp1252"}, records),
        ("unicode.txt", {"encoding": "utf-16", "format": "tsv"}, records),
        ("latin.jsonl", {"encoding": "latin-1"}, euro_free),
        ("latin.json", {"encoding": "iso-8859-1"}, euro_free),
    ]:
        spec = InputSpec(path=str(tmp_path / name), prompt_column="question", bytes_per_shard=2048, **options)
        shards = _plan(spec)
        assert len(shards) > 2, name
        rows, errors = _read_all(spec, shards)
        assert not errors, (name, errors[:1])
        assert [row.values for row in rows] == expected, name
    # The same Excel file read as UTF-8: each accented record is an error that says what to do.
    spec = InputSpec(path=str(tmp_path / "excel.csv"), prompt_column="question")
    rows, errors = _read_all(spec, _plan(spec))
    assert not rows and len(errors) == 200
    assert errors[0]["reason"] == "the CSV record ending on line 2 is not UTF-8 text: save the file as UTF-8"


def test_a_compressed_file_larger_than_planned_is_read_to_its_end(tmp_path):
    # bz2 has no size field: the plan guesses, and the last shard runs to the end of the file.
    lines = [json.dumps({"prompt": "same words " * 20 + str(index)}) for index in range(5000)]
    (tmp_path / "in.jsonl.bz2").write_bytes(bz2.compress("\n".join(lines).encode()))
    spec = InputSpec(path=str(tmp_path / "in.jsonl.bz2"), prompt_column="prompt", bytes_per_shard=4096)
    shards = _plan(spec)
    assert shards[-1].end == TO_END_OF_FILE
    rows, _ = _read_all(spec, shards)
    assert [row.values["prompt"] for row in rows] == [json.loads(line)["prompt"] for line in lines]


def test_hive_partition_folders_become_columns_rows_can_keep_and_templates_use(tmp_path):
    for date in ("2026-11-24", "2026-11-25"):
        for lang in ("en", "fr"):
            folder = tmp_path / "prompts" / f"date={date}" / f"lang={lang}"
            folder.mkdir(parents=True)
            pd.DataFrame({"topic": [f"{date}-{lang}-{index}" for index in range(3)]}).to_parquet(
                folder / "part-0.parquet"
            )
    spec = InputSpec(path=str(tmp_path / "prompts"), keep_columns=["date", "lang"], rows_per_shard=2)
    prompt = PromptSpec(template="In {{ lang }} on {{ date }}: {{ topic }}")
    shards = _plan(spec, prompt=prompt)
    rows, errors = _read_all(spec, shards)
    assert not errors and len(rows) == 12
    assert {(row.values["date"], row.values["lang"]) for row in rows} == {
        (date, lang) for date in ("2026-11-24", "2026-11-25") for lang in ("en", "fr")
    }
    assert all(row.values["topic"].startswith(f"{row.values['date']}-{row.values['lang']}") for row in rows)
    assert rows[0].row_id == "date=2026-11-24/lang=en/part-0.parquet:0"


def test_a_folder_written_by_spark_reads_its_parts_and_reports_the_other_files(tmp_path):
    folder = tmp_path / "spark-output"
    folder.mkdir()
    pd.DataFrame({"prompt": ["a", "b"]}).to_parquet(folder / "part-00000-abc.snappy.parquet")
    pd.DataFrame({"prompt": []}, dtype=str).to_parquet(folder / "part-00001-abc.snappy.parquet")  # an empty part
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-00000-abc.snappy.parquet.crc").write_bytes(b"crc")
    (folder / "README.txt").write_text("what this is")
    spec = InputSpec(path=str(folder), prompt_column="prompt")
    inputs = select_inputs(spec, STORAGE.expand_inputs(spec.path), STORAGE)
    assert [Path(info.url).name for info in inputs.files] == [
        "part-00000-abc.snappy.parquet",
        "part-00001-abc.snappy.parquet",
    ]
    assert sorted(label for label, _ in inputs.ignored) == [
        ".part-00000-abc.snappy.parquet.crc",
        "README.txt",
        "_SUCCESS",
    ]
    rows, _ = _read_all(spec, plan_shards(spec, inputs.files, STORAGE))
    assert [row.values["prompt"] for row in rows] == ["a", "b"]


@pytest.mark.parametrize(
    ("table", "log_file", "named"),
    [
        ("a Delta Lake table", "_delta_log/00000000000000000001.json", "_delta_log/"),
        ("an Apache Iceberg table", "metadata/v2.metadata.json", "metadata/"),
        ("an Apache Hudi table", ".hoodie/20261201.commit", ".hoodie/"),
    ],
)
def test_a_lakehouse_tables_folder_is_refused_and_a_glob_of_its_data_files_is_read(tmp_path, table, log_file, named):
    """A table's folder holds the files of its earlier versions and failed writes beside the current
    ones, until they are vacuumed: read as a folder, a rewritten row would be read twice. A glob of
    the data files is a choice the user makes, and is read (its log's own Parquet passed over)."""
    folder = tmp_path / "orders"
    (folder / "day=1").mkdir(parents=True)
    pd.DataFrame({"prompt": ["a", "b"]}).to_parquet(folder / "part-0.parquet")
    pd.DataFrame({"prompt": ["c"]}).to_parquet(folder / "day=1" / "part-1.parquet")
    (folder / log_file).parent.mkdir(parents=True, exist_ok=True)
    (folder / log_file).write_text("{}")
    if log_file.startswith("_delta_log"):  # Delta's checkpoints are Parquet: a glob matches them too
        pd.DataFrame({"add": ["x"]}).to_parquet(folder / "_delta_log" / "00000000000000000010.checkpoint.parquet")
    spec = InputSpec(path=str(folder), prompt_column="prompt")
    with pytest.raises(SpecError) as refused:
        select_inputs(spec, STORAGE.expand_inputs(spec.path), STORAGE)
    assert str(refused.value).startswith(f"input.path: {folder} is {table} (its log: {named}); ")
    assert f"a glob of its data files ({folder}/**/*.parquet)" in str(refused.value)

    globbed = InputSpec(path=f"{folder}/**/*.parquet", prompt_column="prompt")
    inputs = select_inputs(globbed, STORAGE.expand_inputs(globbed.path), STORAGE)
    rows, _ = _read_all(globbed, plan_shards(globbed, inputs.files, STORAGE))
    assert sorted(row.values["prompt"] for row in rows) == ["a", "b", "c"]


SAVED_DATASETS = Path(__file__).parent / "data"  # written by datasets' save_to_disk: see make_hf_datasets.py


def test_a_hugging_face_dataset_saved_to_disk_is_read_as_its_state_json_names_it():
    """Its Arrow files as state.json names them, in that order, with their types (a conversation stays
    a list of messages); never its metadata JSON (which would be read as prompts) nor the cache file
    a `.map()` over the loaded dataset left among its files (rows it never held)."""
    folder = SAVED_DATASETS / "hf_dataset"
    spec = InputSpec(
        path=str(folder), messages_column="messages", id_column="id", keep_columns=["topic"], rows_per_shard=3
    )
    inputs = select_inputs(spec, STORAGE.expand_inputs(spec.path), STORAGE)
    assert [Path(info.url).name for info in inputs.files] == ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]
    assert dict(inputs.ignored) == {
        "cache-eb3d92de180e00a7.arrow": "not one of the data files its state.json names "
        "(a datasets cache file, or an earlier save's)",
        "dataset_info.json": "the metadata of a Hugging Face dataset saved with save_to_disk",
        "state.json": "the metadata of a Hugging Face dataset saved with save_to_disk",
    }
    shards = plan_shards(spec, inputs.files, STORAGE)
    assert [(Path(shard.file_url).name[:10], shard.start, shard.end) for shard in shards] == [
        ("data-00000", 0, 2), ("data-00000", 2, 5), ("data-00001", 0, 2), ("data-00001", 2, 5)
    ]  # fmt: skip
    rows, errors = _read_all(spec, shards)
    assert not errors
    assert [(row.row_id, row.values["messages"], row.values["topic"]) for row in rows] == [
        (f"q{index}", [{"role": "user", "content": f"What is {index} plus {index + 1}?"}], "math")
        for index in range(10)
    ]


def test_a_dataset_dict_folder_is_refused_naming_its_splits_and_a_split_folder_is_read(tmp_path):
    folder = SAVED_DATASETS / "hf_dataset_dict"
    spec = InputSpec(path=str(folder), prompt_column="question")
    with pytest.raises(SpecError) as refused:
        select_inputs(spec, STORAGE.expand_inputs(spec.path), STORAGE)
    assert str(refused.value) == (
        f"input.path: {folder} is a Hugging Face DatasetDict saved with save_to_disk (splits: test, train): "
        f"name one split's folder (input.path: {folder}/test)"
    )
    above = tmp_path / "datasets"
    shutil.copytree(folder, above / "questions")
    spec = InputSpec(path=str(above), prompt_column="question")
    with pytest.raises(
        SpecError, match=rf"^input.path: {above}/questions is a Hugging Face DatasetDict .*\(splits: test, train\)"
    ):
        select_inputs(spec, STORAGE.expand_inputs(spec.path), STORAGE)
    split = InputSpec(path=str(folder / "train"), prompt_column="question", id_column="id")
    rows, errors = _read_all(split, _plan(split))
    assert not errors and [row.row_id for row in rows] == [f"q{index}" for index in range(8)]


def test_a_state_json_naming_a_missing_arrow_file_is_refused(tmp_path):
    folder = tmp_path / "partial"
    shutil.copytree(SAVED_DATASETS / "hf_dataset", folder)
    (folder / "data-00001-of-00002.arrow").unlink()
    spec = InputSpec(path=str(folder), prompt_column="question")
    with pytest.raises(SpecError, match=r"^state\.json names data-00001-of-00002\.arrow, which is not there: "):
        select_inputs(spec, STORAGE.expand_inputs(spec.path), STORAGE)


def _write_ipc(path: Path, table: pa.Table, layout: str, **options) -> None:
    with pa.OSFile(str(path), "wb") as sink:
        new = pa.ipc.new_file if layout == "file" else pa.ipc.new_stream
        with new(sink, table.schema) as writer:
            writer.write_table(table, **options)


def test_arrow_ipc_files_as_feather_polars_and_pyarrow_write_them_are_read_in_row_ranges_with_their_types(
    tmp_path,
):
    """Both of Arrow's layouts (a footer-indexed file: Feather v2, compressed, and Polars' write_ipc;
    a stream: Polars' write_ipc_stream, and batches of one row each), cut into row ranges that give
    every row to one shard, whatever the writer's batches; numbers and lists keep their types."""
    import polars as pl

    folder = tmp_path / "in"
    folder.mkdir()
    count = 250
    frame = pd.DataFrame(
        {
            "prompt": [f"question {index}" for index in range(count)],
            "number": list(range(count)),
            "tags": [["a", str(index)] for index in range(count)],
            "unused": ["x" * 100] * count,
        }
    )
    frame.to_feather(folder / "pandas.feather")  # Feather v2, lz4-compressed buffers
    pl.from_pandas(frame).write_ipc(folder / "polars.arrow")
    pl.from_pandas(frame).write_ipc_stream(folder / "polars-stream.ipc")
    _write_ipc(folder / "one-row-batches.arrow", pa.Table.from_pandas(frame, preserve_index=False), "stream",
               max_chunksize=1)  # fmt: skip
    spec = InputSpec(path=str(folder), prompt_column="prompt", keep_columns=["number", "tags"], rows_per_shard=40)
    shards = _plan(spec)
    for name in ("one-row-batches.arrow", "pandas.feather", "polars-stream.ipc", "polars.arrow"):
        own = [shard for shard in shards if shard.file_label == name]
        assert [(shard.start, shard.end) for shard in own] == [
            (count * index // 7, count * (index + 1) // 7) for index in range(7)
        ], name
        assert all(shard.columns == ("prompt", "number", "tags") for shard in own)
        rows, errors = _read_all(spec, own)
        assert not errors
        assert [(row.row_id, row.values) for row in rows] == [
            (f"{name}:{index}", {"prompt": f"question {index}", "number": index, "tags": ["a", str(index)]})
            for index in range(count)
        ], name


def test_an_arrow_file_bigger_than_bytes_per_shard_is_cut_by_its_bytes_too(tmp_path):
    table = pa.table({"prompt": ["w" * 1000] * 100})
    _write_ipc(tmp_path / "long.arrow", table, "file")
    # 1,004 bytes a row: its 1,000 characters and their offset.
    spec = InputSpec(path=str(tmp_path / "long.arrow"), prompt_column="prompt", bytes_per_shard=10_040)
    assert [shard.end - shard.start for shard in _plan(spec)] == [10] * 10


def test_an_arrow_file_without_the_jobs_column_or_not_arrow_at_all_is_a_named_error(tmp_path):
    _write_ipc(tmp_path / "a.arrow", pa.table({"text": ["hi"]}), "stream")
    (tmp_path / "b.feather").write_bytes(b"PAR1 this is not Arrow")
    spec = InputSpec(path=str(tmp_path), prompt_column="prompt")
    with pytest.raises(SpecError) as refused:
        _plan(spec)
    assert str(refused.value).splitlines()[1:] == [
        "  a.arrow: column(s) ['prompt'] named in the job are not in the file; it has ['text']",
        f"  b.feather: not a readable Arrow IPC file ({_arrow_error(tmp_path / 'b.feather')})",
    ]


def _arrow_error(path: Path) -> str:
    try:
        pa.ipc.open_stream(pa.OSFile(str(path)))
    except pa.ArrowInvalid as error:
        return str(error)
    raise AssertionError(f"{path} reads as Arrow")


def test_an_arrow_file_on_s3_is_planned_and_read_through_the_nodes_parquet_copy_in_a_few_requests(
    tmp_path, s3_endpoint
):
    """Both layouts, in batches of 4 rows: read in blocks of the file, not a request for each batch's
    metadata and buffers as pyarrow asks for them (551 requests to plan these two files, against 9)."""
    import s3fs

    table = pa.table({"prompt": [f"p{index}" for index in range(300)], "extra": list(range(300))})
    _write_ipc(tmp_path / "file.arrow", table, "file", max_chunksize=4)
    _write_ipc(tmp_path / "stream.arrow", table, "stream", max_chunksize=4)
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.put(str(tmp_path / "file.arrow"), "herd-test/arrow/file.arrow")
    fs.put(str(tmp_path / "stream.arrow"), "herd-test/arrow/stream.arrow")
    with FlakyS3Proxy(s3_endpoint, 0.0) as proxy:
        storage = Storage(StorageSpec(endpoint_url=proxy.endpoint), RetrySpec(attempts=1))
        spec = InputSpec(path="s3://herd-test/arrow/", prompt_column="prompt", rows_per_shard=100)
        shards = _plan(spec, storage)
        planning_requests = proxy.requests
        rows, errors = _read_all(spec, shards, storage)
        reading_requests = proxy.requests - planning_requests
    assert [(shard.file_label, shard.start, shard.end) for shard in shards] == [
        (name, start, start + 100) for name in ("file.arrow", "stream.arrow") for start in (0, 100, 200)
    ]
    assert not errors
    assert [row.values["prompt"] for row in rows] == [f"p{index}" for index in range(300)] * 2
    # The listing, then per file its schema and its blocks (one here) and the version checks.
    assert planning_requests <= 12, proxy.log
    assert reading_requests <= 20, proxy.log


@pytest.mark.parametrize("layout", ["feather", "feather-zstd", "stream"])
def test_an_arrow_file_of_large_batches_on_s3_is_planned_from_their_metadata_without_reading_its_rows(
    tmp_path, s3_endpoint, layout
):
    """Each batch's metadata holds its row count (found through a file layout's footer, or stepping
    over a stream's bodies): the planner reads those and one batch (for the bytes a row of the
    columns read holds, by which bytes_per_shard cuts), a fraction of the file, and plans the shards
    a read of every row would. The stream has a dictionary-encoded column, whose dictionary is a
    message of its own between the batches."""
    import s3fs

    rng = random.Random(5)
    words = [f"w{index}" for index in range(5000)]
    rows = 64_000
    prompts = [" ".join(rng.choice(words) for _ in range(80)) for _ in range(rows)]
    topics = pa.array([f"topic {index % 7}" for index in range(rows)]).dictionary_encode()
    table = pa.table({"id": [f"r{index}" for index in range(rows)], "prompt": prompts, "topic": topics})
    path = tmp_path / "big.arrow"
    if layout == "stream":
        _write_ipc(path, table, "stream", max_chunksize=8_000)
    else:
        compression = "zstd" if layout == "feather-zstd" else "uncompressed"
        feather.write_feather(table, str(path), compression=compression, chunksize=8_000)
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.put(str(path), f"herd-test/arrow-{layout}/big.arrow")
    held = table.select(["prompt"]).nbytes  # what a read of every row measures
    spec = InputSpec(path=f"s3://herd-test/arrow-{layout}/", prompt_column="prompt",
                     bytes_per_shard=int(held / 6.5), rows_per_shard=1_000_000)  # fmt: skip
    with FlakyS3Proxy(s3_endpoint, 0.0) as proxy:
        storage = Storage(StorageSpec(endpoint_url=proxy.endpoint), RetrySpec(attempts=1))
        shards = _plan(spec, storage)
    assert [(shard.start, shard.end) for shard in shards] == [(rows * i // 7, rows * (i + 1) // 7) for i in range(7)]
    assert proxy.bytes_read < path.stat().st_size / 3, (proxy.bytes_read, path.stat().st_size)


def test_an_arrow_stream_of_large_batches_cut_short_is_refused_naming_the_file(tmp_path):
    """Its batches' metadata would count rows the file no longer holds: the planner sees the last
    body run past the file's end."""
    table = pa.table({"prompt": ["word " * 300] * 4_000})  # batches of 1,000 rows, 1.5 MB each
    _write_ipc(tmp_path / "whole.arrow", table, "stream", max_chunksize=1_000)
    data = (tmp_path / "whole.arrow").read_bytes()
    (tmp_path / "cut.arrow").write_bytes(data[: len(data) * 2 // 3])
    spec = InputSpec(path=str(tmp_path / "cut.arrow"), prompt_column="prompt")
    with pytest.raises(SpecError, match=r"cut\.arrow: not a readable Arrow IPC file \(the file ends inside"):
        _plan(spec)


def test_a_glob_of_folders_reads_the_files_inside_them(tmp_path):
    for day in ("2026-11-24", "2026-11-25"):
        (tmp_path / day).mkdir()
        (tmp_path / day / "prompts.jsonl.gz").write_bytes(gzip.compress(json.dumps({"prompt": day}).encode() + b"\n"))
    spec = InputSpec(path=str(tmp_path / "*/"), prompt_column="prompt")
    rows, _ = _read_all(spec, _plan(spec))
    assert [row.values["prompt"] for row in rows] == ["2026-11-24", "2026-11-25"]


def test_a_missing_parquet_column_is_refused_before_any_generation(tmp_path):
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "a.parquet")
    spec = InputSpec(path=str(tmp_path / "a.parquet"), prompt_column="prompt")
    with pytest.raises(SpecError, match=r"a.parquet: column\(s\) \['prompt'\] named in the job are not in the file"):
        _plan(spec)


def test_a_truncated_parquet_file_is_refused_naming_the_file(tmp_path):
    pq.write_table(pa.table({"prompt": ["a"] * 100}), tmp_path / "a.parquet")
    data = (tmp_path / "a.parquet").read_bytes()
    (tmp_path / "a.parquet").write_bytes(data[: len(data) // 2])
    spec = InputSpec(path=str(tmp_path / "a.parquet"), prompt_column="prompt")
    with pytest.raises(SpecError, match=r"a\.parquet: not a readable Parquet file"):
        _plan(spec)


def _parquet_files_on_s3(tmp_path: Path, s3_endpoint: str, folder: str, files: int) -> Path:
    """`files` small Parquet files, and wide.parquet whose footer is longer than the 64 kB a first
    read takes (300 columns in 12 row groups), on disk and the same under s3://herd-test/<folder>/."""
    import s3fs

    local = tmp_path / folder
    local.mkdir()
    for index in range(files):
        rows = [f"file {index} row {row}" for row in range(40)]
        pq.write_table(pa.table({"prompt": rows}), local / f"{index:03d}.parquet")
    columns = {f"c{column}": list(range(120)) for column in range(300)}
    pq.write_table(
        pa.table({"prompt": [f"wide {row}" for row in range(120)], **columns}),
        local / "wide.parquet",
        row_group_size=10,
    )
    assert pq.ParquetFile(local / "wide.parquet").metadata.serialized_size > 64 * 1024
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).put(f"{local}/", f"herd-test/{folder}/", recursive=True)
    return local


def _planned(folder: str, storage: Storage, **options: object) -> list[tuple]:
    shards = _plan(InputSpec(path=folder, prompt_column="prompt", **options), storage)
    # Not the shard ids: they hold the file's version, an mtime on disk and an ETag on S3.
    return [(shard.file_label, shard.start, shard.end, shard.row_groups, shard.columns) for shard in shards]


def test_parquet_footers_on_s3_cost_one_ranged_get_each_and_a_footer_over_64_kb_a_second(tmp_path, s3_endpoint):
    local = _parquet_files_on_s3(tmp_path, s3_endpoint, "footers", 20)
    expected = _planned(str(local), STORAGE, rows_per_shard=25)
    assert len(expected) == 20 * 2 + 6  # 40-row files in two; the 120 wide rows in groups of 10, two a shard
    with FlakyS3Proxy(s3_endpoint, failure_rate=0.0) as proxy:
        storage = Storage(StorageSpec(endpoint_url=proxy.endpoint), RetrySpec(attempts=1))
        assert _planned("s3://herd-test/footers/", storage, rows_per_shard=25) == expected
    gets = Counter(
        path.split("?")[0].rsplit("/", 1)[-1] for method, path in proxy.log if method == "GET" and ".parquet" in path
    )
    assert gets == {**{f"{index:03d}.parquet": 1 for index in range(20)}, "wide.parquet": 2}
    # The listing's sizes are used: no file is asked its size (the one HEAD asks whether the input is a file).
    assert [path for method, path in proxy.log if method == "HEAD" and ".parquet" in path] == []


def test_parquet_footers_on_throttling_s3_are_retried_until_every_file_is_planned(tmp_path, s3_endpoint):
    local = _parquet_files_on_s3(tmp_path, s3_endpoint, "footers-throttled", 60)
    expected = _planned(str(local), STORAGE)
    retry = RetrySpec(attempts=20, backoff_base_s=0.01, backoff_cap_s=0.05)
    with FlakyS3Proxy(s3_endpoint, failure_rate=0.3, seed=7) as proxy:
        storage = Storage(StorageSpec(endpoint_url=proxy.endpoint), retry)
        assert _planned("s3://herd-test/footers-throttled/", storage) == expected
    assert proxy.failed > 10


def test_a_large_input_on_s3_is_planned_by_several_processes_into_the_same_shards_and_the_same_first_error(
    tmp_path, s3_endpoint, monkeypatch, caplog
):
    import s3fs

    from jobs import planner

    _parquet_files_on_s3(tmp_path, s3_endpoint, "footers-processes", 40)
    storage = Storage(StorageSpec(endpoint_url=s3_endpoint), RetrySpec())
    one_process = _planned("s3://herd-test/footers-processes/", storage)
    monkeypatch.setattr(planner, "_FILES_A_PROCESS", 10)  # 5,000 in earnest
    monkeypatch.setattr(planner.os, "cpu_count", lambda: 3)
    with caplog.at_level("INFO", logger="jobs.planner"):
        assert _planned("s3://herd-test/footers-processes/", storage) == one_process
    assert "planning 41 files in 3 processes" in caplog.text
    # Two files that are not Parquet, in the second and third processes' slices: one error names
    # both, in file order.
    filesystem = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    filesystem.pipe("herd-test/footers-processes/033.parquet", b"not parquet at all")
    filesystem.pipe("herd-test/footers-processes/020.parquet", b"PAR1 but nothing else")
    with pytest.raises(SpecError) as refused:
        _planned("s3://herd-test/footers-processes/", storage)
    named = [line.strip().split(":")[0] for line in str(refused.value).splitlines()[1:]]
    assert str(refused.value).startswith("2 input files cannot be planned:"), refused.value
    assert named == ["020.parquet", "033.parquet"], refused.value


# A user's script as scripts and Airflow files often are: herd called at top level, no main guard.
_UNGUARDED_SCRIPT = """
import json, logging, os, sys
from pathlib import Path
from common.storage import Storage
from jobs import planner
from schemas.job import InputSpec, RetrySpec, StorageSpec

with open(Path(sys.argv[2]) / "ran.txt", "a") as ran:
    ran.write("ran\\n")
logging.basicConfig(level=logging.INFO)
planner._FILES_A_PROCESS = 10
planner.os.cpu_count = lambda: 2
storage = Storage(StorageSpec(endpoint_url=sys.argv[1]), RetrySpec())
spec = InputSpec(path="s3://herd-test/unguarded/", prompt_column="prompt")
shards = planner.plan_shards(spec, storage.expand_inputs(spec.path), storage)
print("SHARDS " + json.dumps([[shard.file_label, shard.start, shard.end] for shard in shards]))
"""


def test_planning_processes_never_run_a_callers_script_without_a_main_guard_again(tmp_path, s3_endpoint):
    _parquet_files_on_s3(tmp_path, s3_endpoint, "unguarded", 24)
    storage = Storage(StorageSpec(endpoint_url=s3_endpoint), RetrySpec())
    expected = [[label, start, end] for label, start, end, *_ in _planned("s3://herd-test/unguarded/", storage)]
    (tmp_path / "pipeline.py").write_text(_UNGUARDED_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(tmp_path / "pipeline.py"), s3_endpoint, str(tmp_path)],
        cwd=tmp_path,  # herd from PYTHONPATH, as an installed package: the planning processes find it too
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "planning 25 files in 2 processes" in result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("SHARDS ")]
    assert json.loads(line.removeprefix("SHARDS ")) == expected
    assert (tmp_path / "ran.txt").read_text() == "ran\n"  # the script ran once, not once more per process


def test_a_planning_process_that_dies_is_an_error_with_its_exit_code_and_last_words(tmp_path, monkeypatch):
    from jobs import planning_processes

    dying = tmp_path / "python"
    dying.write_text("#!/bin/sh\necho 'MemoryError: killed while planning' >&2\nexit 3\n")
    dying.chmod(0o755)
    monkeypatch.setattr(planning_processes.sys, "executable", str(dying))
    spec = InputSpec(path=str(tmp_path / "in.jsonl"), prompt_column="prompt")
    with pytest.raises(RuntimeError, match=r"exit code 3: MemoryError: killed while planning"):
        planning_processes.plan_in_processes(spec, [[], []], STORAGE, None)
