"""Llama 2 presets: the family's facts in one place (Meta's model cards and reference code)."""

from __future__ import annotations

from dataclasses import dataclass

LLAMA2_CONTEXT_TOKENS = 4096  # "All models support sequence length up to 4096 tokens"


@dataclass(frozen=True)
class Llama2Preset:
    parameters: str
    tensor_parallel_size: int  # the reference code's model-parallel (MP) value: GPUs per model
    attention_heads: int
    key_value_heads: int  # 70B uses grouped-query attention
    chat: bool


_SIZES = {
    "7b": ("7B", 1, 32, 32),
    "13b": ("13B", 2, 40, 40),
    "70b": ("70B", 8, 64, 8),
}
LLAMA2_PRESETS: dict[str, Llama2Preset] = {
    f"llama-2-{size}{suffix}": Llama2Preset(parameters, tp, heads, kv_heads, chat=bool(suffix))
    for size, (parameters, tp, heads, kv_heads) in _SIZES.items()
    for suffix in ("", "-chat")
}


def valid_tensor_parallel_sizes(preset: Llama2Preset) -> list[int]:
    """Tensor parallelism splits the attention heads (and KV heads) evenly across GPUs."""
    return [
        size
        for size in range(1, preset.attention_heads + 1)
        if preset.attention_heads % size == 0 and preset.key_value_heads % size == 0
    ]
