"""Ready for the first GPU: herd against a bare vLLM script and Ray Data LLM on Llama 2's shapes.

    python -m bench gpu                       # on a GPU machine: 7B and 13B, every TP the GPUs allow
    python -m bench gpu --shapes tiny --device cpu --prompts 64   # here: the same three runs, tiny Llama

Llama-2-7B and 13B as their configs give them (hidden size, layers, heads, intermediate size, the
32,000-token vocabulary, 4,096 context) with vLLM's dummy weights (`load_format: dummy`: random
weights of the right shapes, nothing downloaded) and the real Llama 2 tokenizer (its vocabulary from
llama.cpp's vocab-only GGUF, see tests/llama2_vocab.py). Prompts have ShareGPT-like lengths
(log-normal, median about 150 tokens, a long tail to 2,000) and each asks for 256 new tokens
(ignore_eos, temperature 0.8), so every side generates the same number of tokens.

For each shape and tensor parallel size (1, and 2 and 8 where there are that many GPUs; 13B needs
TP 2 on GPUs under 40 GB): herd (`submit.py run`, replicas = GPUs / TP), the bare script (one LLM,
one generate, on TP GPUs) and Ray Data LLM (GPUs / TP engines), each end to end from a fresh
process; printed as generated tokens/s per GPU, and herd's ratio to each. Sized at 1,000 prompts
(256k generated tokens a side), where the engine start-ups are most of each wall: on one H200 7B at
TP 1 took 139 s for herd and 78 s for the bare script (2026-12-04), so 7B and 13B with all three
sides likely take 12 to 15 minutes. So the command keeps to `--budget-min` (8 by default): herd and
the bare script of each case go first, then Ray Data LLM, and a run that its estimate (from the walls
so far, see bench/run_budget.py) puts past the budget is skipped and said to be; `--budget-min 0`
runs everything, `--shapes` and `--sides` measure less, `--prompts` scales the generation.

The machine that runs it needs this repository's .venv built with `bash scripts/install.sh gpu
test` and bench/.cache/gpu-models, which `python -m bench gpu --prepare` writes here (it fetches
the tokenizer once; a GPU machine may have no network).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import CACHE, WORDS, herd_phases, record, run_herd, run_script, tiny_model, wall_phases
from bench.run_budget import Run, RunBudget

MODELS = CACHE / "gpu-models"


class Limits:
    """Context, new tokens and the longest prompt of a shape's runs: Llama 2's, or the tiny Llama's."""

    def __init__(self, max_model_len: int, new_tokens: int, max_words: int) -> None:
        self.max_model_len = max_model_len
        self.new_tokens = new_tokens
        self.max_words = max_words


LLAMA2 = Limits(max_model_len=4096, new_tokens=256, max_words=1500)
TINY = Limits(max_model_len=512, new_tokens=16, max_words=60)  # the tiny Llama's context is 512

# From the Llama 2 checkpoints' config.json (meta-llama/Llama-2-{7b,13b,70b}-hf).
SHAPES: dict[str, dict[str, int]] = {
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32},
    "13b": {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40,
            "num_key_value_heads": 40},
    "70b": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
            "num_key_value_heads": 8},
}  # fmt: skip
MIN_TP = {"7b": 1, "13b": 1, "70b": 8}  # 13B fits one 80 GB GPU (llama2.md: a user may override the preset 2)


def llama2_shape_dir(shape: str) -> Path:
    """A checkpoint directory without weights: Llama 2's config at this shape and its tokenizer."""
    directory = MODELS / f"llama-2-{shape}-shape"
    if (directory / "config.json").exists():
        return directory
    from transformers import AutoTokenizer, LlamaConfig

    from tests.llama2_vocab import VOCAB_FILE, fetch_llama2_vocab

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(fetch_llama2_vocab(CACHE), gguf_file=VOCAB_FILE)
    tokenizer.add_bos_token = True  # as Llama 2's own tokenizer_config.json has it
    tokenizer.save_pretrained(directory)
    config = LlamaConfig(
        **SHAPES[shape],
        vocab_size=32000,
        max_position_embeddings=LLAMA2.max_model_len,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=1,
        eos_token_id=2,
        torch_dtype="float16",
        architectures=["LlamaForCausalLM"],
    )
    config.save_pretrained(directory)
    return directory


