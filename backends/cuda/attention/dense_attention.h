// Materialized ("pure PyTorch") attention on the CUDA device: what CudaOps runs when
// AttentionSpec::materialize is set (the l2a_dense plugin's slow reference that fused kernels are
// measured against). Same function, masks and conventions as the flash path (cuda/attention/
// attention.h, attention_backward.h) and the CPU reference, computed the naive way:
//
//   forward, per chunk of query rows:
//     S [Hq, rows, Tk] f32 = scale * Q_h K_g^T          cuBLAS strided-batched GEMMs
//     P = masked softmax(S) in the input dtype, lse    one block per row
//     O_h = P_h V_g                                    cuBLAS strided-batched GEMMs, o's dtype
//   backward, per chunk of query rows:
//     S recomputed, P = exp(S - lse) (0 where masked), dP = dO_h V_g^T (f32),
//     Delta_i = rowsum(dO_i * O_i), dS = P * (dP - Delta)  (input dtype)
//     dQ_h = scale * dS_h K_g          (written per chunk)
//     dK_g += scale * dS_h^T Q_h,  dV_g += P_h^T dO_h     (f32 accumulators over chunks and over
//                                                           the heads of a group, then converted)
// Query head h reads KV head g = h / (Hq / Hkv). GEMMs accumulate in fp32 (CUBLAS_COMPUTE_32F, no
// TF32). The chunk of query rows is the largest whose score-sized workspaces (S and P forward;
// S, dP, P and dS backward) fit the workspace limit (1 GiB by default; at least one row).
//
// Arguments: q [Tq, Hq, D], k, v [Tk, Hkv, D], o (and dout, dq) [Tq, Hq, D], dk, dv [Tk, Hkv, D]:
// cuda views, all of one dtype (bf16 or f32), contiguous last dimension, any row / head strides
// (e.g. column slices of a fused QKV buffer) as long as a head's rows do not overlap (row stride
// >= D). lse [Hq, Tq] f32 contiguous, or an empty view: the forward then does not write it and the
// backward recomputes it from the scores. Backward outputs given as empty views are skipped.
// Rows that see no key: o = 0, lse = +inf, dq = 0. Outputs are overwritten. Bad arguments throw
// rt::Error naming the op and the argument; CUDA / cuBLAS failures throw rt::Error too.
//
// Calls are serialized (one cuBLAS handle per device, set to the caller's stream for the call);
// temporary memory comes from the stream-ordered pool and is freed (stream-ordered) on return.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "rt/sdk/ops.h"
#include "rt/sdk/tensor.h"

namespace rt::cuda {

// `op` names the caller in error messages ("attention", "attention_forward_lse").
void dense_attention_forward(const char* op, TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                             const AttentionSpec& spec, cudaStream_t stream);

void dense_attention_backward(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                              TensorView dout, TensorView dq, TensorView dk, TensorView dv, const AttentionSpec& spec,
                              cudaStream_t stream);

// Bound on the bytes of the score-sized workspaces of one query chunk. 0 restores the default
// (1 GiB). Tests set it small so that several chunks run. Process-wide.
void set_dense_attention_workspace_limit(size_t bytes);
size_t dense_attention_workspace_limit();

}  // namespace rt::cuda
