// The CPU kernels, one free function per op (llm.c style): <op>_forward here, <op>_backward beside
// it in the same file when training lands. Each function checks its arguments (device, dtype,
// shape) and throws rt::Error naming the op and the argument. CpuOps forwards to these.
//
// Files: elementwise.cpp (copy, fill, add, swiglu), embedding.cpp, linear.cpp, rmsnorm.cpp,
// rope.cpp, attention.cpp.
#pragma once

#include <cstdint>

#include "rt/sdk/ops.h"
#include "rt/sdk/tensor.h"

namespace rt::cpu {

void copy_forward(TensorView src, TensorView dst);
void fill_forward(TensorView dst, float value);
void add_forward(TensorView a, TensorView b, TensorView out);
void swiglu_forward(TensorView gate, TensorView up, TensorView out);
void embedding_forward(TensorView table, TensorView ids, TensorView out);
void linear_forward(TensorView x, TensorView w, TensorView bias, TensorView y);
void rmsnorm_forward(TensorView x, TensorView w, float eps, TensorView y);
void rope_forward(TensorView x, int64_t pos0, double theta);
void attention_forward(TensorView q, TensorView k, TensorView v, TensorView o, const AttentionSpec& spec);

}  // namespace rt::cpu
