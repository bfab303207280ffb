#!/usr/bin/env bash
# Prints the path of a Python virtual environment holding the PyPI tools the checks use
# (scripts/requirements-ci.txt, pinned), creating or updating it first. It lives under
# target/ (ignored by git), so a clean clone builds its own.
#   venv=$(scripts/pyenv.sh) && "$venv/bin/st" --version
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${OFFBOARD_VENV:-$PWD/target/venv}"
req=scripts/requirements-ci.txt
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  echo "$want" >"$stamp"
fi
echo "$venv"
