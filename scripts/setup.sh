#!/usr/bin/env bash
# Create .venv in the repository root and install this project into it (editable), with the extras of the
# main job's figures and of the tests.
#
#   bash scripts/setup.sh            # torch 2.14.1 + torchvision 0.29.1 (the tested pair)
#   TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" bash scripts/setup.sh   # another pair (e.g. aarch64)
#
# fairseq-fixed is built from source against the installed torch, so its build dependencies are
# installed first and the build runs without isolation (an isolated build would fetch a second torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip --disable-pip-version-check"
$PIP install -q $TORCH_SPEC
$PIP install -q "cython>=3" wheel "numpy>=1.24" "setuptools>=68"
$PIP install -q --no-build-isolation -e ".[synth,test]"
.venv/bin/python -c "import ofa, torch; print(f'ofa {ofa.__version__} installed with torch {torch.__version__}')" 2>&1 | tail -1
