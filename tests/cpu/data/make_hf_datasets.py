"""Writes tests/cpu/data/hf_*: what datasets' save_to_disk really writes (datasets==5.2.0).

datasets is not one of herd's dependencies (it caps fsspec below the release s3fs needs), so this runs
in an environment of its own, once, and its output is kept in the repository:

    python -m venv /tmp/hf && /tmp/hf/bin/pip install datasets==5.2.0
    /tmp/hf/bin/python tests/cpu/data/make_hf_datasets.py tests/cpu/data
"""

import sys
from pathlib import Path

import datasets

out = Path(sys.argv[1])
questions = [f"What is {a} plus {a + 1}?" for a in range(10)]
rows = {
    "id": [f"q{index}" for index in range(10)],
    "question": questions,
    "messages": [[{"role": "user", "content": question}] for question in questions],
    "topic": ["math"] * 10,
}
dataset = datasets.Dataset.from_dict(rows)
dataset.save_to_disk(str(out / "hf_dataset"), num_shards=2)
# A map over a dataset loaded from disk writes its cache file among the dataset's own files.
loaded = datasets.load_from_disk(str(out / "hf_dataset"))
loaded.map(lambda row: {"question": row["question"].upper()})
splits = datasets.DatasetDict({"train": dataset.select(range(8)), "test": dataset.select(range(8, 10))})
splits.save_to_disk(str(out / "hf_dataset_dict"))
print(datasets.__version__)
