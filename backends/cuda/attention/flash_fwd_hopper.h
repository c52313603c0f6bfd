// Host side of the Hopper flash forward (flash_fwd_hopper.cuh, built for sm_90a in
// sm90/flash_fwd_hopper.cu). attention.cu asks it first and falls back to the mma.sync kernel.
#pragma once

#include <cuda_runtime_api.h>

#include "cuda/attention/attention_launch.h"
#include "cuda/attention/kernel_path.h"

namespace rt::cuda::attn_launch {

// RT_ATTN_FWD (kernel_path.h); auto: the Hopper kernel where it can run, mma.sync elsewhere.
KernelPath forward_path_setting();

// True when this build has the sm_90a kernels and the current GPU is compute capability 9.0.
bool hopper_forward_available();

// Launches the Hopper forward for head dim D (64 or 128) and returns true; false when the K/V views
// cannot be described by a tensor map or the tensor-map entry point is missing (the caller then
// takes the mma.sync kernel, or fails under RT_ATTN_FWD=wgmma).
bool launch_flash_hopper(int D, const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                         float* lse, const AttentionSpec& spec, const Shapes& s, cudaStream_t stream);

}  // namespace rt::cuda::attn_launch