def sharegpt_like_prompts(prompts: int, max_words: int, seed: int = 7) -> Path:
    """A folder of one Parquet file of prompts whose lengths follow ShareGPT's: log-normal, median
    about 110 words (~150 tokens)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = CACHE / f"sharegpt-like-{prompts}-{max_words}"
    path = directory / "prompts.parquet"
    if path.exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    texts = []
    for _ in range(prompts):
        words = min(max_words, max(4, int(rng.lognormvariate(math.log(110), 0.9))))
        texts.append(" ".join(rng.choice(WORDS) for _ in range(words)))
    pq.write_table(pa.table({"id": [f"p{index}" for index in range(prompts)], "prompt": texts}), path)
    return directory


def _engine(device: str, tp: int) -> dict[str, Any]:
    """The engine settings all three sides use: vLLM's defaults on GPU, herd's CPU ones on CPU."""
    if device == "cpu":
        return {"dtype": "float32"}
    return {"dtype": "float16", "load_format": "dummy", "tensor_parallel_size": tp, "enforce_eager": False,
            "enable_chunked_prefill": None}  # fmt: skip


def _herd(data: Path, model: Path, limits: Limits, device: str, gpus: int, tp: int, work: Path) -> dict[str, Any]:
    engine_options = {"load_format": "dummy"} if device == "gpu" else {}
    job = {
        "input": {"path": str(data), "prompt_column": "prompt", "id_column": "id", "rows_per_shard": 256},
        "model": {"path": str(model), "max_model_len": limits.max_model_len, "dtype": _engine(device, tp)["dtype"],
                  "tensor_parallel_size": tp, "engine_options": engine_options},
        "sampling": {"max_new_tokens": limits.new_tokens, "ignore_eos": True, "temperature": 0.8, "seed": 1},
        "resources": {"replicas": max(1, gpus // tp)},
        "output": {"path": str(work / "herd-out")},
    }  # fmt: skip
    launched = time.time()
    wall, summary, records = run_herd(job, work / "herd")
    return {"wall_s": wall, "tokens": summary["completion_tokens"], **herd_phases(launched, wall, records)}


def _bare(data: Path, model: Path, limits: Limits, device: str, tp: int, work: Path) -> dict[str, Any]:
    lengths = [str(limits.max_model_len), str(limits.new_tokens)]
    arguments = [str(data), str(model), str(work / "bare.parquet"), *lengths, "as-is"]
    launched = time.time()
    wall, figures = run_script(["-m", "bench.bare_vllm", *arguments, json.dumps(_engine(device, tp))])
    first, last = figures["generate_started_at"], figures["generate_started_at"] + figures["generate_s"]
    return {"wall_s": wall, "tokens": figures["tokens"], **wall_phases(launched, wall, first, last)}


def _ray_data(data: Path, model: Path, limits: Limits, device: str, gpus: int, tp: int, work: Path) -> dict[str, Any]:
    lengths = [str(limits.max_model_len), str(limits.new_tokens)]
    arguments = [str(data), str(model), str(work / "ray-data"), *lengths]
    if device == "gpu":
        engine = {key: value for key, value in _engine(device, tp).items() if value is not None}
        arguments.append(json.dumps({"engine_kwargs": engine, "concurrency": max(1, gpus // tp)}))
    wall, figures = run_script(["-m", "bench.ray_data_llm", *arguments])
    return {"wall_s": wall, "tokens": figures["tokens"]}


SIDES = ("herd", "bare_vllm", "ray_data_llm")
RATIOS = ("herd_over_bare", "herd_over_bare_while_generating", "herd_over_ray_data")


@contextmanager
def _fresh_vllm_cache(work: Path) -> Iterator[None]:
    """vLLM's compile cache (VLLM_CACHE_ROOT) of its own for one side: a side run after another
    would otherwise reuse that one's torch.compile artifacts and start tens of seconds sooner."""
    previous = os.environ.get("VLLM_CACHE_ROOT")
    os.environ["VLLM_CACHE_ROOT"] = str(work / "vllm-cache")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("VLLM_CACHE_ROOT", None)
        else:
            os.environ["VLLM_CACHE_ROOT"] = previous


def _gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _stack(gpus: int) -> dict[str, Any]:
    """What the figures were measured on: a GPU machine may carry another vLLM release than the pinned one."""
    import ray
    import torch
    import vllm

    stack = {"vllm": vllm.__version__, "torch": torch.__version__, "ray": ray.__version__}
    if gpus:
        stack["gpu"] = torch.cuda.get_device_name(0)
    return stack


