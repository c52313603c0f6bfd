#include "model/mlp.h"

namespace rt {

void mlp_forward(const LayerContext& ctx, TensorView x) {
  Ops& ops = *ctx.ops;
  const ModelDims& d = *ctx.dims;
  const LayerParams& p = *ctx.params;
  const int64_t T = x.shape[0];
  const DType act = ops.activation_dtype();
  Tensor u = ops.alloc(act, {T, d.hidden});
  ops.rmsnorm(x, p.get("post_attention_layernorm.weight"), d.rms_eps, u);
  Tensor gate = ops.alloc(act, {T, d.intermediate});
  Tensor up = ops.alloc(act, {T, d.intermediate});
  ops.linear(u, p.get("mlp.gate_proj.weight"), TensorView{}, gate);
  ops.linear(u, p.get("mlp.up_proj.weight"), TensorView{}, up);
  ops.swiglu(gate, up, gate);
  Tensor down = ops.alloc(act, {T, d.hidden});
  ops.linear(gate, p.get("mlp.down_proj.weight"), TensorView{}, down);
  ops.add(x, down, x);
}

}  // namespace rt
