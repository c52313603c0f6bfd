// The CUDA kernels, one free function per op (the same <op>_forward names as backends/cpu/
// kernels.h, plus a stream). Each checks its arguments (device, dtype, shape) on the host and
// throws rt::Error naming the op and the argument; launches are checked, and asynchronous
// faults surface at the next synchronizing call. CudaOps forwards to these; code that owns a
// stream (the model, attention plugins built with CUDA) may call them directly.
//
// Files: elementwise.cu (copy, fill, add, swiglu, bias add), embedding.cu, linear.cpp (cuBLASLt),
// gemm_simple.cu (its fallback),
// rmsnorm.cu (+ fused residual), rope.cu, argmax.cu.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "rt/sdk/tensor.h"

namespace rt::cuda {

// dst = src with f32/bf16/f16 conversion; either side may be a CPU view (upload/download; a copy
// touching host memory is synchronous, since the caller may read or free the host buffer right
// after). Strided views (rows of a column slice) work on both sides.
void copy_forward(TensorView src, TensorView dst, cudaStream_t stream);
void fill_forward(TensorView dst, float value, cudaStream_t stream);
// out = a + b, any float dtypes (e.g. f32 residual += bf16 delta); out may alias a or b.
void add_forward(TensorView a, TensorView b, TensorView out, cudaStream_t stream);
// out = silu(gate) * up in fp32, any float dtypes.
void swiglu_forward(TensorView gate, TensorView up, TensorView out, cudaStream_t stream);
// y = x W^T (+ b) with a plain tiled kernel (fp32 accumulation, any float dtypes): the fallback
// of linear() when cuBLASLt offers no algorithm for a layout.
void gemm_simple_forward(TensorView x, TensorView w, TensorView bias, TensorView y, cudaStream_t stream);
// y[r, :] += bias (for GEMMs whose bias could not be fused into the epilogue).
void bias_add_forward(TensorView y, TensorView bias, cudaStream_t stream);

// Device-side error record of the embedding kernel: {flag, bad id, position, vocab}. The kernel
// writes NaN rows for bad ids (never reads out of bounds) and fills the record once; the owner
// reads it back after a synchronization (see CudaOps::check_device_errors).
struct EmbeddingError {
  int32_t flag, id, pos, vocab;
};
// out[t, :] = table[ids[t], :]. ids I32 on the device (checked on the device into `err`, which
// may be null to skip the record) or on the host (checked here before upload, throwing at once).
void embedding_forward(TensorView table, TensorView ids, TensorView out, EmbeddingError* err,
                       cudaStream_t stream);

// y = w * x / sqrt(mean(x^2) + eps) row-wise in fp32; x f32/bf16/f16, y f32/bf16/f16.
void rmsnorm_forward(TensorView x, TensorView w, float eps, TensorView y, cudaStream_t stream);
// Fused pre-norm step: x_residual (f32) += delta, then y = rmsnorm(x_residual) in one pass.
void rmsnorm_residual_forward(TensorView x_residual, TensorView delta, TensorView w, float eps, TensorView y,
                              cudaStream_t stream);

// In-place rotate-half RoPE on x [T, H, D] (f32/bf16/f16), positions pos0.., angles computed
// exactly as backends/cpu/rope.cpp so the two paths agree.
void rope_forward(TensorView x, int64_t pos0, double theta, cudaStream_t stream);

// Index of the largest value of the last row of logits ([V] or [rows, V], f32) written to
// *out_dev (device memory, no synchronization: usable inside a CUDA graph). First index wins
// ties; NaNs are skipped.
void argmax_last_row_async(const TensorView& logits, int32_t* out_dev, cudaStream_t stream);

}  // namespace rt::cuda
