#!/usr/bin/env bash
# Create (or reuse) the project virtualenv in .venv, install the project into it editable (`pip install -e .[test]`:
# requirements.txt, requirements-test.txt and this checkout's packages), and the Fashion-MNIST package.
# Sourced by scripts/quickstart.sh and scripts/test.sh; safe to run repeatedly.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# The stamp holds the checkout the venv's editable install points at: install again for another checkout, or when
# the requirements or pyproject.toml changed since.
stamp="$venv/.requirements-installed"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$repo" ] || [ "$repo/requirements.txt" -nt "$stamp" ] \
    || [ "$repo/requirements-test.txt" -nt "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e "$repo[test]"
  echo "$repo" > "$stamp"
fi
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
export PATH="$venv/bin:$PATH"
