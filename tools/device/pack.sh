#!/usr/bin/env bash
# Packs build/bin and the shared libraries it needs that a bare GPU machine lacks (Abseil, ICU,
# PCRE2, sentencepiece, OpenMP, Gloo and its verbs libraries, CUPTI for trace_prefill) into .carry/gpu.tar.xz, for the device tool's `carry`.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
rm -rf .carry && mkdir -p .carry/stage/lib
cp -a "$build/bin" .carry/stage/bin
# The process-group probe that the dist tests launch (they name it by its build path).
if [ -x "$build/tests/dist/dist_allreduce_probe" ]; then
  mkdir -p .carry/stage/tests/dist && cp -a "$build/tests/dist/dist_allreduce_probe" .carry/stage/tests/dist/
fi
# PACK_EXCLUDE: a regex of binaries to leave behind (the carry is limited to 64 MiB with the tree).
if [ -n "${PACK_EXCLUDE:-}" ]; then
  find .carry/stage/bin -maxdepth 1 -type f | grep -E "$PACK_EXCLUDE" | xargs -r rm -f
fi
for f in .carry/stage/bin/*; do ldd "$f" 2>/dev/null || true; done | awk '/=> \//{print $3}' | sort -u |
  grep -E 'absl|icu|pcre2|sentencepiece|gomp|protobuf|toml|cupti|gloo|hiredis|ibverbs|libnl' | xargs -r -I{} cp -L {} .carry/stage/lib/
# A large xz window lets the copies of one fatbin in every test binary compress to one.
XZ_OPT="-9 --lzma2=preset=9,dict=512MiB" tar -C .carry/stage -cJf .carry/gpu.tar.xz $(cd .carry/stage && ls -d bin lib tests 2>/dev/null)
rm -rf .carry/stage
# The Qwen2.5 tokenizer for the GPU machine's eval benchmarks (tools/bench_eval.py finds it there).
shared_tok="${RT_SHARED_DATA_DIR:-../shared/data}/qwen2.5-tokenizer"
if [ -f "$shared_tok/tokenizer.json" ]; then mkdir -p .carry/tokenizer && cp "$shared_tok"/tokenizer*.json .carry/tokenizer/; fi
# WikiText-2's test text: the needle-in-a-haystack haystack of the GPU eval step.
shared_wiki="${RT_SHARED_DATA_DIR:-../shared/data}/wikitext-2/test.txt"
if [ -f "$shared_wiki" ]; then mkdir -p .carry/data && cp "$shared_wiki" .carry/data/wikitext-2-test.txt; fi
du -h .carry/gpu.tar.xz
