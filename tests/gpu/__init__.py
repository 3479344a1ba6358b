"""Tests that need an NVIDIA GPU: marked `gpu`, skipped where none is visible."""

from __future__ import annotations


def gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
