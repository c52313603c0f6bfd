// Flash-style attention backward on the CUDA device. See flash_attention_bwd.cuh for the kernels and
// attention_backward.cu for the argument checks, workspaces and launches.
//
// Gradients of o = softmax(q k^T * scale + mask) v (rt::cuda::attention_forward_lse, same masks,
// rt::AttentionSpec, and GQA layout: query head h reads KV head h / (Hq / Hkv)):
//   inputs  q [Tq, Hq, D], k, v [Tk, Hkv, D], o and dout [Tq, Hq, D] (the forward output and dL/do),
//           lse [Hq, Tq] f32 contiguous (from attention_forward_lse; +inf for rows that see no key)
//   outputs dq [Tq, Hq, D], dk, dv [Tk, Hkv, D], overwritten (dk / dv summed over each GQA group)
// Rows that see no key contribute nothing and get dq = 0 (the CPU reference's convention).
//
// dtypes: q, k, v, o, dout, dq, dk, dv all bf16 (tensor-core path, head dims 64 and 128, fp32
// accumulation; dq through an fp32 workspace) or all f32 (a simple exact fp32 path for reference
// comparisons, head dims 1..256). Every tensor on the device with a contiguous last dimension; the
// bf16 inputs need 16-byte aligned rows (as the forward). Temporary device memory: fp32 dq
// accumulator (Tq Hq D floats) and per-row statistics (2 Hq Tq floats), plus 2 Tk Hkv D floats when
// short sequences split a GQA group over several CTAs; allocated and freed stream-ordered.
// Bad arguments throw rt::Error naming the argument; CUDA failures throw rt::Error too.
#pragma once

#include <cuda_runtime.h>

#include "rt/sdk/ops.h"
#include "rt/sdk/tensor.h"

namespace rt::cuda {

// Whether training attention is bit-reproducible (default; RT_ATTENTION_DETERMINISTIC=0 turns it
// off): the backward accumulates nothing with floating-point atomics (our dQ runs in its own pass,
// cuDNN's backward uses its deterministic algorithm), and the choice between our kernels and cuDNN
// for the training forward/backward is a fixed rule (cuDNN where it supports the shape) instead of
// a timing, which could pick differently in a resumed process.
bool attention_deterministic();

void attention_backward(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse, TensorView dout,
                        TensorView dq, TensorView dk, TensorView dv, const rt::AttentionSpec& spec,
                        cudaStream_t stream);

// Same, with the split of each GQA group over CTAs chosen by the caller (tests, benchmarks):
// group_splits 0 = automatic (split only when there are too few (KV block, KV head) pairs to fill
// the GPU; dk / dv then go through an fp32 workspace), 1 = never split (dk / dv written directly),
// n > 1 = n shares of the group (clamped to the group size). Ignored by the f32 path.
void attention_backward_with(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                             TensorView dout, TensorView dq, TensorView dk, TensorView dv,
                             const rt::AttentionSpec& spec, int group_splits, cudaStream_t stream);

}  // namespace rt::cuda
