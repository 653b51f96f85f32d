#!/usr/bin/env bash
# Development build: compiles into build/dev and places _core next to the sources, so that
# PYTHONPATH=python imports the working tree. The copy is atomic (rename), so a running
# Python process that has the old module mapped is not disturbed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f build/dev/build.ninja ] && [ ! -f build/dev/Makefile ]; then
  cmake -S . -B build/dev -DACTZIP_BUILD_TESTS=ON \
    -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')"
fi
cmake --build build/dev -j "$(nproc)"
for so in build/dev/_core*.so; do
  cp "$so" "python/actzip/.$(basename "$so").tmp"
  mv -f "python/actzip/.$(basename "$so").tmp" "python/actzip/$(basename "$so")"
done
