#!/usr/bin/env bash
# Single entry point of the DSB2018 nucleus-segmentation pipeline.
#
#   ./run.sh                 the main job: data -> train -> predict -> check -> score
#   ./run.sh test [ARGS]     the test suite (ARGS go to pytest)
#   ./run.sh STAGE [OPTIONS] one stage: python -m pipeline STAGE [OPTIONS]
#   ./run.sh --help          list the stages
#
# Works from any directory. On first use it creates .venv beside this script with the
# pinned dependencies of requirements.lock; later calls reuse it and install nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
LOCK="$ROOT/requirements.lock"
STAMP="$VENV/.requirements.lock"

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3.10 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))'; then
      echo "$candidate"
      return 0
    fi
  done
  echo "run.sh: needs Python 3.10 to 3.13 (TensorFlow 2.21); set PYTHON=/path/to/python" >&2
  return 1
}

venv_runs() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c '' 2>/dev/null
}

ensure_venv() {
  if venv_runs && [ -f "$STAMP" ] && cmp -s "$LOCK" "$STAMP"; then
    return 0
  fi
  local python
  python="$(find_python)"
  if [ -L "$VENV" ] && [ ! -e "$VENV" ]; then
    echo "run.sh: $VENV is a link to nowhere; removing it" >&2
    rm "$VENV"
  fi
  if [ ! -e "$VENV" ]; then
    echo "run.sh: creating $VENV (first run; installs the pinned dependencies, a few minutes)" >&2
    "$python" -m venv "$VENV"
  elif ! venv_runs; then
    # A copied or moved checkout, or a removed Python, leaves links to nowhere.
    echo "run.sh: $VENV is broken (its python does not run); making it again" >&2
    "$python" -m venv --clear "$VENV"
  else
    echo "run.sh: requirements.lock changed; updating $VENV" >&2
  fi
  if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$LOCK"; then
    echo "run.sh: error: installing requirements.lock into $VENV failed (see above); check" \
      "the connection to the package index and run again" >&2
    exit 1
  fi
  cp "$LOCK" "$STAMP"
}

ensure_venv
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# TensorFlow's C++ start-up chatter is not for users; errors still show.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}"

if [ "${1:-}" = "test" ]; then
  shift
  cd "$ROOT"
  exec "$VENV/bin/python" -m pytest "$@"
fi
exec "$VENV/bin/python" -m pipeline "$@"
