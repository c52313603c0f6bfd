#!/usr/bin/env bash
# Builds sdk/examples/chunked_attention out of tree against the installed SDK, loads it into the
# runtime, and checks its numbers: with one chunk covering the whole sequence it must equal
# full_causal; with small chunks it must differ.
set -euo pipefail
build=$1 src=$2 fixtures=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cmake --install "$build" --component sdk --prefix "$work/prefix" >/dev/null
cmake -S "$src/sdk/examples/chunked_attention" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" \
  -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/build" >/dev/null
plugin="$work/build/libexample_chunked.so"

runtime="$build/bin/runtime"
"$runtime" plugins --plugin "$plugin" | grep -q "example_chunked"
model="$fixtures/models/gqa_untied_f32"
ids=3,141,59,26,5,35,89,79,32,38,46,26
"$runtime" logits --model "$model" --ids $ids --out "$work/full.npy" 2>/dev/null
"$runtime" logits --model "$model" --ids $ids --plugin "$plugin" --attention example_chunked --set chunk=64 \
  --out "$work/one_chunk.npy" 2>/dev/null
"$runtime" logits --model "$model" --ids $ids --plugin "$plugin" --attention example_chunked --set chunk=4 \
  --out "$work/chunks.npy" 2>/dev/null

python3 - "$work/full.npy" "$work/one_chunk.npy" "$work/chunks.npy" <<'PY'
import struct, sys, math
def load(path):
    raw = open(path, "rb").read()
    hlen = struct.unpack("<H", raw[8:10])[0]
    data = raw[10 + hlen:]
    return struct.unpack("<%df" % (len(data) // 4), data)
full, one, chunks = (load(p) for p in sys.argv[1:])
def rel(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b))) / math.sqrt(sum(y * y for y in b))
e1, e2 = rel(one, full), rel(chunks, full)
print(f"one chunk vs full_causal: rel err {e1:.3g}; chunk=4 vs full_causal: {e2:.3g}")
assert e1 < 1e-6, "one chunk must equal full causal attention"
assert e2 > 1e-3, "chunked attention must differ from full causal attention"
PY
# generate needs decode support, which this plugin does not declare.
if "$runtime" generate --model "$model" --ids 1,2 --print-ids --plugin "$plugin" --attention example_chunked \
  2>"$work/err"; then
  echo "generate accepted a plugin without decode support" >&2; exit 1
fi
grep -q "no decode support" "$work/err"
echo "example plugin OK"
