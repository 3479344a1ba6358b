"""Planning wide Parquet files: the planner's CPU per file for files of 301 columns in 12 row groups
(a data lake's wide table, of which a job reads one column) against files of that one column alone,
same rows and row groups, and how much of it is pyarrow decoding the footer (a wide file's is ~400 kB of
Thrift: a column chunk's metadata, statistics included, for every column in every row group) rather than
herd's own arithmetic on it (per row group, the bytes of the columns read).

Local files, planned in this process (the planner's CPU alone, no storage latency), the two sides
alternating over rounds (this machine's speed drifts); printed: CPU ms a file for each, pyarrow's
footer decoding's share, and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import CACHE, cpu_seconds, record

_ROWS = 1200
_ROWS_PER_GROUP = 100
_EXTRA_COLUMNS = 300


def _files(kind: str, count: int) -> Path:
    directory = CACHE / f"wide-files-{kind}-{count}"
    if len(list(directory.glob("*.parquet"))) == count:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    columns: dict[str, Any] = {"prompt": [f"prompt {row}" for row in range(_ROWS)]}
    if kind == "wide":
        columns |= {f"c{column}": list(range(_ROWS)) for column in range(_EXTRA_COLUMNS)}
    table = pa.table(columns)
    for index in range(count):
        pq.write_table(table, directory / f"part-{index:04d}.parquet", row_group_size=_ROWS_PER_GROUP)
    return directory


def _cpu_ms_a_file(directory: Path, count: int) -> float:
    from common.storage import Storage
    from jobs.planner import plan_shards, select_inputs
    from schemas.job import InputSpec, RetrySpec, StorageSpec

    storage = Storage(StorageSpec(), RetrySpec())
    spec = InputSpec(path=str(directory), prompt_column="prompt", rows_per_shard=200)
    files = select_inputs(spec, storage.expand_inputs(spec.path), storage).files
    started = cpu_seconds()
    shards = plan_shards(spec, files, storage)
    elapsed = cpu_seconds() - started
    assert len(shards) == count * _ROWS // 200, len(shards)
    return elapsed / count * 1000


def _decoding_ms_a_file(directory: Path) -> float:
    """pyarrow's CPU to decode one of these files' footers, as the planner has it decoded."""
    data = sorted(directory.glob("*.parquet"))[0].read_bytes()
    footer = data[-(int.from_bytes(data[-8:-4], "little") + 8) :]
    started, times = cpu_seconds(), 50
    for _ in range(times):
        pq.ParquetFile(pa.BufferReader(footer)).metadata  # noqa: B018 - decoded, as storage.parquet_footers does
    return (cpu_seconds() - started) / times * 1000


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench wide_files")
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args(argv)
    folders = {kind: _files(kind, arguments.files) for kind in ("narrow", "wide")}
    samples: dict[str, list[float]] = {kind: [] for kind in folders}
    decoding: dict[str, list[float]] = {kind: [] for kind in folders}
    for _ in range(arguments.rounds):
        for kind, folder in folders.items():
            samples[kind].append(_cpu_ms_a_file(folder, arguments.files))
            decoding[kind].append(_decoding_ms_a_file(folder))
            print(f"{kind}: {samples[kind][-1]:.3f} ms of CPU a file, {decoding[kind][-1]:.3f} ms decoding", flush=True)
    medians = {kind: statistics.median(values) for kind, values in samples.items()}
    decoding_medians = {kind: statistics.median(values) for kind, values in decoding.items()}
    ratio = medians["wide"] / medians["narrow"]
    record(
        "wide_files",
        {
            "files": arguments.files,
            "rows": _ROWS,
            "row_groups": _ROWS // _ROWS_PER_GROUP,
            "wide_columns": 1 + _EXTRA_COLUMNS,
            "cpu_ms_a_file": samples,
            "median_cpu_ms_a_file": medians,
            "footer_decoding_ms": decoding,
            "median_footer_decoding_ms": decoding_medians,
            "wide_over_narrow": ratio,
        },
        f"wide_files: planning CPU a file, median of {arguments.rounds} rounds over {arguments.files} files of "
        f"{_ROWS // _ROWS_PER_GROUP} row groups: {1 + _EXTRA_COLUMNS} columns {medians['wide']:.2f} ms (pyarrow's "
        f"footer decoding {decoding_medians['wide']:.2f} ms), one column {medians['narrow']:.2f} ms "
        f"({decoding_medians['narrow']:.2f} ms): {ratio:.1f}x",
    )
    return 0
