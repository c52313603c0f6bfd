// The CUDA kernels, one free function per op (the same <op>_forward names as backends/cpu/
// kernels.h, plus a stream). Each checks its arguments (device, dtype, shape) on the host and
// throws rt::Error naming the op and the argument; launches are checked, and asynchronous
// faults surface at the next synchronizing call. CudaOps forwards to these; code that owns a
// stream (the model, attention plugins built with CUDA) may call them directly.
//
// Files: elementwise.cu (copy, fill, add, swiglu, bias add, sigmoid, step, row_scale, axpby),
// embedding.cu, linear.cpp (cuBLASLt; linear_backward and the GEMMs of the backward passes are
// declared in linear.h, as is lm_head_cross_entropy of cross_entropy.cu), gemm_simple.cu (its
// fallback), rmsnorm.cu, rope.cu, argmax.cu, reduce.cu (row_dot, reduce_sum,
// column sums), adamw.cu. Training backward kernels (<op>_backward) sit beside their forward.
// Conventions of the training ops follow rt::Ops: "+=" outputs accumulate, "=" outputs are
// overwritten, an output passed as an empty view (data == nullptr) is skipped; parameter
// gradients and optimizer state are f32 (f64 is rejected: the CUDA backend has no f64 path).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "rt/sdk/ops.h"
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
// out = silu(gate) * up:  dgate (=) dout * up * silu'(gate),  dup (=) dout * silu(gate), in fp32.
// dgate / dup may alias gate / up (each element is read before it is written) or be empty (skipped).
void swiglu_backward(TensorView gate, TensorView up, TensorView dout, TensorView dgate, TensorView dup,
                     cudaStream_t stream);
// y (=) sigmoid(scale * x); dx (=) dy * scale * y * (1 - y); y (=) x >= threshold ? 1 : 0.
// Elementwise on same-shape views of any float dtypes; outputs may alias inputs.
void sigmoid_forward(TensorView x, float scale, TensorView y, cudaStream_t stream);
void sigmoid_backward(TensorView y, TensorView dy, float scale, TensorView dx, cudaStream_t stream);
void step_forward(TensorView x, float threshold, TensorView y, cudaStream_t stream);
// out[r, :] (=) s[r] * x[r, :] for x [R, C] (rows: every dimension but the last), s [R]; out may alias x.
void row_scale_forward(TensorView x, TensorView s, TensorView out, cudaStream_t stream);
// out (=) alpha * x + beta * y elementwise; out may alias x or y.
void axpby_forward(float alpha, TensorView x, float beta, TensorView y, TensorView out, cudaStream_t stream);

// reduce.cu. out[r] (= or += when accumulate) sum_c a[r, c] * b[r, c]; one warp per row, fp32.
void row_dot_forward(TensorView a, TensorView b, TensorView out, bool accumulate, cudaStream_t stream);
void row_dot_rows_forward(TensorView a, TensorView b, TensorView index, TensorView count, TensorView out,
                          cudaStream_t stream);
// out[0] += sum of x (power 1) or x^2 (power 2) over every element: a deterministic two-pass
// reduction (fixed grid, partials in fp64, summed in a fixed order). out is [1] (or a scalar) f32.
void reduce_sum_forward(TensorView x, int power, TensorView out, cudaStream_t stream);
// out[c] += sum_r a[r, c] * b[r, c] * row_scale[r] over the rows of a [R, C] (b: empty view for none;
// row_scale: device f32 [R] or null for none). out [C] any float dtype. Deterministic: rows are
// split in fixed slices whose fp32 partials are summed in order. (Bias and RMSNorm weight grads.)
void column_sum_accumulate(TensorView a, TensorView b, const float* row_scale, TensorView out, cudaStream_t stream);
// out[c] += sum over s of partial[s, c] (partial: device f32 [slices, cols]), s in order: the last
// step of column_sum_accumulate, for kernels that leave per-slice column sums of their own.
void column_partials_finish(const float* partial, int64_t slices, int64_t cols, TensorView out, cudaStream_t stream);

// adamw.cu. One fused AdamW step (rt::Ops::AdamW semantics) over contiguous f32 master, grad, m, v
// (same element count); param (any float dtype, same element count, or empty) receives the updated
// master rounded to nearest even.
void adamw_step(TensorView master, TensorView grad, TensorView m, TensorView v, TensorView param,
                const Ops::AdamW& hp, cudaStream_t stream);

