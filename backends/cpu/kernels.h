// The CPU kernels, one free function per op (llm.c style): <op>_forward, and <op>_backward beside
// it in the same file. Each function checks its arguments (device, dtype, shape) and throws
// rt::Error naming the op and the argument. CpuOps forwards to these.
//
// Compute dtype: every kernel runs in the dtype of its activations, f32 or f64 (f64: the CPU
// backend made for finite-difference gradient checks, make_cpu_ops(DType::F64)); weights may be
// any float dtype (f32, bf16, f16, f64) and are converted. Training conventions (rt/sdk/ops.h):
// "=" outputs are overwritten, "+=" outputs accumulate, an empty output view (data == nullptr) is
// not computed.
//
// Files: elementwise.cpp (copy, fill, add, swiglu, sigmoid, step, axpby), reduce.cpp (row_scale,
// row_dot, reduce_sum), embedding.cpp, linear.cpp, rmsnorm.cpp, rope.cpp, attention.cpp,
// attention_backward.cpp, cross_entropy.cpp (lm_head_cross_entropy), adamw.cpp.
#pragma once

#include <cstdint>

#include "rt/sdk/ops.h"
#include "rt/sdk/tensor.h"

namespace rt::cpu {

void copy_forward(TensorView src, TensorView dst);
void fill_forward(TensorView dst, float value);
void add_forward(TensorView a, TensorView b, TensorView out);
void swiglu_forward(TensorView gate, TensorView up, TensorView out);
void swiglu_backward(TensorView gate, TensorView up, TensorView dout, TensorView dgate, TensorView dup);
void sigmoid_forward(TensorView x, float scale, TensorView y);
void sigmoid_backward(TensorView y, TensorView dy, float scale, TensorView dx);
void step_forward(TensorView x, float threshold, TensorView y);
void axpby_forward(float alpha, TensorView x, float beta, TensorView y, TensorView out);

void row_scale_forward(TensorView x, TensorView s, TensorView out);
void row_dot_forward(TensorView a, TensorView b, TensorView out, bool accumulate);
void reduce_sum_forward(TensorView x, int power, TensorView out);

void embedding_forward(TensorView table, TensorView ids, TensorView out);
void embedding_backward(TensorView ids, TensorView dout, TensorView dtable);
void linear_forward(TensorView x, TensorView w, TensorView bias, TensorView y);
void linear_backward(TensorView x, TensorView w, TensorView dy, TensorView dx, TensorView dw, TensorView db,
                     bool accumulate_dx);
void rmsnorm_forward(TensorView x, TensorView w, float eps, TensorView y);
void rmsnorm_backward(TensorView x, TensorView w, float eps, TensorView dy, TensorView dx, TensorView dw);
void rope_forward(TensorView x, int64_t pos0, double theta);
void rope_backward(TensorView dx, int64_t pos0, double theta);

// lse: [Hq, Tq] of q's dtype, or an empty view (not written).
void attention_forward(TensorView q, TensorView k, TensorView v, TensorView o, const AttentionSpec& spec);
void attention_forward_lse(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                           const AttentionSpec& spec);
// lse as written by attention_forward_lse, or an empty view: then it is recomputed.
void attention_backward(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse, TensorView dout,
                        TensorView dq, TensorView dk, TensorView dv, const AttentionSpec& spec);

void lm_head_cross_entropy(TensorView h, TensorView w, TensorView targets, float grad_scale, TensorView losses,
                           TensorView dh, TensorView dw, TensorView is_greedy = TensorView{});
// Logit elements (rows x V) lm_head_cross_entropy holds at once; the rows per chunk are
// max(1, this / V). Settable so that tests can force many small chunks; returns the old value.
int64_t cross_entropy_chunk_elems();
int64_t set_cross_entropy_chunk_elems(int64_t elems);

void adamw_step(TensorView master, TensorView grad, TensorView m, TensorView v, TensorView param,
                const Ops::AdamW& hp);

}  // namespace rt::cpu
