#!/usr/bin/env bash
# The README's test command: install what is needed, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
. .venv/bin/activate
python -m pytest -q "$@"
