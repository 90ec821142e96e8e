#!/usr/bin/env bash
# The test command: set up everything the suite needs, then lint, type-check and run pytest.
# Extra arguments go to pytest (for example: bash scripts/test.sh -k sqlite -x).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/venv.sh all,test,integrations
venv=${KVSESSIONS_VENV:-$root/.venv}
bash scripts/services.sh
if [ -f scripts/redis-cluster.sh ]; then bash scripts/redis-cluster.sh start; fi
"$venv/bin/ruff" check kvsessions
"$venv/bin/mypy" kvsessions
"$venv/bin/python" -m pytest -p no:cacheprovider -n 2 --dist loadgroup "$@"
