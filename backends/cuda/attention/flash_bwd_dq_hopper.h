// Host side of the Hopper dQ pass of the deterministic backward (flash_bwd_dq_hopper.cuh, built
// for sm_90a in sm90/flash_bwd_dq_hopper.cu). attention_backward.cu asks it when RT_ATTN_BWD_DQ
// selects it and falls back to the mma.sync dQ kernel otherwise.
#pragma once

#include <cuda_runtime_api.h>

#include "cuda/attention/attention_launch.h"
#include "cuda/attention/flash_attention_bwd.cuh"

namespace rt::cuda::attn_launch {

// Which dQ kernel the deterministic backward runs on an sm_90 GPU. RT_ATTN_BWD_DQ=wgmma: the
// Hopper kernel or an error; mma: the mma.sync kernel (sm_89's); auto (default): the mma.sync
// kernel until the Hopper one has passed the GPU tests (then: the Hopper kernel where it runs).
enum class BwdDqPath { Auto, Wgmma, Mma };
BwdDqPath bwd_dq_path_setting();

// Launches the Hopper dQ kernel for head dim D (64 or 128) with the backward's parameters p
// (statistics already computed) and returns true; false when K or V cannot be described by a
// tensor map (the caller then runs the mma.sync kernel, or fails under RT_ATTN_BWD_DQ=wgmma).
bool launch_flash_bwd_dq_hopper(int D, const attn::BwdParams& p, const TensorView& k, const TensorView& v,
                                const TensorView& dq, const AttentionSpec& spec, const Shapes& s, cudaStream_t stream);

}  // namespace rt::cuda::attn_launch
