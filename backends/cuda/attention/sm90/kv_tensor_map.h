// Tensor maps (TMA descriptors) for the K and V views of the Hopper attention kernels, shared by
// the forward (flash_fwd_hopper.cu) and the dQ pass of the backward (flash_bwd_dq_hopper.cu).
// Compiled for sm_90a with them.
#pragma once

#include <cuda.h>

#include "rt/sdk/tensor.h"

namespace rt::cuda::attn_launch {

// A [rows, heads, D] bf16 view as a 3-d tensor map (D, heads, rows) with boxes of 64 x 1 x
// box_rows, 128-byte swizzled (the layout wgmma reads). False when the view cannot be described
// (strides not multiples of 16 bytes) or the driver entry point is missing.
bool kv_tensor_map(CUtensorMap* map, const TensorView& t, int box_rows);

}  // namespace rt::cuda::attn_launch
