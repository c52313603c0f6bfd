// Flash-style attention on the CUDA device (forward and decode). See flash_attention.cuh for the
// kernels and attention.cu for the argument checks and the dispatch.
//
// o [Tq, Hq, D] = softmax(q k^T * scale + mask) v with q [Tq, Hq, D], k, v [Tk, Hkv, D], every
// tensor on the device with a contiguous last dimension (views from TensorView::rows are fine).
// Query head h reads KV head h / (Hq / Hkv). Masks follow rt::AttentionSpec exactly (the same rules
// as rt::cpu::attention_forward): query row i sits at q_pos0 + i, key row j at k_pos0 + j; a query
// row that sees no key at all outputs zeros.
//
// dtypes: all of q, k, v, o bf16 (tensor-core path, head dims 64 and 128; fp32 accumulation and
// softmax statistics), or all f32 (a simple exact fp32 path for reference comparisons, head dims
// 1..256). Bad arguments throw rt::Error naming the argument; CUDA failures throw rt::Error too.
#pragma once

#include <cuda_runtime.h>

#include "rt/sdk/ops.h"
#include "rt/sdk/tensor.h"

namespace rt::cuda {

void attention_forward(TensorView q, TensorView k, TensorView v, TensorView o, const rt::AttentionSpec& spec,
                       cudaStream_t stream);

// Same, and also writes lse [Hq, Tq] f32 (device, contiguous): the natural-log sum of exp of the
// scaled, masked scores of each row, i.e. o = sum_j exp(s_j - lse) v_j (for the backward pass).
// Rows that see no key get +inf (so exp(s - lse) = 0). lse.data == nullptr: not written.
void attention_forward_lse(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                           const rt::AttentionSpec& spec, cudaStream_t stream);

// Whether a bf16 forward (attention_forward, attention_forward_lse) at this head dim runs the Hopper
// kernel: head dim 64 or 128, an sm_90 GPU with this build's sm_90a kernels, RT_ATTN_FWD not mma.
bool hopper_forward_runs(int64_t head_dim);

// Which kernel runs. Auto: the split-KV decode kernel when Tq <= 16 (decode / short chunks against
// a KV cache), the flash forward kernel otherwise. The others force one (tests, benchmarks); both
// compute the same function for every input. F32 inputs always take the fp32 path.
enum class AttentionKernel { Auto, Flash, Decode };

void attention_forward_with(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                            const rt::AttentionSpec& spec, AttentionKernel kernel, cudaStream_t stream);

// Decode at a position held in device memory (rt::Ops::decode_attention_at): q [1, Hq, D] (bf16
// with head dim 64 or 128: the split-KV kernel; f32: the fp32 kernel) against the whole KV cache k_cache, v_cache [capacity, Hkv, D], position p in row p (ring = 0:
// keys at positions <= p, and > p - window with spec.window) or in row p % ring (a ring holding
// exactly the window: its min(p + 1, ring) filled rows). The split grid depends only on the
// capacity, so the launch is the same at every position (CUDA-graph replay). gate (F32 [1] on the
// device, optional): where *gate == 0 the kernels load no key and o = 0 (Ops::decode_attention_gated_at).
void decode_attention_at(TensorView q, TensorView k_cache, TensorView v_cache, int64_t ring, TensorView pos,
                         const rt::AttentionSpec& spec, TensorView o, cudaStream_t stream,
                         TensorView gate = TensorView{});

}  // namespace rt::cuda
