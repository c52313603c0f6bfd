// cuDNN scaled-dot-product attention (cudnn-frontend graph API) as a second implementation of
// rt::cuda::attention_forward, for a cross-check and for the shapes where it is faster.
//
// Same function as attention_forward (cuda/attention/attention.h): o [Tq, Hq, D] =
// softmax(q k^T * scale + mask) v, q [Tq, Hq, D], k, v [Tk, Hkv, D], all bf16 on the device with
// a contiguous last dimension (row/head strides are free, e.g. views into a fused QKV buffer);
// query head h reads KV head h / (Hq / Hkv) (GQA natively). Masks follow rt::AttentionSpec: query
// row i sits at q_pos0 + i, key row j at k_pos0 + j; causal keeps key pos <= query pos, window W
// keeps key pos in (query pos - W, query pos].
//
// cuDNN aligns its mask diagonal either top-left or bottom-right, so positions are supported where
// delta = q_pos0 - k_pos0 is 0 (top-left: prefill from one origin) or Tk - Tq with Tq <= Tk
// (bottom-right: decode / chunked prefill against a KV cache); without causal and window the
// offsets do not matter. A window that reaches past the first key for every row is dropped (plain
// causal). Other cases (other offsets, Tk = 0, f32/f16, a head dim cuDNN rejects, rows that
// would see no key, misaligned pointers) are unsupported: the caller falls back to our kernel.
// Unlike our kernel, o may not overlap q either (nor k, v); cudnn_sdpa_supported cannot see o
// and assumes a separate contiguous one.
//
// Graphs are built once per (device, shape, strides, mask, scale, lse) and cached (LRU); one
// cudnnHandle per device, put on the caller's stream each call; the workspace comes from the
// stream-ordered pool (Scratch). Thread-safe (a mutex per device around build and launch).
// Built without cuDNN (RT_HAVE_CUDNN_SDPA undefined): supported() is false, forward() throws.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "rt/sdk/ops.h"
#include "rt/sdk/tensor.h"

namespace rt::cuda {

// True when this build has cuDNN SDPA, a GPU is there, the arguments are valid, the positions are
// expressible (see above) and the runtime cuDNN builds a plan for the shape (the graph is built
// and cached here, so the first call for a shape costs the build: ~10-100 ms). Never throws.
bool cudnn_sdpa_supported(TensorView q, TensorView k, TensorView v, const AttentionSpec& spec,
                          bool with_lse = false) noexcept;

// o = SDPA(q, k, v) as described above. lse_or_empty: [Hq, Tq] f32 contiguous device tensor that
// receives the natural-log sum of exp of each row's scaled, masked scores (the same as
// attention_forward_lse); data == nullptr: not computed. Bad arguments throw rt::Error naming the
// argument; an unsupported case or a cuDNN failure throws rt::Error naming the cuDNN status and
// message.
void cudnn_sdpa_forward(TensorView q, TensorView k, TensorView v, TensorView o, const AttentionSpec& spec,
                        cudaStream_t stream, TensorView lse_or_empty = {});

// ---- Backward (cudnn_sdpa_backward.cpp) ----
//
// Gradients of o = SDPA(q, k, v) for the forward above: given q, k, v, the forward's o and lse and
// dout = dL/do, writes dq [Tq, Hq, D] and dk, dv [Tk, Hkv, D] (bf16; overwritten, not accumulated).
// GQA natively: dk, dv of KV head j sum over its Hq / Hkv query heads. Same masks, position rules
// and argument rules as the forward (o, dout, dq, dk, dv may be strided views like q, k, v; the
// outputs may not overlap any input or each other).
//
// lse: [Hq, Tq] f32 contiguous on the device, the natural-log log-sum-exp of each row's scaled,
// masked scores, as written by cudnn_sdpa_forward(..., lse) or attention_forward_lse. That is
// exactly cuDNN's softmax "Stats" tensor ([1, Hq, Tq, 1] packed BHSD, natural log), so it is
// passed through unconverted.
//
// cuDNN rejects Tq = Tk = 1; that case runs as Tq = 1 against two keys (the second one zero and
// masked off) through scratch copies, with the same result. Graphs are cached like the forward's
// (per device, shape, strides, mask, scale); the workspace (fp32 dQ accumulator and friends)
// comes from the stream-ordered pool. Built without cuDNN: supported() is false, backward() throws.

// True when this build has cuDNN SDPA, a GPU is there, the arguments are valid and expressible and
// cuDNN builds a backward plan for the shape (built and cached here) whose workspace fits in half
// the device's free memory (some plans need T^2 bytes per head). Assumes o, dout, dq, dk, dv
// separate and contiguous. Never throws.
bool cudnn_sdpa_backward_supported(TensorView q, TensorView k, TensorView v, const AttentionSpec& spec) noexcept;

// dq, dk, dv as described above, queued on stream. Bad arguments throw rt::Error naming the
// argument; an unsupported case or a cuDNN failure throws rt::Error naming the cuDNN message.
void cudnn_sdpa_backward(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse, TensorView dout,
                         TensorView dq, TensorView dk, TensorView dv, const AttentionSpec& spec, cudaStream_t stream);

// Counters for tests and benchmarks (process-wide, forward and backward graphs together): graphs
// built, failed builds (unsupported shapes, cached as such), calls served from the cache, and
// graphs now cached.
struct CudnnSdpaStats {
  uint64_t graphs_built = 0;
  uint64_t build_failures = 0;
  uint64_t cache_hits = 0;
  uint64_t cached_graphs = 0;
};
CudnnSdpaStats cudnn_sdpa_stats() noexcept;

// cuDNN's runtime version (e.g. 91900), 0 when built without cuDNN SDPA.
int64_t cudnn_sdpa_version() noexcept;

}  // namespace rt::cuda
