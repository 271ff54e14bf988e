#!/usr/bin/env bash
# Prepare here, before a lease, what the lease carries (neither folder is committed; .gitignore has both):
#   .whl/      wheels the device image lacks (it has torch, transformers, accelerate, peft, safetensors, pytest; not diffusers)
#   .gpu/npm/  the dataset's two npm tarballs (`latentdiff data emoji --tarballs`), 22.5 MB
# and checks that the tree plus both stays under the device tool's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../../.."
mkdir -p .whl .gpu/npm
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==10.2.0
src=${NPM_CACHE:-$HOME/.cache/latentdiff/npm}
for pkg in @lobehub/fluent-emoji-3d@1.1.0 emojibase-data@17.0.0; do
  name=$(echo "${pkg%@*}" | sed 's#^@##; s#/#-#')-${pkg##*@}.tgz
  if [ -f ".gpu/npm/$name" ]; then continue; fi
  if [ -f "$src/$name" ]; then cp "$src/$name" .gpu/npm/; else (cd .gpu/npm && npm pack -q "$pkg" >/dev/null); fi
done
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
extra=$(du -cb .whl .gpu | tail -1 | cut -f1)
echo "tree $((tree / 1048576)) MiB + carried $((extra / 1048576)) MiB = $(((tree + extra) / 1048576)) MiB (limit 64)"
[ $((tree + extra)) -lt $((64 * 1048576)) ] || { echo "over the 64 MiB a call may carry"; exit 1; }
