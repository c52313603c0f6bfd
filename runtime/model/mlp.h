// The Qwen2 MLP sublayer: x += down(silu(gate(u)) * up(u)), u = RMSNorm_post(x).
// mlp_forward for inference; mlp_forward_train / mlp_backward for training.
#pragma once

#include "rt/sdk/attention_backend.h"

namespace rt {

void mlp_forward(const LayerContext& ctx, TensorView x);

// What mlp_backward needs from the forward.
struct MlpActivations {
  Tensor x_in;      // the residual stream before the sublayer (accum dtype)
  Tensor u;         // RMSNorm_post(x_in)
  Tensor gate, up;  // the two projections, before the activation
  Tensor s;         // silu(gate) * up, the down projection's input
};

MlpActivations mlp_forward_train(const LayerContext& ctx, TensorView x);
// dx: dL/d(x after) in, dL/d(x before) out, in place. Weight gradients go to grads (frozen
// weights have empty gradient views and are skipped).
void mlp_backward(const LayerContext& ctx, const MlpActivations& a, TensorView dx, const LayerGrads& grads);

}  // namespace rt