def _cases(shapes: list[str], gpus: int, device: str) -> list[tuple[str, int]]:
    if device == "cpu":
        return [(shape, 1) for shape in shapes]
    return [(shape, tp) for shape in shapes for tp in (1, 2, 8) if MIN_TP.get(shape, 1) <= tp <= gpus]


def _runs(cases: list[tuple[str, int]], sides: list[str]) -> list[list[Run]]:
    """The runs in the order they go, in units started together: herd and the bare script of each case
    first (the comparison the benchmark is for, shape by shape), then Ray Data LLM of each case."""
    pair = [side for side in ("herd", "bare_vllm") if side in sides]
    units = [[Run(shape, tp, side) for side in pair] for shape, tp in cases] if pair else []
    if "ray_data_llm" in sides:
        units += [[Run(shape, tp, "ray_data_llm")] for shape, tp in cases]
    return units


def _measure(run: Run, arguments: argparse.Namespace, gpus: int, model: Path, work: Path) -> dict[str, Any]:
    limits = TINY if run.shape == "tiny" else LLAMA2
    common = (sharegpt_like_prompts(arguments.prompts, limits.max_words), model, limits, arguments.device)
    tp = run.tensor_parallel_size
    if run.side == "herd":
        figures = _herd(*common, gpus, tp, work)
    elif run.side == "bare_vllm":
        figures = _bare(*common, tp, work)
    else:
        figures = _ray_data(*common, gpus, tp, work)
    expected = arguments.prompts * limits.new_tokens
    if figures["tokens"] != expected:
        raise RuntimeError(f"it generated {figures['tokens']} tokens, not {expected}")
    return figures


