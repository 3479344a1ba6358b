"""Usage: python -m bench NAME [options]; each module's docstring says what its benchmark measures."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = (
    "overhead",
    "peer",
    "scale",
    "plan",
    "overlap",
    "options",
    "bigfile",
    "smallfiles",
    "prefix",
    "manifest",
    "gpu",
    "driver",
    "billion",
    "engine_start",
    "fleet",
    "footer_client",
    "wide_files",
    "commits",
    "service_state",
    "service_memory",
    "refused_request",
    "arrow_inputs",
    "node_copies",
)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print(f"usage: python -m bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    name = sys.argv.pop(1)
    return importlib.import_module(f"bench.{name}").main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
