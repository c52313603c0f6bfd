// Host side of the Hopper backward (built for sm_90a in sm90/flash_bwd_hopper.cu): the dK/dV
// kernel (flash_bwd_dkdv_hopper.cuh) and the dQ pass (flash_bwd_dq_hopper.cuh) of the
// deterministic backward. attention_backward.cu runs them on sm_90 (head dims 64 and 128), and the
// mma.sync kernels otherwise or when RT_ATTN_BWD=mma asks for them.
#pragma once

#include <cuda_runtime_api.h>

#include "cuda/attention/attention_launch.h"
#include "cuda/attention/kernel_path.h"
#include "cuda/attention/flash_attention_bwd.cuh"

namespace rt::cuda::attn_launch {

// RT_ATTN_BWD (kernel_path.h); auto: the Hopper kernels on sm_90, the mma.sync ones elsewhere (see hopper_backward_selected in attention_backward.cu for the measurements).
KernelPath bwd_path_setting();

// Keys per CTA of the Hopper dK/dV kernel (its grid's x is ceil(Tk / this)).
inline constexpr int kHopperBwdBlockN = 128;
// The largest query tile of the dK/dV kernels (each bulk-copies a tile's statistics): the
// statistics ([Hq][Tq_pad]) are padded to a multiple of it.
inline constexpr int kHopperBwdStatRows = 128;

// The Hopper dK/dV kernel for head dim D (64 or 128) on grid (ceil(Tk / kHopperBwdBlockN), Hkv,
// splits), with the backward's parameters p (statistics already computed; dkv_accum set when
// splits > 1). False when a view cannot be described by a tensor map (strides not multiples of 16
// bytes).
bool launch_flash_bwd_dkdv_hopper(int D, const attn::BwdParams& p, const TensorView& q, const TensorView& k,
                                  const TensorView& v, const TensorView& dout, const AttentionSpec& spec,
                                  const Shapes& s, int splits, cudaStream_t stream);

// Whether the dK/dV kernel also accumulates dQ (head dim 64, unless RT_ATTN_HOPPER_BWD_FUSED_DQ=0): then
// p.dq_accum ([Hq][Tq_pad][64] fp32) and p.dq_lock ([Hq][Tq_pad / 128] int) must be zeroed
// workspaces, and launch_flash_bwd_dq_hopper converts the accumulator instead of running the pass.
bool hopper_bwd_fuses_dq(int D, const AttentionSpec& spec);
// Whether that fused dQ skips its turn order (RT_ATTN_HOPPER_BWD_DQ_UNORDERED=1, a measurement; not
// deterministic): p.dq_accum must then be zeroed too.
bool hopper_bwd_dq_unordered();

// The Hopper dQ pass for head dim D into dq, with the same p. False as above.
bool launch_flash_bwd_dq_hopper(int D, const attn::BwdParams& p, const TensorView& k, const TensorView& v,
                                const TensorView& dq, const AttentionSpec& spec, const Shapes& s, cudaStream_t stream);

}  // namespace rt::cuda::attn_launch
