#!/usr/bin/env bash
# tools/prune_study.py end to end on the tiny real-vocabulary fixture (as an L2A model through
# --attention l2a_dense): the unpruned row and one row per fraction, KV saved growing with the
# pruned layers, every column filled.
set -euo pipefail
runtime=$1 root=$2 shared=$3
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
fx=$root/tests/fixtures/eval
python3 "$root/tools/prune_study.py" --runtime "$runtime" --model "$fx/model" --attention l2a_dense \
  --set window=16 --tokenizer "$shared/qwen2.5-tokenizer" --data "$fx/data/ppl.txt" --seq 64 --profile-seq 128 --decode-tokens 4 --fractions 0.5,1.0 \
  --eval-data "piqa=$fx/data/piqa.jsonl" --out "$out/study" > "$out/log" 2>&1 || { cat "$out/log"; exit 1; }
t=$out/study/prune_study.csv
[ "$(wc -l < "$t")" -eq 4 ] || { echo "expected 3 rows"; cat "$t"; exit 1; }
head -1 "$t" | grep -q '^variant,pruned layers,KV MiB @128,KV saved,decode tok/s' || { echo "bad header"; cat "$t"; exit 1; }
grep -q '^unpruned,-,' "$t" || { echo "no unpruned row"; cat "$t"; exit 1; }
grep -q '^prune_50pct,[01],' "$t" || { echo "half of 2 layers is 1 layer"; cat "$t"; exit 1; }
grep -q '^prune_100pct,"0,1",.*,100.0%,' "$t" || { echo "all layers pruned: no global KV at 128K"; cat "$t"; exit 1; }
! grep -q ',-,\|,-$' <(tail -n +2 "$t" | cut -d, -f3-) || { echo "an empty column"; cat "$t"; exit 1; }
for m in "$out"/study/models/*; do [ -f "$m/config.json" ] || { echo "no model in $m"; exit 1; }; done
echo "prune study: ok"
