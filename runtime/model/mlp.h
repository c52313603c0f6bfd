// The Qwen2 MLP sublayer: x += down(silu(gate(u)) * up(u)), u = RMSNorm_post(x).
#pragma once

#include "rt/sdk/attention_backend.h"

namespace rt {

void mlp_forward(const LayerContext& ctx, TensorView x);

}  // namespace rt
