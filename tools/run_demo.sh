#!/usr/bin/env bash
# The README's main command: install, then synthetic data -> prepare -> train -> eval -> export
# -> render, printing the metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
. .venv/bin/activate
tpvkit demo --work-dir "${1:-work_dirs/demo}"
