// CPU attention backward (the fp32 reference for the CUDA kernels). See attention_backward.cpp.
#pragma once

#include "rt/sdk/ops.h"
#include "rt/sdk/tensor.h"

namespace rt::cpu {

// Gradients of o = softmax(q k^T * scale + mask) v (rt::cpu::attention_forward, same masks and GQA
// layout): given o (the forward output) and dout = dL/do, writes dq [Tq, Hq, D], dk, dv [Tk, Hkv, D].
// For query head h on KV head g = h / (Hq / Hkv):
//   P = softmax(S), S = scale q k^T + mask (rows that see no key: P = 0)
//   dV_g = sum_h P^T dO,  dP = dO V^T,  D_i = rowsum(dO_i * O_i),  dS = P * (dP - D)
//   dQ = scale dS K,      dK_g = sum_h scale dS^T Q
// Every tensor is f32 on the CPU with a contiguous last dimension; outputs are overwritten.
void attention_backward(TensorView q, TensorView k, TensorView v, TensorView o, TensorView dout, TensorView dq,
                        TensorView dk, TensorView dv, const AttentionSpec& spec);

}  // namespace rt::cpu
