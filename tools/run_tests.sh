#!/usr/bin/env bash
# Installs actzip with its test extras, then runs every test: the C++ tests (ctest) and
# the Python tests (pytest). This is the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install ".[test]"
cmake -S . -B build/cpp-tests -DACTZIP_BUILD_TESTS=ON -DACTZIP_PYTHON=OFF -DCMAKE_BUILD_TYPE=Release
cmake --build build/cpp-tests -j "$(nproc)"
ctest --test-dir build/cpp-tests --output-on-failure
# Run from a folder without python/ on sys.path, so the installed package is tested.
python -m pytest -c pyproject.toml --rootdir . tests/python "$@"