def _gpus_of(side: str, gpus: int, tp: int) -> int:
    """herd and Ray Data use every GPU (replicas of TP GPUs each); the bare script TP of them."""
    if not gpus:
        return 1
    return tp if side == "bare_vllm" else (gpus // tp) * tp


def _case_result(
    shape: str, tp: int, gpus: int, figures_of: dict[Run, dict[str, Any]], skipped: dict[Run, str]
) -> dict[str, Any]:
    walls: dict[str, float] = {}
    rates: dict[str, float] = {}
    generating: dict[str, float] = {}  # from the first token asked for to the last one: start-up left out
    phases: dict[str, dict[str, float]] = {}  # herd's and the bare script's walls, split (wall_phases)
    for side in SIDES:
        figures = figures_of.get(Run(shape, tp, side))
        if figures is None:
            continue
        walls[side] = figures["wall_s"]
        rates[side] = figures["tokens"] / figures["wall_s"] / _gpus_of(side, gpus, tp)
        if "generate_s" in figures:
            generating[side] = figures["tokens"] / figures["generate_s"] / _gpus_of(side, gpus, tp)
            phases[side] = {key: figures[key] for key in ("start_up_s", "generate_s", "after_s")}
    skipped_here = {
        run.side: why for run, why in skipped.items() if (run.shape, run.tensor_parallel_size) == (shape, tp)
    }
    result = {"shape": shape, "tensor_parallel_size": tp, "gpus_used": _gpus_of("herd", gpus, tp),
              "new_tokens": (TINY if shape == "tiny" else LLAMA2).new_tokens, "walls_s": walls,
              "tokens_per_s_per_gpu": rates, "tokens_per_s_per_gpu_while_generating": generating,
              "phases_s": phases, "skipped": skipped_here}  # fmt: skip
    for peer in ("bare_vllm", "ray_data_llm"):
        name = f"herd_over_{peer.removesuffix('_llm').removesuffix('_vllm')}"
        if "herd" in rates and peer in rates:
            result[name] = rates["herd"] / rates[peer]
        if "herd" in generating and peer in generating:
            result[f"{name}_while_generating"] = generating["herd"] / generating[peer]
    return result


def _said(run: Run, figures: dict[str, Any], gpus: int) -> str:
    gpus_used = _gpus_of(run.side, gpus, run.tensor_parallel_size)
    line = f"{run}: {figures['tokens']} tokens in {figures['wall_s']:.1f} s, "
    line += f"{figures['tokens'] / figures['wall_s'] / gpus_used:.0f} tokens/s per GPU"
    if "generate_s" in figures:
        line += f" ({figures['tokens'] / figures['generate_s'] / gpus_used:.0f} while generating; start-up "
        line += f"{figures['start_up_s']:.1f} s, generating {figures['generate_s']:.1f} s, "
        line += f"after {figures['after_s']:.1f} s)"
    return line


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench gpu")
    parser.add_argument("--shapes", default="7b,13b", help="comma-separated: 7b, 13b, 70b, or tiny (the tiny Llama)")
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    parser.add_argument("--prepare", action="store_true", help="only write the shapes' directories (no GPU needed)")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, of {', '.join(SIDES)}: a GPU "
                        "lent for minutes may measure herd against one peer only")  # fmt: skip
    parser.add_argument("--budget-min", type=float, default=8.0, help="minutes for the whole command: a run "
                        "estimated (from the walls so far) to end past them is skipped, and said so; "
                        "0: no limit")  # fmt: skip
    arguments = parser.parse_args(argv)
    shapes = arguments.shapes.split(",")
    sides = arguments.sides.split(",")
    unknown = sorted(set(sides) - set(SIDES))
    if unknown:
        parser.error(f"--sides: {', '.join(unknown)} is not one of {', '.join(SIDES)}")
    models = {shape: tiny_model() if shape == "tiny" else llama2_shape_dir(shape) for shape in shapes}
    if arguments.prepare:
        print(f"prepared: {', '.join(str(path) for path in models.values())}")
        return 0
    gpus = _gpu_count() if arguments.device == "gpu" else 0
    if arguments.device == "gpu" and gpus == 0:
        print("bench gpu: no CUDA GPU here; --device cpu --shapes tiny runs the same steps on CPU", flush=True)
        return 2
    cases = _cases(shapes, gpus, arguments.device)
    budget = RunBudget(arguments.budget_min * 60 if arguments.budget_min > 0 else None)
    figures_of: dict[Run, dict[str, Any]] = {}
    skipped: dict[Run, str] = {}
    failed = False
    for unit in _runs(cases, sides):
        why = budget.refusal(unit)
        for run in unit:
            if why is not None:
                skipped[run] = why
                print(f"{run}: skipped: it {why}; --budget-min 0 runs every side", flush=True)
                continue
            started = time.monotonic()
            # One side failing (a peer's incompatibility with this vLLM release, say) still leaves the
            # others' figures: a GPU machine may be lent for minutes only.
            try:
                with tempfile.TemporaryDirectory() as work_dir, _fresh_vllm_cache(Path(work_dir)):
                    figures_of[run] = _measure(run, arguments, gpus, models[run.shape], Path(work_dir))
            except Exception as error:  # noqa: BLE001 - reported, and the run exits 1
                failed = True
                print(f"{run}: failed: {error}", flush=True)
                continue
            finally:
                budget.measured(run, time.monotonic() - started)  # a failed run's minutes are spent too
            print(_said(run, figures_of[run], gpus), flush=True)
        # Saved after every unit, not once at the end: a machine lent for minutes may be taken back (or
        # the command cut off) in the middle of the next one. The last line printed sums up every case.
        results = [_case_result(shape, tp, gpus, figures_of, skipped) for shape, tp in cases]
        print(json.dumps(results[cases.index((unit[0].shape, unit[0].tensor_parallel_size))]), flush=True)
        _save(arguments.device, gpus, arguments.prompts, results)
    return 1 if failed else 0


def _save(device: str, gpus: int, prompts: int, results: list[dict[str, Any]]) -> None:
    lines = []
    for item in results:
        rates = ", ".join(f"{side} {rate:.0f}" for side, rate in item["tokens_per_s_per_gpu"].items())
        said = [f"tokens/s per GPU {rates}"] if rates else []
        said += [f"{key} {item[key]:.2f}" for key in RATIOS if key in item]
        said += [f"skipped for time: {', '.join(item['skipped'])}"] if item["skipped"] else []
        lines.append(f"{item['shape']} TP {item['tensor_parallel_size']}: {', '.join(said) or 'nothing measured'}")
    record(
        "gpu" if device == "gpu" else "gpu-plumbing-on-cpu",
        {"device": device, "gpus": gpus, "prompts": prompts, **_stack(gpus), "results": results},
        "gpu: " + "; ".join(lines),
    )
