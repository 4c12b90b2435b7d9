#!/usr/bin/env bash
# Create .venv (if missing) and install tpvkit with its test tools into it.
# torch is installed first and pinned so that pip never trades a working (CPU or CUDA) torch for
# a different build; an already-importable torch in the venv is kept as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>/dev/null || true
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==${TPVKIT_TORCH_VERSION:-2.13.0}"
fi
# setuptools prints a 10-line note ("Editable installation ... be careful with folders") on every
# editable install, of any project; it goes to a log that is shown only if the install fails.
log=.venv/install-tpvkit.log
if ! python -m pip install -q -e ".[dev]" >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
python -c "import torch, tpvkit; print(f'tpvkit {tpvkit.__version__} on torch {torch.__version__}')"
