// CPU attention backward (the reference for the CUDA kernels). Declared in cpu/kernels.h with the
// lse argument of rt::Ops::attention_backward; see attention_backward.cpp.
#pragma once

#include "cpu/kernels.h"
#include "rt/sdk/ops.h"
#include "rt/sdk/tensor.h"

namespace rt::cpu {

// The same without lse (recomputed): the signature the CUDA tests compare against. Gradients of
// o = softmax(q k^T * scale + mask) v (rt::cpu::attention_forward, same masks and GQA layout):
// given o and dout = dL/do, writes (=) dq [Tq, Hq, D], dk, dv [Tk, Hkv, D].
//   P = softmax(S), S = scale q k^T + mask (rows that see no key: P = 0)
//   dV_g = sum_h P^T dO,  dP = dO V^T,  D_i = rowsum(dO_i * O_i),  dS = P * (dP - D)
//   dQ = scale dS K,      dK_g = sum_h scale dS^T Q
inline void attention_backward(TensorView q, TensorView k, TensorView v, TensorView o, TensorView dout,
                               TensorView dq, TensorView dk, TensorView dv, const AttentionSpec& spec) {
  attention_backward(q, k, v, o, TensorView{}, dout, dq, dk, dv, spec);
}

}  // namespace rt::cpu
