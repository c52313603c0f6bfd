#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for a while.
#   bash tools/run_fuzzers.sh [seconds per target, default 180]
# Corpora are kept in fuzz-corpus/<target>/ (git-ignored); crashes land in fuzz-corpus/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-180}
command -v clang++ >/dev/null || { echo "needs clang++ (apt-get install clang libclang-rt-dev)" >&2; exit 2; }
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
  -DCMAKE_CXX_COMPILER=clang++ -DRT_ENABLE_CUDA=OFF -DRT_BUILD_TESTS=OFF -DRT_BUILD_FUZZERS=ON >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target fuzz_safetensors fuzz_tokenizer
for target in fuzz_safetensors fuzz_tokenizer; do
  mkdir -p "fuzz-corpus/$target"
  echo "== $target for ${secs}s"
  "build-fuzz/bin/$target" "fuzz-corpus/$target" -max_total_time="$secs" -rss_limit_mb=4096 \
    -artifact_prefix="fuzz-corpus/$target-" -print_final_stats=1 2>&1 | tail -n 12
done
