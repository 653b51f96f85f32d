#!/usr/bin/env bash
# Longer fuzz campaigns than the test suite runs, for before a release or after a change to
# the decoder:
#   1. the C++ stream-corruption test (tests/cpp/test_format.cpp) built with AddressSanitizer
#      and UBSan into build/asan, once per seed;
#   2. the Python decoder worker of tests/python/test_codec_fuzz.py (truncations, mutations
#      with and without a fixed header checksum, garbage) on the actzip that Python imports.
# Usage: tools/fuzz.sh [TRIALS] [SEED...]   (default: 20000 trials or mutations, seeds 1 2 3)
# A failing Python stream is kept in build/fuzz/last.azip. Exits non-zero on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
trials="${1:-20000}"
shift || true
seeds=("$@")
if [ ${#seeds[@]} -eq 0 ]; then seeds=(1 2 3); fi

cmake -S . -B build/asan -DACTZIP_BUILD_TESTS=ON -DACTZIP_PYTHON=OFF -DACTZIP_SANITIZE=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build build/asan -j "$(nproc)" --target test_format
for seed in "${seeds[@]}"; do
  echo "C++ under ASan/UBSan, seed ${seed}, ${trials} trials a stream"
  ACTZIP_FUZZ_SEED="${seed}" ACTZIP_FUZZ_TRIALS="${trials}" \
    build/asan/tests/cpp/test_format payload_corruption_without_checksum_never_crashes
done
echo "Python decoder worker, seeds ${seeds[*]}, ${trials} mutations a seed"
python tests/python/test_codec_fuzz.py --keep build/fuzz --mutations "${trials}" --seeds "${seeds[@]}"
