#!/usr/bin/env bash
# Build (once) the Home Assistant core venv that tests/mqtt/test_homeassistant_live.py runs.
#
# HA pins every dependency in its own package_constraints.txt (shipped inside the wheel);
# installing with it as a constraints file avoids pip's resolver backtracking for minutes.
# The venv is cached under ~/.cache/feederd-tests/ha-<version> and marked complete only at
# the end, so an interrupted build is thrown away and redone on the next call.
#
# Usage: tools/ha-venv.sh            -> prints the venv's path
# Env:   FEEDERD_HA_VERSION (default 2025.4.4), FEEDERD_HA_PYTHON (a Python >= 3.13),
#        FEEDERD_TEST_CACHE (default ~/.cache/feederd-tests)
set -euo pipefail

version="${FEEDERD_HA_VERSION:-2025.4.4}"
cache="${FEEDERD_TEST_CACHE:-$HOME/.cache/feederd-tests}"
venv="$cache/ha-$version"
# What the test loads beyond HA's core requirements (hass runs with --skip-pip, so nothing
# is installed at run time): the MQTT integration, and the frontend, without which HA starts
# in recovery mode. Versions are HA 2025.4's own manifest pins.
extra=(paho-mqtt==2.1.0 home-assistant-frontend==20250411.0)

if [ -f "$venv/.complete" ]; then
  echo "$venv"
  exit 0
fi

find_python() {
  local candidate
  for candidate in "${FEEDERD_HA_PYTHON:-}" python3.13 /root/.pyenv/versions/3.13.0/bin/python3 \
      "$HOME/.pyenv/versions/3.13.0/bin/python3"; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

if ! python="$(find_python)"; then
  echo "tools/ha-venv.sh: no Python >= 3.13 found (set FEEDERD_HA_PYTHON)" >&2
  exit 1
fi

mkdir -p "$cache"
exec 9>"$cache/.ha-$version.lock"
flock 9
if [ -f "$venv/.complete" ]; then  # another build finished while we waited
  echo "$venv"
  exit 0
fi

start=$(date +%s)
rm -rf "$venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)
"${pip[@]}" install --upgrade pip >&2
wheels="$venv/.wheel"
"${pip[@]}" download --no-deps "homeassistant==$version" -d "$wheels" >&2
"$venv/bin/python" - "$wheels" "$venv/constraints.txt" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("homeassistant-*.whl"))
with zipfile.ZipFile(wheel) as zf:
    pathlib.Path(sys.argv[2]).write_bytes(zf.read("homeassistant/package_constraints.txt"))
PY
"${pip[@]}" install -c "$venv/constraints.txt" "$wheels"/homeassistant-*.whl "${extra[@]}" >&2
rm -rf "$wheels"
"$venv/bin/hass" --version >/dev/null
touch "$venv/.complete"
echo "tools/ha-venv.sh: built $venv in $(( $(date +%s) - start )) s" >&2
echo "$venv"
