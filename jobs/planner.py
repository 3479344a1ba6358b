"""Plans shards from file metadata only: Parquet footers, JSONL sizes, compressed files' headers.

No row is read here, so planning a large input costs one footer read per Parquet file. The plan is
deterministic: the same files and settings give the same shards with the same ids.

- Parquet: row ranges of at most `rows_per_shard` rows (and `bytes_per_shard` bytes of the columns
  read), whatever the writer's row groups: small groups are joined, a large one is cut into equal
  slices (read through the node's spill cache, see workers/spill_cache.py).
- JSONL: byte ranges; a line belongs to the range its first byte is in.
- Compressed JSONL: byte ranges of the decompressed stream, whose size is read from the gzip or zstd
  header where it is written there, else estimated; the last range reaches to the end of the file.
- A `.json` file that is one JSON array (its first bytes tell), and a CSV or TSV: byte ranges of the
  JSON Lines copy each node makes of it (workers/json_lines_copy.py), whose size is estimated (an
  array's at the file's size, a CSV's from its first records copied); the last range reaches to the end.
- Arrow IPC: equal row ranges, read through the Parquet copy each node makes of the columns read
  (workers/spill_cache.py). Planning reads the row counts in the batches' metadata and one batch
  where batches are large, and small batches once through (common/arrow_ipc.py).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import posixpath
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from common import arrow_ipc
from common.retry import is_transient, storage_problem
from common.storage import FileInfo, Storage, absolute
from jobs.planning_processes import plan_in_processes
from schemas.errors import SpecError, UnplannableFiles
from schemas.input_files import (
    INPUT_NAMES,
    FileFormat,
    compression_of,
    format_from_name,
    hive_partition,
    is_hidden,
    may_hold_json_array,
    opens_json_array,
)
from schemas.job import DEMO_MODEL, InputSpec, JobSpec, PromptSpec
from schemas.shard import TO_END_OF_FILE, Shard
from workers.json_lines_copy import copy_as_json_lines

if TYPE_CHECKING:
    import pyarrow.parquet as pq

log = logging.getLogger(__name__)

# Without a size in its header, a compressed file is assumed to hold this many times its bytes.
_ASSUMED_COMPRESSION_RATIO = 4
# A compressed CSV's records as JSON Lines, per byte of CSV, where its first records cannot be read cheaply.
_ASSUMED_JSON_LINES_PER_CSV_BYTE = 2
_CSV_SAMPLE_BYTES = 64 * 1024
# Planning ranks JSONL shards by their bytes over a typical line's length.
_TYPICAL_LINE_BYTES = 200
# Files planned a batch at a time: their footers are read at once, and only one batch's are held.
_FILES_A_BATCH = 1000
# A planning process of its own for every this many files on S3 (one starts in 1-2 s: its imports),
# up to one a core and at most this many.
_FILES_A_PROCESS = 5000
_MOST_PLANNING_PROCESSES = 8


@dataclass
class InputFiles:
    files: list[FileInfo]
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (file label, why it is not read)


def input_root(pattern: str) -> str:
    """The part of the input path before any wildcard: file labels in row ids are relative to it."""
    parts = pattern.rstrip("/").split("/")
    for index, part in enumerate(parts):
        if any(char in part for char in "*?["):
            return "/".join(parts[:index])
    return "/".join(parts)


def file_label(url: str, root: str) -> str:
    if url == root or not url.startswith(root.rstrip("/") + "/"):
        return posixpath.basename(url)
    return url[len(root.rstrip("/")) + 1 :]


def select_inputs(
    input_spec: InputSpec, listed: list[FileInfo], storage: Storage, output_path: str | None = None
) -> InputFiles:
    """The listed files herd reads, and every other one with the reason, so that none is skipped
    without a word. A file named on its own must be readable; in a folder or a glob, bookkeeping
    files (_SUCCESS, .crc), files of other types and the job's own output (an output folder inside
    the input folder) are passed over and reported, and so are the files of a Hugging Face dataset's
    folder that its state.json does not name."""
    root = input_root(input_spec.path)
    output = absolute(output_path).rstrip("/") + "/" if output_path is not None else None
    if output is not None and (absolute(root).rstrip("/") + "/").startswith(output):
        raise SpecError(f"output.path: {output_path} holds the input ({input_spec.path}); write the output elsewhere")
    if len(listed) == 1 and listed[0].url.rstrip("/") == input_spec.path.rstrip("/"):
        input_spec.format_of(listed[0].url)  # raises a SpecError naming the file when it cannot be read
        return InputFiles(listed)
    labels = [file_label(info.url, root) for info in listed]
    if root == input_spec.path.rstrip("/"):  # a folder (a glob names the files it wants)
        _refuse_table_folder(input_spec.path, labels)
    saved = _saved_datasets(input_spec.path, listed, labels, storage)
    selected, own_output = InputFiles([]), 0
    for info, label in zip(listed, labels, strict=True):
        folder, _, name = label.rpartition("/")
        if output is not None and absolute(info.url).startswith(output):
            own_output += 1  # a rerun would otherwise take its own results (and job.json) for prompts
        elif is_hidden(label):
            selected.ignored.append((label, "hidden (a name starting with _ or .: Spark/Hadoop bookkeeping)"))
        elif folder in saved and label not in saved[folder]:
            why = "not one of the data files its state.json names (a datasets cache file, or an earlier save's)"
            if name in _SAVED_DATASET_METADATA:
                why = "the metadata of a Hugging Face dataset saved with save_to_disk"
            selected.ignored.append((label, why))
        elif input_spec.format == "auto" and format_from_name(label) is None:
            selected.ignored.append((label, f"not {INPUT_NAMES}"))
        else:
            selected.files.append(info)
    if own_output:
        label = file_label(output.rstrip("/"), absolute(root)) + "/"
        selected.ignored.append((label, f"the job's own output (output.path): {own_output} file(s)"))
    return selected


# What save_to_disk writes beside a dataset's Arrow files.
_SAVED_DATASET_METADATA = ("state.json", "dataset_info.json")


def _saved_datasets(path: str, listed: list[FileInfo], labels: list[str], storage: Storage) -> dict[str, list[str]]:
    """The folders among `labels` that hold a Hugging Face dataset saved with save_to_disk (a state.json
    beside Arrow files), each with the labels of its data files, as its state.json names them. Other
    Arrow files there (datasets' cache files of a map over it, an earlier save's) are not its rows.
    A DatasetDict (a dataset_dict.json above its splits' folders) is refused: which split is meant?"""
    url_of = dict(zip(labels, (info.url for info in listed), strict=True))
    arrow_folders = {label.rpartition("/")[0] for label in labels if format_from_name(label) == "arrow"}
    saved: dict[str, list[str]] = {}
    for label in labels:
        folder, _, name = label.rpartition("/")
        if name == "dataset_dict.json":
            inside = folder + "/" if folder else ""
            below = [other[len(inside) :] for other in labels if other.startswith(inside)]
            splits = sorted({other.split("/")[0] for other in below if "/" in other}) or ["train"]
            where = f"{path.rstrip('/')}/{folder}".rstrip("/")
            raise SpecError(
                f"input.path: {where} is a Hugging Face DatasetDict saved with save_to_disk (splits: "
                f"{', '.join(splits[:10])}): name one split's folder (input.path: {where}/{splits[0]})"
            )
        if name != "state.json" or folder not in arrow_folders:
            continue
        try:
            state = json.loads(storage.read_bytes(url_of[label]))
            names = [entry["filename"] for entry in state["_data_files"]]
        except (ValueError, KeyError, TypeError) as error:
            reason = f"{type(error).__name__}: {error}"
            raise SpecError(f"{label}: not a Hugging Face dataset's state.json ({reason})") from None
        data = [f"{folder}/{name}" if folder else name for name in names]
        absent = [entry for entry in data if entry not in url_of]
        if absent:
            raise SpecError(f"{label} names {absent[0]}, which is not there: the dataset is incomplete")
        saved[folder] = data
    return saved


def _refuse_table_folder(path: str, labels: list[str]) -> None:
    """A lakehouse table's folder, whose files read one by one are not its rows.

    A Delta, Iceberg or Hudi table's folder holds, beside its current files, the files of its earlier
    versions (rewritten or deleted rows) and of failed writes, until they are vacuumed: only its log
    says which files are the table."""
    for label in labels:
        parts = label.split("/")
        if "_delta_log" in parts[:-1]:
            table, log = "a Delta Lake table", "_delta_log/"
        elif ".hoodie" in parts[:-1]:
            table, log = "an Apache Hudi table", ".hoodie/"
        elif "metadata" in parts[:-1] and parts[-1].endswith(".metadata.json"):
            table, log = "an Apache Iceberg table", "/".join(parts[:-1]) + "/"
        else:
            continue
        raise SpecError(
            f"input.path: {path} is {table} (its log: {log}); its folder also holds files that earlier "
            "versions of the table removed and files of failed writes, which would be read as rows too. "
            "Give herd the files of one version of the table: export it (Spark's or DuckDB's "
            "write/COPY to Parquet), or, for a table that has only ever been appended to, a glob of its "
            f"data files ({path.rstrip('/')}/**/*.parquet)"
        )


def with_absolute_paths(job: JobSpec) -> JobSpec:
    """Ray workers run in another directory: local paths must not depend on the driver's."""
    model_path = job.model.path if job.model.path == DEMO_MODEL else absolute(job.model.path)
    adapters = [adapter.model_copy(update={"path": absolute(adapter.path)}) for adapter in job.model.adapters]
    return job.model_copy(
        update={
            "input": job.input.model_copy(update={"path": absolute(job.input.path)}),
            "output": job.output.model_copy(update={"path": absolute(job.output.path)}),
            "model": job.model.model_copy(update={"path": model_path, "adapters": adapters}),
        }
    )


def list_inputs(storage: Storage, job: JobSpec) -> InputFiles:
    """The input files, or a SpecError that says why they cannot be listed, before any engine starts.
    Files that are listed but not read (bookkeeping, other types) are logged by name."""
    try:
        listed = storage.expand_inputs(job.input.path)
    except Exception as error:
        raise storage_problem(f"input.path: cannot list {job.input.path}", error) from None
    if not listed:
        raise SpecError(f"input.path: no files match {job.input.path!r}")
    inputs = select_inputs(job.input, listed, storage, job.output.path)
    for label, why in inputs.ignored:
        log.warning("not an input: %s (%s)", label, why)
    if not inputs.files:
        raise SpecError(
            f"input.path: none of the {len(listed)} file(s) under {job.input.path!r} is an input file "
            f"({'; '.join(f'{label}: {why}' for label, why in inputs.ignored[:5])})"
        )
    return inputs


def plan_shards(
    input_spec: InputSpec, files: list[FileInfo], storage: Storage, prompt: PromptSpec | None = None
) -> list[Shard]:
    """The shards of these files, in file order. A large input on S3 is planned by several processes
    (jobs/planning_processes.py): one process tops out at ~1,600 files a second."""
    processes = _planning_processes(files, storage)
    if processes == 1:
        return plan_here(input_spec, files, storage, prompt)
    size = math.ceil(len(files) / processes)
    slices = [files[start : start + size] for start in range(0, len(files), size)]
    log.info("planning %d files in %d processes", len(files), len(slices))
    return plan_in_processes(input_spec, slices, storage, prompt)


def _planning_processes(files: list[FileInfo], storage: Storage) -> int:
    if not files or storage.small_requests_at_once(files[0].url) == 1:  # a disk's reads cost no request
        return 1
    return max(1, min(os.cpu_count() or 1, _MOST_PLANNING_PROCESSES, len(files) // _FILES_A_PROCESS))


def plan_here(
    input_spec: InputSpec, files: list[FileInfo], storage: Storage, prompt: PromptSpec | None = None
) -> list[Shard]:
    """plan_shards in this process."""
    return [shard for batch in plan_batches(input_spec, files, storage, prompt) for shard in batch]


def plan_batches(
    input_spec: InputSpec, files: list[FileInfo], storage: Storage, prompt: PromptSpec | None = None
) -> Iterator[list[Shard]]:
    """plan_here a batch of files at a time, in file order: a planning process hands each batch on as
    it is planned."""
    root = input_root(input_spec.path)
    template_columns = prompt.template_columns() if prompt is not None else set()

    def file_shards(info: FileInfo, footer: pq.FileMetaData | Exception | None) -> list[Shard]:
        label = file_label(info.url, root)
        base = {
            "file_url": info.url,
            "file_label": label,
            "file_size": info.size,
            "file_version": info.version,
            "partition": hive_partition(label),
        }
        if footer is not None:
            return _parquet_shards(footer, base, input_spec, template_columns)
        codec = compression_of(info.url)
        kind = input_spec.format_of(info.url)
        if kind == "arrow":
            return _arrow_shards(info, base, input_spec, template_columns, storage)
        if kind == "jsonl" and codec is None and not input_spec.transcoded:
            if _holds_json_array(info, storage):
                return _copied_jsonl_shards(info.size, base, input_spec, copied_from="json-array")
            return _jsonl_shards(info, base, input_spec)
        # Read through the node's JSON Lines copy: decompressed, transcoded, or a CSV's records (the
        # copy of a transcoded or compressed JSON file also finds a JSON array).
        if info.size == 0:
            return []
        size = info.size if codec is None else _decompressed_size(info, codec, storage)
        if kind != "jsonl":  # csv, tsv
            size = int(size * _json_lines_per_csv_byte(info, kind, input_spec.encoding, storage))
        copied_from = kind if kind != "jsonl" else "jsonl" if input_spec.transcoded else None
        return _copied_jsonl_shards(size, base, input_spec, compression=codec, copied_from=copied_from)

    def shards_or_problem(info: FileInfo, footer: pq.FileMetaData | Exception | None) -> list[Shard] | SpecError:
        try:
            return file_shards(info, footer)
        except SpecError as problem:
            return problem

    # Footers and compressed sizes are small reads whose time is the store's latency: on S3, many at
    # once, a batch of files at a time (a batch's footers are all that is held). In file order all the
    # same. A file that cannot be planned does not stop the others being read: the error names every
    # such file (up to UnplannableFiles.MOST_NAMED), in file order; a storage failure stops at once.
    at_once = storage.small_requests_at_once(files[0].url) if files else 1
    threads = ThreadPoolExecutor(at_once, thread_name_prefix="plan")
    problems: list[str] = []
    try:
        for start in range(0, len(files), _FILES_A_BATCH):
            batch = files[start : start + _FILES_A_BATCH]
            parquet = [info for info in batch if input_spec.format_of(info.url) == "parquet"]
            footers = dict(zip((info.url for info in parquet), storage.parquet_footers(parquet), strict=True))
            footer_of = [footers.get(info.url) for info in batch]
            # Only compressed files (their size field), .json files and CSVs (their first bytes) still
            # read: the rest is arithmetic on what is here.
            reading = any(
                (compression_of(info.url) or may_hold_json_array(info.url) or input_spec.format_of(info.url) != "jsonl")
                and info.url not in footers
                for info in batch
            )
            planned = (threads.map if reading else map)(shards_or_problem, batch, footer_of)
            shards: list[Shard] = []
            for one_file in planned:
                if isinstance(one_file, SpecError):
                    problems.append(str(one_file))
                    if len(problems) == UnplannableFiles.MOST_NAMED:
                        raise UnplannableFiles(problems, stopped=True)
                else:
                    shards += one_file
            if not problems:  # a plan that will be refused is not handed on
                yield shards
        if problems:
            raise UnplannableFiles(problems)
    finally:
        threads.shutdown(cancel_futures=True)  # after a bad file, the files not read yet are not read


def _parquet_shards(
    footer: pq.FileMetaData | Exception, base: dict, input_spec: InputSpec, template_columns: set[str]
) -> list[Shard]:
    label = base["file_label"]
    try:
        if isinstance(footer, Exception):
            raise footer
        metadata = footer
        names = metadata.schema.to_arrow_schema().names  # top-level columns (a nested one has several chunks)
    except Exception as error:
        if is_transient(error):
            raise storage_problem(f"{label}: cannot read its Parquet footer", error) from None
        raise SpecError(f"{label}: not a readable Parquet file ({error})") from None
    read = _columns_to_read(names, base, input_spec, template_columns)
    base = {**base, "format": "parquet", "columns": read}

    shards: list[Shard] = []
    joined: list[tuple[int, int, int]] = []  # whole small groups waiting to form a shard: (group, first row, rows)
    joined_bytes = 0

    def flush() -> None:
        nonlocal joined_bytes
        if joined:
            first, start, _ = joined[0]
            last, last_start, last_rows = joined[-1]
            end = last_start + last_rows
            shards.append(
                Shard(
                    **base,
                    start=start,
                    end=end,
                    row_groups=(first, last + 1),
                    group_first_row=start,
                    estimated_rows=end - start,
                )
            )
        joined.clear()
        joined_bytes = 0

    # The column chunks of the columns read (a nested column has several), found once from the schema:
    # asking each row group's every chunk for its path cost a wide file's planning most of its time.
    chunks_read = [
        index for index in range(metadata.num_columns) if metadata.schema.column(index).path.split(".")[0] in read
    ]
    row = 0
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        rows = row_group.num_rows
        group_bytes = sum(row_group.column(index).total_uncompressed_size for index in chunks_read)
        # How many of this group's rows fit a shard, by count and by the bytes of the columns read.
        cap = max(1, min(input_spec.rows_per_shard, input_spec.bytes_per_shard * rows // max(group_bytes, 1)))
        if rows > cap:
            flush()
            slices = math.ceil(rows / cap)
            for index in range(slices):
                start, end = row + rows * index // slices, row + rows * (index + 1) // slices
                shards.append(
                    Shard(
                        **base,
                        start=start,
                        end=end,
                        row_groups=(group, group + 1),
                        group_first_row=row,
                        whole_row_groups=False,
                        estimated_rows=end - start,
                    )
                )
        elif rows:
            joined_rows = sum(entry[2] for entry in joined)
            if (
                joined_rows + rows > input_spec.rows_per_shard
                or joined_bytes + group_bytes > input_spec.bytes_per_shard
            ):
                flush()
            joined.append((group, row, rows))
            joined_bytes += group_bytes
        row += rows
    flush()
    return shards


def _columns_to_read(
    names: list[str], base: dict, input_spec: InputSpec, template_columns: set[str]
) -> tuple[str, ...]:
    """The columns of a file with columns `names` that its rows need, or a SpecError naming the ones
    the job names that it lacks."""
    available = set(names) | set(base["partition"])
    missing = [column for column in input_spec.columns_read(set()) if column not in available]
    if missing:
        raise SpecError(
            f"{base['file_label']}: column(s) {missing} named in the job are not in the file; it has {sorted(names)}"
        )
    # Template names that are not columns are left to the template (it may test `is defined`).
    read = [column for column in input_spec.columns_read(template_columns) if column in names]
    return tuple(read or names[:1])  # a template of partition values only: any one column counts the rows


def _arrow_shards(
    info: FileInfo, base: dict, input_spec: InputSpec, template_columns: set[str], storage: Storage
) -> list[Shard]:
    """Equal row ranges of an Arrow IPC file, each at most rows_per_shard rows and, by the file's
    average, bytes_per_shard bytes of the columns read."""

    def columns_of(names: list[str]) -> tuple[str, ...]:
        return _columns_to_read(names, base, input_spec, template_columns)

    try:
        read, rows, held = storage.read_stream(
            info.url, lambda handle: arrow_ipc.measure(handle, columns_of), size=info.size
        )
    except SpecError:
        raise
    except Exception as error:
        if is_transient(error):
            raise storage_problem(f"{base['file_label']}: cannot read it", error) from None
        raise SpecError(f"{base['file_label']}: not a readable Arrow IPC file ({error})") from None
    if rows == 0:
        return []
    cap = max(1, min(input_spec.rows_per_shard, input_spec.bytes_per_shard * rows // max(held, 1)))
    slices = math.ceil(rows / cap)
    base = {**base, "format": "parquet", "copied_from": "arrow", "columns": read, "whole_row_groups": False}
    shards = []
    for index in range(slices):
        start, end = rows * index // slices, rows * (index + 1) // slices
        shards.append(Shard(**base, start=start, end=end, estimated_rows=end - start))
    return shards


def _jsonl_shards(info: FileInfo, base: dict, input_spec: InputSpec) -> list[Shard]:
    step = input_spec.bytes_per_shard
    return [
        Shard(
            **base,
            format="jsonl",
            start=start,
            end=min(start + step, info.size),
            estimated_rows=max(1, (min(start + step, info.size) - start) // _TYPICAL_LINE_BYTES),
        )
        for start in range(0, info.size, step)
    ]


def _copied_jsonl_shards(estimate: int, base: dict, input_spec: InputSpec, **kind: object) -> list[Shard]:
    """Byte ranges of a file read through the node's JSON Lines copy of it (decompressed, transcoded,
    a JSON array's items or a CSV's records one to a line), whose size is only estimated: the last
    range reaches to its end."""
    step = input_spec.bytes_per_shard
    count = max(1, math.ceil(estimate / step))
    return [
        Shard(
            **base,
            **kind,
            format="jsonl",
            start=index * step,
            end=TO_END_OF_FILE if index == count - 1 else (index + 1) * step,
            estimated_rows=max(1, min(step, max(estimate - index * step, 0)) // _TYPICAL_LINE_BYTES),
        )
        for index in range(count)
    ]


def _json_lines_per_csv_byte(info: FileInfo, kind: FileFormat, encoding: str, storage: Storage) -> float:
    """A CSV's JSON Lines copy repeats the header's names in every record: how much larger it is, from
    the file's first records copied, so that its shards come out about bytes_per_shard each."""
    if compression_of(info.url) is not None:
        return _ASSUMED_JSON_LINES_PER_CSV_BYTE
    head = storage.read_bytes(info.url, 0, min(info.size, _CSV_SAMPLE_BYTES))
    if len(head) < info.size:
        head = head[: head.rfind(b"\n") + 1]
    if not head:
        return _ASSUMED_JSON_LINES_PER_CSV_BYTE
    copy = io.BytesIO()
    copy_as_json_lines(io.BytesIO(head), copy, kind, encoding)
    return max(1.0, len(copy.getvalue()) / len(head))


def _holds_json_array(info: FileInfo, storage: Storage) -> bool:
    return (
        info.size > 0
        and may_hold_json_array(info.url)
        and opens_json_array(storage.read_bytes(info.url, 0, min(info.size, 512)))
    )


def _decompressed_size(info: FileInfo, codec: str | None, storage: Storage) -> int:
    """gzip ends with the size modulo 4 GiB (of its last member); zstd frames may start with it."""
    assumed = info.size * _ASSUMED_COMPRESSION_RATIO
    if codec == "gzip" and info.size >= 18:
        (size,) = struct.unpack("<I", storage.read_bytes(info.url, info.size - 4, info.size))
        # Several members, or more than 4 GiB, make the field too small: fall back to the guess.
        return size if size >= info.size else assumed
    if codec == "zstd" and info.size >= 18:
        header = storage.read_bytes(info.url, 0, 18)
        size = _zstd_content_size(header)
        return size if size is not None else assumed
    return assumed


def _zstd_content_size(header: bytes) -> int | None:
    """The Frame_Content_Size field of a zstd frame header (RFC 8878 3.1.1.1), when present."""
    if header[:4] != b"\x28\xb5\x2f\xfd":
        return None
    descriptor = header[4]
    size_flag, single_segment, dictionary_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    position = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dictionary_flag]
    width = (1 if single_segment else 0, 2, 4, 8)[size_flag]
    if width == 0:
        return None
    value = int.from_bytes(header[position : position + width], "little")
    return value + 256 if width == 2 else value
