#!/usr/bin/env bash
# One-step set-up on a fresh machine: the built-in dataset, torch without a CUDA download on CPU machines,
# and hf_scdd with its test extras (editable). Safe to rerun; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. Fashion-MNIST, the built-in default dataset (Debian package; the loader falls back to the Hub).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
      || echo "install.sh: could not apt-get dataset-fashion-mnist; the loader will try the Hub copy" >&2
  fi
fi

# 2. torch: keep the user's own build; on a machine without an NVIDIA GPU take the CPU wheel
#    (torch==2.13.0 here), so that the bare `torch` requirement never pulls a multi-GB CUDA build.
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q torch
  else
    python -m pip install -q "torch==2.13.0"
  fi
fi

# 3. the library and its test dependencies
python -m pip install -q -e ".[test]"