// y = x W^T (+ b) with a plain tiled kernel (fp32 accumulation, any float dtypes): the fallback
// of linear() when cuBLASLt offers no algorithm for a layout.
void gemm_simple_forward(TensorView x, TensorView w, TensorView bias, TensorView y, cudaStream_t stream);
// The argument checks every matmul entry makes: a, b, d on the device, float dtypes, 2-D, rows
// contiguous. Throws rt::Error naming op and argument.
void check_matmul_operands(const char* op, const TensorView& a, const TensorView& b, const TensorView& d);
// d [M, N] (= or +=) op(a) op(b) with the same tiled kernel (see GemmContext::matmul for the
// layout): the fallback of matmul() when cuBLASLt has no algorithm. Any float dtypes.
void gemm_simple_matmul(TensorView a, bool trans_a, TensorView b, bool trans_b, TensorView d, bool accumulate,
                        cudaStream_t stream);
// gemv.cu: y (= or += when accumulate) x W^T (+ b) for at most kGemvMaxRows rows of x (decode), bf16
// W with 16-byte aligned rows, x bf16 or f32 (rounded to bf16), y bf16 or f32, fp32 accumulation.
// linear() and linear_accumulate() route here when gemv_applies: one launch instead of a
// cublasLtMatmul call, whose host cost dominated a decode step.
inline constexpr int64_t kGemvMaxRows = 4;
bool gemv_applies(const TensorView& x, const TensorView& w, const TensorView& y);
void gemv_forward(TensorView x, TensorView w, TensorView bias, TensorView y, bool accumulate, cudaStream_t stream);
// y[r, :] += bias (for GEMMs whose bias could not be fused into the epilogue).
void bias_add_forward(TensorView y, TensorView bias, cudaStream_t stream);

// Device-side error record of the kernels that index with device ids: {flag, bad id, position,
// vocab}. The first kernel to find a bad id fills the record (never reading out of bounds); the
// owner reads it back after a synchronization (see CudaOps::check_device_errors). flag says who:
// embedding forward (the output row is NaN), embedding backward (the row's gradient is dropped),
// lm_head_cross_entropy (the row's loss is NaN, its gradient zero).
enum : int32_t { kErrEmbedding = 1, kErrEmbeddingBackward = 2, kErrCrossEntropyTarget = 3 };
struct EmbeddingError {
  int32_t flag, id, pos, vocab;
};
// out[t, :] = table[ids[t], :]. ids I32 on the device (checked on the device into `err`, which
// may be null to skip the record) or on the host (checked here before upload, throwing at once).
void embedding_forward(TensorView table, TensorView ids, TensorView out, EmbeddingError* err,
                       cudaStream_t stream);
// dtable[ids[t], :] += dout[t, :] (f32 dtable; repeated ids sum in position order: a stable sort by
// id, then one block per row, no atomics, so the result is the same bits on every run).
// ids as for embedding_forward (device ids checked into `err`, flag kErrEmbeddingBackward).
void embedding_backward(TensorView ids, TensorView dout, TensorView dtable, EmbeddingError* err,
                        cudaStream_t stream);

// y = w * x / sqrt(mean(x^2) + eps) row-wise in fp32; x f32/bf16/f16, y f32/bf16/f16.
void rmsnorm_forward(TensorView x, TensorView w, float eps, TensorView y, cudaStream_t stream);
// Ops::rmsnorm_keep_input: the fast path's warp per row also stores the row it read into x_copy.
void rmsnorm_keep_input_forward(TensorView x, TensorView w, float eps, TensorView y, TensorView x_copy,
                                cudaStream_t stream);
// Ops::rmsnorm_route_at in one block: y = rmsnorm(x) * g as rmsnorm_forward writes it, the router's
// z = y . w, d = (z >= z_min and pos >= first), steps += d.
void rmsnorm_route_at_forward(TensorView x, TensorView g, float eps, TensorView w, float z_min, TensorView pos,
                              int64_t first, TensorView y, TensorView d, TensorView steps, cudaStream_t stream);
