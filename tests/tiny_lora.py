"""A LoRA adapter for the tiny Llama, made with PEFT at test time, and PEFT's own greedy answer to
check what vLLM generates with it against."""

from __future__ import annotations

from pathlib import Path


def build_tiny_lora(base_model: Path, directory: Path, seed: int = 1, rank: int = 8) -> Path:
    """Writes a PEFT LoRA adapter of `base_model` into `directory` (once) and returns it. Its weights
    are random and large enough to change what the model generates."""
    if (directory / "adapter_config.json").exists():
        return directory
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_model, torch_dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.mul_(50)  # PEFT's random init barely moves a random model's argmax
    model.save_pretrained(directory)
    return directory


def greedy_token_ids(
    base_model: Path, adapter: Path | None, prompt_ids: list[int], tokens: int, stop_at_eos: bool = False
) -> list[int]:
    """What Transformers (with PEFT's adapter applied, if given) generates greedily from `prompt_ids`:
    `tokens` of them, or up to the first end-of-sequence with stop_at_eos (which it keeps)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, torch_dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    with torch.no_grad():
        output = model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=tokens,
            min_new_tokens=1 if stop_at_eos else tokens,
            do_sample=False,
        )
    return output[0, len(prompt_ids) :].tolist()
