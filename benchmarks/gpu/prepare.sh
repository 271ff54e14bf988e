#!/usr/bin/env bash
# Prepare here, before a lease (plan v4), what the lease carries (not committed; .gitignore has it):
#   .whl/      wheels the device image lacks (it has torch, transformers, accelerate, peft, safetensors, pytest; not diffusers)
# and checks that the tree plus it stays under the device tool's 64 MiB. (v3 also carried the dataset's npm tarballs in
# .gpu/npm/ to train the default model; v4 trains nothing.)
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==10.2.0
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
extra=$(du -cb .whl | tail -1 | cut -f1)
echo "tree $((tree / 1048576)) MiB + carried $((extra / 1048576)) MiB = $(((tree + extra) / 1048576)) MiB (limit 64)"
[ $((tree + extra)) -lt $((64 * 1048576)) ] || { echo "over the 64 MiB a call may carry"; exit 1; }