// Backward of y = rmsnorm(x) * w, fp32:  dx += r (dy w - x r^2 mean(dy w x)),  dw += sum_rows dy x r,
// r = 1 / sqrt(mean(x^2) + eps). dx (any float dtype; may be x or dy itself) and dw (f32) are
// optional (empty view: skipped). Three passes: per-row statistics, dw (deterministic column
// sums), dx.
void rmsnorm_backward(TensorView x, TensorView w, float eps, TensorView dy, TensorView dx, TensorView dw,
                      cudaStream_t stream);

// In-place rotate-half RoPE on x [T, H, D] (f32/bf16/f16), positions pos0.., angles computed
// exactly as backends/cpu/rope.cpp so the two paths agree.
void rope_forward(TensorView x, int64_t pos0, double theta, cudaStream_t stream);
// The transpose of rope_forward, in place on dx: the rotation by minus the same angles.
void rope_backward(TensorView dx, int64_t pos0, double theta, cudaStream_t stream);
// rope (or, inverse, its backward) on routed rows: row i of x [cap, H, D] at position pos0 + index[i],
// for i < count[0] (device I32); other rows untouched. Same angles as rope_forward, bit for bit.
void rope_rows_forward(TensorView x, TensorView index, TensorView count, int64_t pos0, double theta, bool inverse,
                       cudaStream_t stream);

// routing.cu: L2A's routed rows, all on the device (no host synchronization).
// index[0..n) (=) the t with flags[t] != 0 in ascending order (CUB DeviceSelect), count (=) n, the
// rest of index 0. flags [T] contiguous f32, index [T] I32 contiguous, count I32 [1].
void compact_rows_forward(TensorView flags, TensorView index, TensorView count, cudaStream_t stream);
// out[0] = pos[0] >= first ? gate[0] : 0 (Ops::gate_from_position_at), all on the device.
void gate_from_position_at_forward(TensorView pos, int64_t first, TensorView gate, TensorView out, cudaStream_t stream);
// out[0] = rt::position_draw(key, pos[0], below) ? 1 : 0 (Ops::position_draw_at), on the device.
void position_draw_at_forward(TensorView pos, uint64_t key, double below, TensorView out, cudaStream_t stream);
// out[i] = rt::position_draw(key, pos0 + i, below) ? 1 : 0 over out [T] f32 (Ops::position_draw_rows).
void position_draw_rows_forward(int64_t pos0, uint64_t key, double below, TensorView out, cudaStream_t stream);
// out[i, :] (=) x[index[i], :] for i < count, zero rows after; x [T, C], out [cap, C], any float dtypes.
void gather_rows_forward(TensorView x, TensorView index, TensorView count, TensorView out, cudaStream_t stream);
// dst[index[i], :] += src[i, :] for i < count (distinct indices: no atomics, deterministic).
void scatter_add_rows_forward(TensorView src, TensorView index, TensorView count, TensorView dst,
                              cudaStream_t stream);
// qkv [T, (Hq + 2 Hkv) D] (q | k | v columns) split into q [T, Hq, D], k, v [T, Hkv, D] (any row and
// head strides), rope_forward's rotation applied to q and k on the way (the same angles, so the
// result equals copy + rope_forward bit for bit).
void qkv_rope_split_forward(TensorView qkv, int64_t pos0, double theta, TensorView q, TensorView k, TensorView v,
                            cudaStream_t stream);
// The same for one token whose position is read from the device (pos: I32 [1]), q [1, Hq, D], its
// k and v written into row pos (or pos % ring, ring > 0) of the caches k_cache, v_cache
// [capacity, Hkv, D]: the same work at every position, so a decode step can be captured and replayed.
void qkv_rope_split_at_forward(TensorView qkv, TensorView pos, double theta, TensorView q, TensorView k_cache,
                               TensorView v_cache, int64_t ring, cudaStream_t stream);

// Index of the largest value of the last row of logits ([V] or [rows, V], f32) written to
// *out_dev (device memory, no synchronization: usable inside a CUDA graph). First index wins
// ties; NaNs are skipped.
void argmax_last_row_async(const TensorView& logits, int32_t* out_dev, cudaStream_t stream);
// out[r * o_stride] = 1 where targets[r * t_stride] is the argmax of row r of the contiguous f32
// logits [rows, V] (first index wins ties, NaNs skipped), else 0.
void greedy_rows_async(const float* logits, int64_t rows, int64_t V, const int32_t* targets, int64_t t_stride,
                       int32_t* out, int64_t o_stride, cudaStream_t stream);

}  // namespace rt::cuda
