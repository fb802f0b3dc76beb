#!/usr/bin/env bash
# The accelerator suite: DP step models at B=256, a >=100M-parameter transformer (eDP vs plain,
# time and peak memory), 16 vmapped shadow models vs one, the FL round at 1,024 and 10,000
# clients; one JSON file of results. <= 10 minutes on one H200; --tiny runs on CPU (CI).
#
#   pip install -U "jax[cuda12]"                      # on the GPU host, as the README says
#   bench/accelerator_suite.sh --out=/tmp/suite.json
#   bench/accelerator_suite.sh --tiny --out=/tmp/tiny.json
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -f .venv/bin/activate && -z "${VIRTUAL_ENV:-}" ]]; then
  . .venv/bin/activate
fi
exec python bench/accelerator_suite.py "$@"
