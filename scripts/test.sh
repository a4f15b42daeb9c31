#!/usr/bin/env bash
# Sets up .venv if needed, checks the style (ruff: formatting, then lint rules; a few seconds), then runs the
# whole test suite. Extra arguments go to pytest. CI runs this script, so style drift fails CI like a test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
cd "$root"
python -m ruff format --check .
python -m ruff check .
exec python -m pytest -q "$@"
