#!/usr/bin/env bash
# Set up everything this project needs on a fresh Debian machine with Python 3.11:
# the virtual environment .venv with the CPU build of torch 2.13.0 and the package (editable,
# with the test, release and distributed extras), and with --gui the system libraries for Qt under Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--gui" ]; then
  pkgs=(xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-randr0
        libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1
        libdbus-1-3 libfontconfig1)
  missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade uv
links=()
if [ -n "${PIP_FIND_LINKS:-}" ]; then links=(--find-links "$PIP_FIND_LINKS"); fi
# torch is pinned here (and in CI) only; pyproject.toml asks for torch>=2.4.  Bytecode is compiled
# at install time: the tests start many Python processes (torchrun, dask workers, the CLI), and
# each would otherwise compile torch's sources again where .pyc files are not written.
.venv/bin/python -m uv pip install -q --compile-bytecode --python .venv/bin/python "${links[@]}" \
  "torch==2.13.0" -e ".[testing,release,distributed]"
