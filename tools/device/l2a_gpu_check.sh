#!/usr/bin/env bash
# On the GPU machine (device tool), after `source tools/device/unpack.sh`: the CUDA tests of the
# routed kernels, l2a_fused and the kernels they share, then the benchmarks. Logs and JSON to $OUT.
#   bash tools/device/l2a_gpu_check.sh fwdpaths variants decodeprof fwdprof bwdprof concurrent bwdunordered bwdtall bwdfuseddq bwdpaths tests verify nccl kernels \
#        kernels15 model decode prune eval evalall train gemmtune trainleak trainhf memory fit trace anchors bundle
# (any subset, run in the order given; `bundle` last packs $OUT into results.tgz, as the device tool brings
# back 8 files). SEQS overrides the kernel sequence lengths, ANCHOR_SEQS the anchors' (ANCHOR_HF=1 adds HF
# transformers' prefill). `fwdpaths` runs the
# forward-kernel tests under each forward path (RT_ATTN_FWD=wgmma: the Hopper kernel; mma: the
# mma.sync kernel of sm_89; FWD_PATHS picks), a compute-sanitizer pass, and times both paths against cuDNN.
# `bwdpaths` does the same for the deterministic backward (RT_ATTN_BWD=wgmma: the Hopper dK/dV and dQ kernels),
# `bwdtall` for the 128 x 128 dK/dV tile at head dim 64 (the default; RT_ATTN_HOPPER_BWD_TALL=0: 128 x 64),
# `bwdfuseddq` for its dQ fused in key-block order (the default; RT_ATTN_HOPPER_BWD_FUSED_DQ=0 runs
# the dQ pass). `fwdprof` profiles the causal and window forward kernels (ncu), `bwdprof` and
# `decodeprof` profile the backward kernels (ncu) and a decode step (CUPTI trace of graph replays).
# TEST_TIMEOUT bounds each test binary (default 300 s); TESTS picks the `tests` step's binaries.
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
has() { [[ " $* " == *" $step "* ]]; }
# The key lines of an ncu details page (`ncu -i REP --page details --print-details all` saved in $1):
# time, throughputs, issue slots, occupancy, size, and the stall and speedup notes.
ncu_summary() {
  grep -E "^ +(Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Hit Rate|DRAM Throughput|Issue Slots Busy|No Eligible|Warp Cycles Per Issued Instruction|Achieved Occupancy|Registers Per Thread|Grid Size|Waves Per SM|Executed Instructions )" "$1"
  grep -iE "stall|est\. speedup|imbalance|tail" "$1" | cut -c1-240 | head -14
}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
# A Hopper backward variant behind the switch $2 (off $3, on $4), under the name $1: the backward
# tests with it on, compute-sanitizer (memcheck, synccheck, racecheck with it on; racecheck off too,
# to tell a report of the variant from one of what both share), then both timed: the kernels and
# L2A attention at 80% (the window and the routed causal rows both take the Hopper backward).
backward_variant() {
  local name=$1 var=$2 off=$3 on=$4 log="$out/$1.txt"
  : > "$log"
  for t in test_attention_backward test_routed_attention test_l2a_fused test_cuda_training_ops test_backend_ops; do
    env RT_ATTN_BWD=wgmma $var=$on timeout ${TEST_TIMEOUT:-300} build/bin/$t --gtest_brief=1 > /tmp/$t.$name.log 2>&1
    echo "$t $var=$on rc=$? $(grep -E '^\[  (PASSED|FAILED)' /tmp/$t.$name.log | tr '\n' ' ')" | tee -a "$log"
    grep -B3 -A12 "Failure" /tmp/$t.$name.log | head -40 >> "$log"
  done
  for run in memcheck:$on synccheck:$on racecheck:$on racecheck:$off; do
    local tool=${run%:*} val=${run#*:}
    env RT_ATTN_BWD=wgmma $var=$val timeout 150 compute-sanitizer --tool $tool --error-exitcode 9 \
      build/bin/test_attention_backward --gtest_brief=1 --gtest_filter="${SAN_FILTER:-*CausalSizes*:*Offsets*}" \
      > /tmp/san.$name.$tool.log 2>&1
    echo "compute-sanitizer $tool ($var=$val) rc=$? $(grep -E 'ERROR SUMMARY' /tmp/san.$name.$tool.log)" | tee -a "$log"
    grep -m5 -A6 "=========" /tmp/san.$name.$tool.log | head -30 >> "$log"
  done
  for val in $off $on; do
    env RT_ATTN_BWD=wgmma $var=$val timeout 200 build/bin/bench_attention_bwd --seqs ${SEQS:-16384,32768} \
      --window 2048 --json "$out/${name}_$val.json" > "$out/${name}_$val.txt" 2>&1
    echo "== $var=$val"; head -9 "$out/${name}_$val.txt"
    env RT_ATTN_BWD=wgmma $var=$val timeout 150 build/bin/runtime profile --attention swa \
      --model qwen2.5-0.5b --init random --window 2048 --seq 32768,65536 --sparsity 0.8 --device cuda \
      --kernels-only --repeats 3 --json "$out/${name}_l2a_$val.json" > "$out/${name}_l2a_$val.txt" 2>&1
    grep -A4 "^L2A attention" "$out/${name}_l2a_$val.txt"
  done | tee -a "$log"
}
FUSED_SET="--set l2a_fused.router=fixed_rate --set l2a_fused.sparsity=0.8"
DENSE_SET="--set l2a_dense.router=fixed_rate --set l2a_dense.sparsity=0.8"
for step in "$@"; do
  case $step in
  fwdpaths)
    : > "$out/fwdpaths.txt"
    for path in ${FWD_PATHS:-wgmma mma}; do
      for t in test_flash_attention test_routed_attention test_l2a_fused test_cuda_model; do
        RT_ATTN_FWD=$path timeout ${TEST_TIMEOUT:-300} build/bin/$t --gtest_brief=1 > /tmp/$t.$path.log 2>&1
        echo "$t RT_ATTN_FWD=$path rc=$? $(grep -E '^\[  (PASSED|FAILED)' /tmp/$t.$path.log | tr '\n' ' ')" |
          tee -a "$out/fwdpaths.txt"
        grep -B3 -A12 "Failure" /tmp/$t.$path.log | head -40 >> "$out/fwdpaths.txt"
      done
    done
    for tool in memcheck synccheck; do
      RT_ATTN_FWD=wgmma timeout 90 compute-sanitizer --tool $tool --error-exitcode 9 build/bin/test_flash_attention \
        --gtest_brief=1 --gtest_filter="*RowsThatSeeNothing*:*NonFinite*" > /tmp/san.$tool.log 2>&1
      echo "compute-sanitizer $tool rc=$? $(grep -E 'ERROR SUMMARY' /tmp/san.$tool.log)" | tee -a "$out/fwdpaths.txt"
      grep -m5 -A6 "=========" /tmp/san.$tool.log | head -30 >> "$out/fwdpaths.txt"
    done
    for path in wgmma mma; do
      RT_ATTN_FWD=$path timeout 200 build/bin/bench_attention --seqs ${SEQS:-4096,16384,32768,65536} --window 2048 \
        --json "$out/flash_$path.json" > "$out/flash_$path.txt" 2>&1
      echo "== RT_ATTN_FWD=$path"; cat "$out/flash_$path.txt"
    done | tee -a "$out/fwdpaths.txt"
    VARIANTS="RT_ATTN_HOPPER_D64_WG=2;RT_ATTN_HOPPER_D64_WG=3" bash "$0" variants
    timeout 200 build/bin/bench_cudnn_sdpa --seqs ${SEQS:-4096,16384,32768,65536} --window 2048 \
      > "$out/cudnn.txt" 2>&1
    cat "$out/cudnn.txt" | tee -a "$out/fwdpaths.txt"
    ;;
  variants)  # forward experiments against the default (VARIANTS: env settings, ';'-separated): the 128- or
             # 192-row tile at D = 64 forced (two or three consumer warpgroups; the default picks by length)
             # and the persistent CTA schedule
    : > "$out/variants.txt"
    IFS=';' read -ra vs <<< "${VARIANTS:-RT_ATTN_HOPPER_D64_WG=2;RT_ATTN_HOPPER_D64_WG=3;RT_ATTN_HOPPER_PERSISTENT=1}"
    for v in "${vs[@]}"; do
      tag=$(echo "$v" | tr ' =' '_-')
      for t in ${VARIANT_TESTS:-test_flash_attention test_routed_attention}; do
        env $v timeout ${TEST_TIMEOUT:-300} build/bin/$t --gtest_brief=1 > /tmp/$t.$tag.log 2>&1
        echo "$t $v rc=$? $(grep -E '^\[  (PASSED|FAILED)' /tmp/$t.$tag.log | tr '\n' ' ')" | tee -a "$out/variants.txt"
        grep -B3 -A12 "Failure" /tmp/$t.$tag.log | head -40 >> "$out/variants.txt"
      done
    done
    for v in "" "${vs[@]}"; do
      tag=$(echo "${v:-default}" | tr ' =' '_-')
      env $v timeout 200 build/bin/bench_attention --seqs ${SEQS:-4096,16384,32768,65536} --window 2048 \
        --json "$out/flash_$tag.json" > "$out/flash_$tag.txt" 2>&1
      { echo "== ${v:-default}"; cat "$out/flash_$tag.txt"; } | tee -a "$out/variants.txt"
    done
    ;;
  decodeprof)  # issue 10: what a decode step's time is made of, full_causal against l2a_fused at 16K: a CUPTI
                # trace of 8 graph-replayed steps (trace_prefill TRACE_DECODE; graph nodes traced one by one)
    : > "$out/decodeprof.txt"
    for args in "full_causal" "l2a_fused window=2048 router=fixed_rate sparsity=0.8" "l2a_fused window=2048 threshold=0.51"; do
      TRACE_DECODE=8 timeout 120 build/bin/trace_prefill 16384 configs/models/qwen2.5-0.5b.json $args \
        >> "$out/decodeprof.txt" 2>&1
      echo "trace_prefill $args rc=$?" | tee -a "$out/decodeprof.txt"
    done
    grep -E "decode steps|span|^    [ 0-9.]+ +[0-9]+  " "$out/decodeprof.txt" | head -80
    ;;
  fwdprof)  # ncu of the Hopper forward at the 0.5B shape (D = 64), T = 32768: the causal and the window-2048
            # kernel in full (what the window's ~390 against causal's ~530 TFLOP/s is: stalls, issue slots,
            # tail); bench_attention runs 0.5B first, launches 0-3 causal (3 warm-ups + 1), 4-7 window
    : > "$out/fwdprof.txt"
    bench="build/bin/bench_attention --seqs 32768 --window 2048 --reps 1 --decode 4096"
    for m in causal:3 window:7; do
      name=${m%:*} skip=${m#*:}
      timeout 150 ncu --kernel-name regex:flash_fwd_hopper --launch-skip $skip --launch-count 1 --set full \
        --import-source yes -o /tmp/fwdprof_$name --force-overwrite $bench > /tmp/fwdprof_run_$name.txt 2>&1
      echo "== $name forward 32K (ncu rc=$?)" | tee -a "$out/fwdprof.txt"
      ncu -i /tmp/fwdprof_$name.ncu-rep --page details --print-details all > "$out/fwdprof_$name.txt" 2>&1
      grep -m1 -E "flash_fwd_hopper" "$out/fwdprof_$name.txt" | cut -c1-200 | tee -a "$out/fwdprof.txt"
      ncu_summary "$out/fwdprof_$name.txt" | tee -a "$out/fwdprof.txt"
    done
    ;;
  bwdprof)  # ncu of the Hopper backward at the 0.5B shape (D = 64), T = PROF_SEQ (default 32768), per mask
            # (PROF_MASKS, default causal, window 2048, routed at 80% unrouted): every kernel of one backward
            # call with its time, DRAM bytes and L2 hit rate (the preprocess, dK/dV, dQ convert: what the
            # window's short rows pay besides the main loop), then the dK/dV kernel in full (warp stalls,
            # tensor pipe, memory; per SASS instruction in bwdprof_<mask>_sass.csv)
    : > "$out/bwdprof.txt"
    for mask in ${PROF_MASKS:-causal window routed}; do
      bench="build/bin/bench_attention_bwd --models 0.5b --masks $mask --seqs ${PROF_SEQ:-32768} --window 2048 --reps 1"
      # the first backward call's launches (the forward's warm-ups come before, under other names)
      RT_ATTN_BWD=wgmma timeout 150 ncu --kernel-name regex:'flash_bwd|zero_kernel' --launch-count 4 --csv \
        --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct \
        $bench > /tmp/bwdprof_$mask.csv 2>&1
      echo "== $mask: one backward call, kernel by kernel (rc=$?)" | tee -a "$out/bwdprof.txt"
      grep -E '^"[0-9]' /tmp/bwdprof_$mask.csv | awk -F'","' '{print $5 " | " $(NF-2) " = " $NF}' |
        sed 's/"$//' | cut -c1-160 | tee -a "$out/bwdprof.txt"
      RT_ATTN_BWD=wgmma timeout 240 ncu --kernel-name regex:'flash_bwd_dkdv' --launch-count 1 --set full \
        --import-source yes -o /tmp/bwdprof_$mask --force-overwrite $bench > /tmp/bwdprof_run_$mask.txt 2>&1
      echo "== $mask: the dK/dV kernel (ncu rc=$?)" | tee -a "$out/bwdprof.txt"
      ncu -i /tmp/bwdprof_$mask.ncu-rep --page details --print-details all > "$out/bwdprof_$mask.txt" 2>&1
      ncu -i /tmp/bwdprof_$mask.ncu-rep --page source --print-source sass --csv > "$out/bwdprof_${mask}_sass.csv" 2>&1
      ncu_summary "$out/bwdprof_$mask.txt" | tee -a "$out/bwdprof.txt"
    done
    ;;
  concurrent)  # L2A's window and routed rows on two streams (Ops::concurrently, the default) against one
              # stream (RT_CUDA_CONCURRENT=0) and against two with the routed branch queued first
              # (RT_CUDA_CONCURRENT_SWAP=1), same call: the concurrency tests (both orders), then L2A
              # attention fwd and fwd+bwd at 32K/64K, the parallel layout's prefill and its training
              # step at 32K (leak 0). CONC_MODES picks among one, two, swap.
    : > "$out/concurrent.txt"
    for swap in 0 1; do
      RT_CUDA_CONCURRENT_SWAP=$swap timeout 120 build/bin/test_cuda_ops --gtest_brief=1 --gtest_filter='*Concurrent*' \
        > /tmp/conc.log 2>&1
      echo "test_cuda_ops *Concurrent* RT_CUDA_CONCURRENT_SWAP=$swap rc=$? $(grep -E '^\[  (PASSED|FAILED)' /tmp/conc.log | tr '\n' ' ')" |
        tee -a "$out/concurrent.txt"
      grep -B3 -A12 "Failure" /tmp/conc.log | head -30 >> "$out/concurrent.txt"
    done
    for mode in ${CONC_MODES:-one two swap}; do
      case $mode in one) c=0 sw=0 ;; two) c=1 sw=0 ;; *) c=1 sw=1 ;; esac
      echo "== $mode: RT_CUDA_CONCURRENT=$c RT_CUDA_CONCURRENT_SWAP=$sw"
      export RT_CUDA_CONCURRENT=$c RT_CUDA_CONCURRENT_SWAP=$sw
      timeout 150 build/bin/runtime profile --attention swa --model qwen2.5-0.5b --init random \
        --window 2048 --seq 32768,65536 --sparsity 0.8 --device cuda --kernels-only --repeats 5 \
        --json "$out/concurrent_l2a_$mode.json" > "$out/concurrent_l2a_$mode.txt" 2>&1
      grep -A3 "^L2A attention" "$out/concurrent_l2a_$mode.txt"
      [ -n "${CONC_KERNELS_ONLY:-}" ] && continue
      timeout 150 build/bin/runtime profile --attention full_causal,l2a_fused \
        --model qwen2.5-0.5b --init random --window 2048 --seq 32768 --device cuda --decode-tokens 4 --repeats 3 \
        $FUSED_SET --set l2a_fused.layout=parallel --json "$out/concurrent_prefill_$mode.json" \
        > "$out/concurrent_prefill_$mode.txt" 2>&1
      tail -4 "$out/concurrent_prefill_$mode.txt"
      timeout 150 python3 tools/bench_train.py --seq 32768 --steps 3 \
        --cases l2a_fused:attention:parallel --l2a-set router=fixed_rate --l2a-set sparsity=0.8 \
        --l2a-set leak_prob=0 --json "$out/concurrent_train_$mode.json" 2>&1 | tail -2
    done | tee -a "$out/concurrent.txt"
    unset RT_CUDA_CONCURRENT RT_CUDA_CONCURRENT_SWAP
    ;;
  bwdunordered)  # what the fused dQ's turn order costs: RT_ATTN_HOPPER_BWD_DQ_UNORDERED=1 adds each
                 # partial as it comes (not deterministic: the bit-identity tests are expected to fail
                 # under it, the accuracy tests not), timed against the default
    backward_variant bwdunordered RT_ATTN_HOPPER_BWD_DQ_UNORDERED 0 1
    ;;
  bwdtall)  # the 128 x 128 dK/dV tile at head dim 64 (the default; RT_ATTN_HOPPER_BWD_TALL=0 is the
            # 128 x 64 one): tests, compute-sanitizer (racecheck: P and dS go through shared memory
            # between the warpgroups), then both timed
    backward_variant bwdtall RT_ATTN_HOPPER_BWD_TALL 0 1
    ;;
  bwdfuseddq)  # the tall tile with dQ fused in key-block order (RT_ATTN_HOPPER_BWD_FUSED_DQ=1) against
               # the dQ pass; the tests include bit-identical reruns, and a deadlock shows as a timeout
    backward_variant bwdfuseddq RT_ATTN_HOPPER_BWD_FUSED_DQ 0 1
    ;;
  bwdpaths)  # the deterministic backward: Hopper kernels (RT_ATTN_BWD=wgmma) against mma.sync
    : > "$out/bwdpaths.txt"
    for path in wgmma mma; do
      tests="test_attention_backward test_routed_attention test_l2a_fused test_cuda_training_ops test_backend_ops"
      for t in $tests; do
        RT_ATTN_BWD=$path timeout ${TEST_TIMEOUT:-300} build/bin/$t --gtest_brief=1 > /tmp/$t.bwd.$path.log 2>&1
        echo "$t RT_ATTN_BWD=$path rc=$? $(grep -E '^\[  (PASSED|FAILED)' /tmp/$t.bwd.$path.log | tr '\n' ' ')" |
          tee -a "$out/bwdpaths.txt"
        grep -B3 -A12 "Failure" /tmp/$t.bwd.$path.log | head -40 >> "$out/bwdpaths.txt"
      done
    done
    for tool in memcheck synccheck; do
      RT_ATTN_BWD=wgmma timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 build/bin/test_attention_backward \
        --gtest_brief=1 --gtest_filter="${SAN_FILTER:-*CausalSizes*:*SlidingWindow*:*Offsets*}" > /tmp/san.bwd.$tool.log 2>&1
      echo "compute-sanitizer $tool (backward) rc=$? $(grep -E 'ERROR SUMMARY' /tmp/san.bwd.$tool.log)" | tee -a "$out/bwdpaths.txt"
      grep -m5 -A6 "=========" /tmp/san.bwd.$tool.log | head -30 >> "$out/bwdpaths.txt"
    done
    for path in wgmma mma; do
      RT_ATTN_BWD=$path timeout 200 build/bin/bench_attention_bwd --seqs ${SEQS:-4096,16384,32768} --window 2048 \
        --json "$out/bwd_$path.json" > "$out/bwd_$path.txt" 2>&1
      echo "== RT_ATTN_BWD=$path"; cat "$out/bwd_$path.txt"
    done | tee -a "$out/bwdpaths.txt"
    ;;
  tests)
    : > "$out/tests.txt"
    for t in ${TESTS:-test_routed_attention test_l2a_fused test_flash_attention test_attention_backward test_cuda_training_ops \
             test_cuda_model test_dense_attention test_cuda_ops test_l2a_reference test_l2a_decode test_backend_ops \
             test_nccl_group test_cuda_score_packed test_memory_limit}; do
      filter='*'
      [[ $t == test_l2a_reference ]] && filter='*Cuda*'
      [[ $t == test_l2a_decode ]] && filter='*GraphReplay*'
      timeout ${TEST_TIMEOUT:-300} build/bin/$t --gtest_brief=1 --gtest_filter="$filter" > /tmp/$t.log 2>&1
      echo "$t rc=$? $(grep -E '^\[  (PASSED|FAILED)' /tmp/$t.log | tr '\n' ' ')" | tee -a "$out/tests.txt"
      grep -B3 -A12 "Failure" /tmp/$t.log | head -60 >> "$out/tests.txt"
    done
    # The tests' sequences are short, so the forward runs its 128-row blocks; from 8192 rows at head
    # dim 64 it runs the 192-row ones (three consumer warpgroups): forced here on the forward's tests.
    for t in ${WG3_TESTS:-test_flash_attention test_routed_attention test_l2a_fused}; do
      [[ " ${TESTS:-$t} " == *" $t "* ]] || continue
      RT_ATTN_HOPPER_D64_WG=3 timeout ${TEST_TIMEOUT:-300} build/bin/$t --gtest_brief=1 > /tmp/$t.wg3.log 2>&1
      echo "$t RT_ATTN_HOPPER_D64_WG=3 rc=$? $(grep -E '^\[  (PASSED|FAILED)' /tmp/$t.wg3.log | tr '\n' ' ')" | tee -a "$out/tests.txt"
      grep -B3 -A12 "Failure" /tmp/$t.wg3.log | head -40 >> "$out/tests.txt"
    done
    # The routed forward's key split (flash_fwd_split.cuh) runs only with few active blocks; forced
    # on every block, the routed tests take its chunks and combine at any size, both block heights.
    for t in test_routed_attention test_l2a_fused; do
      [[ " ${TESTS:-$t} " == *" $t "* ]] || continue
      for wg in 2 3; do
        RT_ATTN_ROUTED_SPLIT=force RT_ATTN_HOPPER_D64_WG=$wg timeout ${TEST_TIMEOUT:-300} build/bin/$t --gtest_brief=1 > /tmp/$t.split.log 2>&1
        echo "$t RT_ATTN_ROUTED_SPLIT=force RT_ATTN_HOPPER_D64_WG=$wg rc=$? $(grep -E '^\[  (PASSED|FAILED)' /tmp/$t.split.log | tr '\n' ' ')" | tee -a "$out/tests.txt"
        grep -B3 -A12 "Failure" /tmp/$t.split.log | head -40 >> "$out/tests.txt"
      done
    done
    timeout 400 build/bin/test_cli_train --gtest_brief=1 --gtest_filter='*Cuda*:*Gpu*:*GPU*' > /tmp/cli.log 2>&1
    echo "test_cli_train (GPU) rc=$? $(grep -E '^\[  (PASSED|FAILED)' /tmp/cli.log | tr '\n' ' ')" | tee -a "$out/tests.txt"
    grep -B3 -A12 "Failure" /tmp/cli.log | head -40 >> "$out/tests.txt"
    ;;
  kernels)
    timeout 300 build/bin/runtime profile --attention ${KERNEL_BACKEND:-full_causal} --model qwen2.5-0.5b --init random --window 2048 \
      --seq ${SEQS:-16384,32768,65536,131072} --sparsity 0.5,0.8,0.9,0.95 --device cuda --kernels-only --repeats 5 \
      --json "$out/kernels_0.5b.json" > "$out/kernels_0.5b.txt" 2>&1
    cat "$out/kernels_0.5b.txt"
    ;;
  kernels15)
    timeout 200 build/bin/runtime profile --attention full_causal --model qwen2.5-1.5b --init random --window 2048 \
      --seq 16384,32768,65536 --sparsity 0.8 --device cuda --kernels-only --repeats 5 \
      --json "$out/kernels_1.5b.json" > "$out/kernels_1.5b.txt" 2>&1
    cat "$out/kernels_1.5b.txt"
    ;;
  verify)  # a short first call after kernel changes: the backward's tests (VERIFY_TESTS), then L2A's
          # kernels at 32K/64K, the training step at 32K (leak 0), SDPA/Flex/official and the MLP
          # backward's ops (bench_cuda_ops) in one call
    for t in ${VERIFY_TESTS:-test_attention_backward test_routed_attention test_cuda_training_ops test_l2a_fused}; do
      timeout ${TEST_TIMEOUT:-70} build/bin/$t --gtest_brief=1 > /tmp/$t.log 2>&1
      echo "$t rc=$? $(grep -E '^\[  (PASSED|FAILED)' /tmp/$t.log | tr '\n' ' ')" | tee -a "$out/verify.txt"
      grep -B3 -A12 "Failure" /tmp/$t.log | head -40 >> "$out/verify.txt"
    done
    timeout 60 build/bin/runtime profile --attention swa --model qwen2.5-0.5b --init random --window 2048 \
      --seq 32768,65536 --sparsity 0.8 --device cuda --kernels-only --repeats 5 --json "$out/verify_kernels.json" \
      > "$out/verify_kernels.txt" 2>&1
    grep -A3 "^L2A attention" "$out/verify_kernels.txt"
    timeout 100 python3 tools/bench_train.py --seq 32768 --steps 3 --cases full_causal:attention,l2a_fused:attention:parallel \
      --l2a-set router=fixed_rate --l2a-set sparsity=0.8 --l2a-set leak_prob=0 --json "$out/verify_train.json" 2>&1 | tail -3
    timeout 60 python3 tools/bench_anchors.py --anchors-dir .anchors/l2a_official --skip-hf --skip-accuracy \
      --seq 32768,65536 --sparsity 0.8 --large-shape-max-seq 0 --json "$out/verify_anchors.json" \
      > "$out/verify_anchors.txt" 2>&1
    tail -4 "$out/verify_anchors.txt"
    timeout 60 build/bin/bench_cuda_ops 32768 > "$out/verify_cuda_ops.txt" 2>&1  # (the MLP backward ops at 32K)
    tail -4 "$out/verify_cuda_ops.txt"
    ;;
  nccl)  # the one-rank NCCL group on one GPU, whole log
    timeout 120 build/bin/test_nccl_group > "$out/nccl.txt" 2>&1
    echo "test_nccl_group rc=$?"; tail -c 6000 "$out/nccl.txt"
    ;;
  model)
    timeout 300 build/bin/runtime profile --attention full_causal,l2a_fused --model qwen2.5-0.5b --init random \
      --window 2048 --seq 16384,32768 --device cuda --decode-tokens 16 --repeats 3 $FUSED_SET \
      --json "$out/model_0.5b.json" > "$out/model_0.5b.txt" 2>&1
    timeout 200 build/bin/runtime profile --attention l2a_dense,l2a_fused --model qwen2.5-0.5b --init random \
      --window 2048 --seq 16384 --device cuda --decode-tokens 4 --repeats 2 $FUSED_SET $DENSE_SET \
      --json "$out/model_dense_0.5b.json" > "$out/model_dense_0.5b.txt" 2>&1
    # the parallel layout (shared q/k/v, one o_proj): the paper layout's second projections are
    # most of the prefill's non-attention difference
    timeout 150 build/bin/runtime profile --attention full_causal,l2a_fused --model qwen2.5-0.5b --init random \
      --window 2048 --seq 16384,32768 --device cuda --decode-tokens 16 --repeats 3 $FUSED_SET \
      --set l2a_fused.layout=parallel --json "$out/model_parallel_0.5b.json" > "$out/model_parallel_0.5b.txt" 2>&1
    tail -8 "$out/model_0.5b.txt"; tail -4 "$out/model_dense_0.5b.txt"; tail -5 "$out/model_parallel_0.5b.txt"
    ;;
  decode)  # issue 13: prefill and graph decode at 16K-128K, full_causal against l2a_fused at 80% unrouted
           # (fixed_rate's random pattern, drawn on the device), then L2A with none / every token routed
           # (a zero router at init gives z = 0: threshold 0.51 routes none, 0.5 every token)
    LONG="--max-position 131200 --rope-theta 5e6"
    timeout 300 build/bin/runtime profile --attention full_causal,l2a_fused --model qwen2.5-0.5b --init random \
      --window 2048 --seq ${DECODE_SEQS:-16384,32768,65536,131072} $LONG --device cuda --decode-tokens 64 --repeats 3 \
      $FUSED_SET --json "$out/decode_80.json" > "$out/decode_80.txt" 2>&1
    for thr in 0.51 0.5; do
      timeout 150 build/bin/runtime profile --attention l2a_fused --model qwen2.5-0.5b --init random --window 2048 \
        --seq 16384,32768 $LONG --device cuda --decode-tokens 64 --repeats 3 --set l2a_fused.threshold=$thr \
        --json "$out/decode_thr$thr.json" > "$out/decode_thr$thr.txt" 2>&1
    done
    tail -n 12 "$out/decode_80.txt"; tail -n 4 "$out/decode_thr0.51.txt" "$out/decode_thr0.5.txt"
    ;;
  eval)  # issue 12: a HellaSwag-sized run (10,042 items) packed, the packing gain on 1,000, lm-eval if importable
    # lm-eval and the few modules its HF backend imports that the GPU machine lacks, from wheels
    # carried in .whl/ (pip download --no-deps lm_eval==0.4.13 accelerate dill psutil requests urllib3
    # idna certifi charset_normalizer); without `datasets`, bench_eval times HFLM.loglikelihood directly.
    for w in .whl/*.whl; do
      [ -f "$w" ] && python3 -m pip install -q --no-deps --no-index "$w" > /dev/null 2>&1 || echo "pip: skipped $w"
    done
    # The headline first (the runtime's defaults against lm-eval), then what packing and sharing give.
    timeout 330 python3 tools/bench_eval.py --items 10042 --device cuda --batch-tokens 8192 --lm-eval \
      --json "$out/eval_hellaswag.json" 2>&1 | tee "$out/eval_hellaswag.log" | tail -8
    timeout 200 python3 tools/bench_eval.py --items 1000 --device cuda --batch-tokens 1,8192 --share-prefix on,off \
      --json "$out/eval_packing.json" 2>&1 | tee "$out/eval_packing.log" | tail -8
    ;;
  evalall)  # issue 12's "done means": every task on every backend at 0.5B shapes, l2a_fused included (random
            # weights: the scores are chance level; the run, its files and its timings are what this checks)
    d=tests/fixtures/eval/data
    timeout 540 build/bin/runtime eval --model qwen2.5-0.5b --init random --device cuda \
      --attention full_causal,swa,l2a_dense,l2a_fused --window 2048 --tokenizer .carry/tokenizer \
      --tasks ppl,wikitext,hellaswag,piqa,arc_challenge,niah --data ppl=$d/ppl.txt --data wikitext=$d/wikitext.jsonl \
      --data hellaswag=$d/hellaswag.jsonl --data piqa=$d/piqa.jsonl --data arc_challenge=$d/arc_challenge.jsonl \
      --data niah=.carry/data/wikitext-2-test.txt --niah-lengths 1024,4096,16384,32768 --niah-samples 2 \
      --seq 4096 --output "$out/evalall" > "$out/evalall.txt" 2>&1
    echo "runtime eval (all tasks, 4 backends) rc=$?"; tail -8 "$out/evalall.txt"
    ;;
  train)
    timeout 300 python3 tools/bench_train.py --seq 16384,32768 --steps 3 \
      --cases full_causal:attention,l2a_fused:attention,l2a_fused:attention:parallel \
      --l2a-set router=fixed_rate --l2a-set sparsity=0.8 --json "$out/train.json" 2>&1 | tail -9
    ;;
  gemmtune)  # cuBLASLt tuning (backends/cuda/gemm_tune.h): its bit-equality test and the model tests with it
             # on, then the 0.5B prefill at 32K and the training step with it off and on (RT_GEMM_TUNE=0|1)
    for t in test_cuda_training_ops test_cuda_model test_l2a_fused test_cuda_ops; do
      timeout ${TEST_TIMEOUT:-300} build/bin/$t --gtest_brief=1 > /tmp/$t.tune.log 2>&1
      echo "$t rc=$? $(grep -E '^\[  (PASSED|FAILED)' /tmp/$t.tune.log | tr '\n' ' ')" | tee -a "$out/gemmtune.txt"
      grep -B3 -A12 "Failure" /tmp/$t.tune.log | head -40 >> "$out/gemmtune.txt"
    done
    timeout 400 build/bin/test_cli_train --gtest_brief=1 --gtest_filter='*Cuda*:*Gpu*:*GPU*' > /tmp/cli.tune.log 2>&1
    echo "test_cli_train (GPU, resume bit-identical) rc=$? $(grep -E '^\[  (PASSED|FAILED)' /tmp/cli.tune.log | tr '\n' ' ')" |
      tee -a "$out/gemmtune.txt"
    for t in 0 1 0; do
      echo "== RT_GEMM_TUNE=$t" | tee -a "$out/gemmtune.txt"
      RT_GEMM_TUNE=$t timeout 100 build/bin/runtime profile --attention full_causal,l2a_fused --model qwen2.5-0.5b \
        --init random --window 2048 --seq 32768 --device cuda --decode-tokens 4 --repeats 3 $FUSED_SET \
        --set l2a_fused.layout=parallel --json "$out/gemmtune_prefill_$t.json" 2>&1 | grep -A3 "^backend" |
        tee -a "$out/gemmtune.txt"
    done
    for t in 0 1; do
      RT_GEMM_TUNE=$t timeout 150 python3 tools/bench_train.py --seq 32768 --steps 4 \
        --cases full_causal:attention,l2a_fused:attention:parallel --l2a-set router=fixed_rate --l2a-set sparsity=0.8 \
        --l2a-set leak_prob=0 --json "$out/gemmtune_train_$t.json" 2>&1 | tail -2 | sed "s/^/RT_GEMM_TUNE=$t /" |
        tee -a "$out/gemmtune.txt"
    done
    ;;
  trainleak)  # the training step with L2A's default leak_prob 0.1 (paper and parallel layouts), and with a
              # leak on every layer (the worst case), against full_causal; the mean step is the cost
    timeout 200 python3 tools/bench_train.py --seq 32768 --steps ${LEAK_STEPS:-8} \
      --cases full_causal:attention,l2a_fused:attention:parallel,l2a_fused:attention \
      --l2a-set router=fixed_rate --l2a-set sparsity=0.8 --l2a-set leak_prob=0.1 \
      --json "$out/trainleak.json" 2>&1 | tail -4 | tee -a "$out/trainleak.txt"
    timeout 120 python3 tools/bench_train.py --seq 32768 --steps 3 \
      --cases l2a_fused:attention:parallel,l2a_fused:attention \
      --l2a-set router=fixed_rate --l2a-set sparsity=0.8 --l2a-set leak_prob=1 \
      --json "$out/trainleak_every.json" 2>&1 | tail -3 | tee -a "$out/trainleak.txt"
    ;;
  trainhf)  # the training baseline against PyTorch's: full_causal against HF transformers (sdpa) training the
            # same parameters (the attention regime), then HF at 32K with gradient checkpointing (without it,
            # it does not fit in an H100's 80 GB)
    timeout 150 python3 tools/bench_train.py --seq 16384,32768 --steps 4 --cases full_causal:attention --hf \
      --json "$out/trainhf.json" 2>&1 | tail -5 | tee "$out/trainhf.txt"
    timeout 100 python3 tools/bench_train_hf.py --seq 32768 --steps 3 --regime attention --checkpointing \
      --json "$out/trainhf_ckpt.json" 2>&1 | tail -1 | tee -a "$out/trainhf.txt"
    ;;
  memory)  # peak memory of training with gradient checkpointing (learned router at init: every token routed)
    timeout 300 python3 tools/bench_train.py --seq 32768,49152 --steps 2 --recompute \
      --cases l2a_fused:router_only,l2a_fused:attention --json "$out/memory.json" 2>&1 | tail -6
    ;;
  fit)  # issue 10: the longest context whose training step fits in 24 GB (an RTX 4090), per model and regime
        # (FIT_CASES, FIT_MIN and FIT_MAX narrow the search: e.g. 3B attention, known in [8192, 12288))
    for m in ${FIT_MODELS:-qwen2.5-0.5b qwen2.5-1.5b qwen2.5-3b}; do
      timeout 500 python3 tools/bench_train.py --model $m --fit-gib 24 --steps 2 --recompute \
        --fit-min ${FIT_MIN:-2048} --fit-max ${FIT_MAX:-131072} \
        --cases ${FIT_CASES:-l2a_fused:router_only,l2a_fused:attention} --json "$out/fit_$m.json" 2>&1 | tail -4
    done
    ;;
  prune)  # issue 13: KV, decode and quality of 0.5B with half its global sublayers pruned (random weights: the
           # quality column is meaningless here, the KV and decode columns are not)
    timeout 400 python3 tools/prune_study.py --model qwen2.5-0.5b --init random --attention l2a_fused \
      --set window=2048 --device cuda --data tests/fixtures/eval/data/ppl.txt --tokenizer .carry/tokenizer --seq 1024 \
      --profile-seq 16384 --decode-tokens 32 --fractions 0.5 --out "$out/prune" 2>&1 | tail -6
    ;;
  trace)  # TRACE_BACKENDS (';'-separated, each "backend key=value ..."), TRACE_MODES (prefill, train or both)
    IFS=';' read -ra trace_backends <<< "${TRACE_BACKENDS:-full_causal;l2a_fused window=2048 router=fixed_rate sparsity=0.8}"
    for mode in ${TRACE_MODES:-prefill train}; do
      [[ $mode == prefill || $mode == train ]] || { echo "TRACE_MODES: '$mode' is not prefill or train"; exit 2; }
      for b in "${trace_backends[@]}"; do
        echo "== trace $mode $b"
        # the span, the idle gaps, then where the time goes per kernel name (the top TRACE_TOP, default 25)
        TRACE_TOP=${TRACE_TOP:-25} TRACE_TRAIN=$([[ $mode == train ]] && echo 1) timeout 120 \
          build/bin/trace_prefill 32768 configs/models/qwen2.5-0.5b.json $b 2>&1 |
          awk '/time per name/ {n = '"${TRACE_TOP:-25}"' + 1} /span|forward\(\) returned/ {print} n > 0 {print; n--}'
      done
    done > "$out/trace.txt"
    cat "$out/trace.txt" | cut -c1-150
    ;;
  bundle)  # last: the device tool brings back at most 8 files, so everything in $out goes into one archive
    (cd "$out" && files=$(ls | grep -v '^results.tgz$') && [ -n "$files" ] && tar -czf results.tgz $files && rm -rf $files)
    echo "bundled into $out/results.tgz: $(tar -tzf "$out/results.tgz" | wc -l) files"
    ;;
  anchors)
    # ANCHOR_HF=1: also HF transformers' whole-model prefill (the issue's "2x HF" target), minutes more
    timeout 420 python3 tools/bench_anchors.py --anchors-dir .anchors/l2a_official $([ -n "${ANCHOR_HF:-}" ] || echo --skip-hf) \
      ${ANCHOR_SEQS:+--seq $ANCHOR_SEQS} \
      --json "$out/anchors.json" > "$out/anchors.txt" 2>&1
    tail -60 "$out/anchors.txt"
    ;;
  esac
done
