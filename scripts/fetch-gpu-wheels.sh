#!/usr/bin/env bash
# Fetch what scripts/gpu-acceptance.sh installs on a lent GPU machine that reaches no registry:
# the bitsandbytes wheel (CUDA kernels included, about 43 MB) and plotly with narwhals (for
# --timeline), into the git-ignored folder wheels/ (about 53 MB: under the 64 MiB that travels
# with the tree).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p wheels
python3 -m pip download -q --no-deps -d wheels "bitsandbytes==0.50.2" "plotly>=5" narwhals
ls -l wheels
