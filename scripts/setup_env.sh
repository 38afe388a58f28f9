#!/bin/sh
# Creates (or reuses) the virtual environment $1 and installs rnnlab with its dev extras.
# Where the environment has no torch yet, install the CPU build: the PyTorch CPU index is named
# as an extra index so that a "+cpu" wheel wins over PyPI's multi-GB CUDA build; where that index
# cannot be reached, pip goes on with the indexes it has (on machines with a local CPU wheel).
set -eu
venv="${1:-.venv}"
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip="$venv/bin/python -m pip"
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    $pip install --retries 0 --timeout 15 \
        --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
fi
$pip install -e ".[dev]"
touch "$venv/.installed"
