#!/usr/bin/env bash
# tools/run_study.py end to end on the tiny real-vocabulary fixture: Table 2 has the three rows and
# the requested columns, and a sparsity for the L2A row.
set -euo pipefail
runtime=$1 root=$2 shared=$3
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
fx=$root/tests/fixtures/eval
python3 "$root/tools/run_study.py" --study replication --runtime "$runtime" --model "$fx/model" \
  --tokenizer "$shared/qwen2.5-tokenizer" --train-data "$fx/data/ppl.txt" --eval-data "ppl=$fx/data/ppl.txt" \
  --eval-data "piqa=$fx/data/piqa.jsonl" --eval-data "niah=$shared/wikitext-2/test.txt" --niah-lengths 100 \
  --eval-seq 64 --steps 2 --set train.seq_len=32 --set train.batch_size=1 --set attention.window=16 \
  --out "$out/study" > "$out/log" 2>&1 || { cat "$out/log"; exit 1; }
t=$out/study/table2.csv
head -1 "$t" | grep -qx 'model,PPL,PIQA,NIAH,sparsity' || { echo "bad header"; cat "$t"; exit 1; }
[ "$(wc -l < "$t")" -eq 4 ] || { echo "expected 3 rows"; cat "$t"; exit 1; }
grep -q '^SWA (W = 16),' "$t" || { echo "SWA row must use the window given"; cat "$t"; exit 1; }
grep -Eq '^L2A \(replication\),.*,0\.[0-9]{3}$' "$t" || { echo "L2A row needs a sparsity"; cat "$t"; exit 1; }
grep -q '| Baseline (full attention) |' "$out/study/table2.md"
echo "study command: ok"
