#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs SynCam with every extra, once.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it only
# reinstalls when pyproject.toml changed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SYNCAM_VENV:-$root/.venv}"

pick_python() {
  for py in "${PYTHON:-}" python3.11 python3 python; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$py"; return 0
    fi
  done
  echo "SynCam needs Python 3.11 (bpy 5.0.1 is built for 3.11 only); set PYTHON=/path/to/python3.11" >&2
  return 1
}

if [ ! -x "$venv/bin/python" ]; then
  py="$(pick_python)"
  echo "[setup] creating $venv with $py" >&2
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

# pip, minus the noise about local index folders that this machine's pip.conf lists but lacks.
run_pip() {
  local log status=0
  log="$(mktemp)"
  "${pip[@]}" "$@" >"$log" 2>&1 || status=$?
  grep -v -e "is ignored: it is neither a file nor a directory" "$log" >&2 || true
  rm -f "$log"
  return "$status"
}

# segment-anything imports torchvision; the only pair that imports together on
# these machines is torch 2.14.1 + torchvision 0.29.1, so install it first.
if ! "$venv/bin/python" -c 'import torch, torchvision' >/dev/null 2>&1; then
  echo "[setup] installing torch==2.14.1 torchvision==0.29.1 (about a minute from local disk)" >&2
  run_pip install -q torch==2.14.1 torchvision==0.29.1
fi

stamp="$venv/.syncam-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing syncam[all] into $venv (one resolver run: bpy, OpenCV and numpy agree)" >&2
  run_pip install -q -e "$root[all]"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
