"""Builds a tiny random Llama checkpoint, deterministically, for tests and benchmarks.

The weights are random, so completions are gibberish, but every part of the real path runs: a real
byte-level BPE tokenizer with BOS/EOS, a real LlamaForCausalLM checkpoint, the real vLLM engine.
head_dim is 64 because vLLM's CPU attention refuses smaller heads.
"""

from __future__ import annotations

import itertools
from pathlib import Path

_CORPUS_WORDS = (
    "the quick brown fox jumps over a lazy dog while data engineers write prompts about "
    "weather history science music cooking travel sport numbers 0 1 2 3 4 5 6 7 8 9 why how "
    "what when where who Paris France capital river mountain ocean planet star language model "
    "generation batch token completion question answer explain describe list summarize café "
    'naïve über 東京 😀 ünïcödé JSON {"key": [1, 2]} <tag> ! ? , . ; : - _ ( ) [ ] INST SYS'
).split()


def _training_corpus() -> list[str]:
    lines = []
    for width, offset in itertools.product(range(3, 12), range(len(_CORPUS_WORDS))):
        lines.append(" ".join(_CORPUS_WORDS[(offset + k * 7) % len(_CORPUS_WORDS)] for k in range(width)))
    return lines


def build_tiny_llama(directory: Path, vocab_size: int = 512) -> Path:
    """Writes the checkpoint into `directory` (once) and returns it."""
    if (directory / "config.json").exists():
        return directory
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_training_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_bos_token = True
    fast.save_pretrained(directory)

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=4096,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        torch_dtype="float32",
    )
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    return directory
