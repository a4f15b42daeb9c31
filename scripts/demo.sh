#!/usr/bin/env bash
# Sets up .venv if needed, then runs the end-to-end demo (render -> sample
# frames -> filter -> shards -> train -> generate -> report).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
cd "$root"
exec syncam-data demo --out "${1:-demo-out}" "${@:2}"
