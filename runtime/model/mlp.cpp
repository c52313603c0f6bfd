#include "model/mlp.h"

namespace rt {

namespace {
constexpr const char* kNorm = "post_attention_layernorm.weight";
constexpr const char* kGate = "mlp.gate_proj.weight";
constexpr const char* kUp = "mlp.up_proj.weight";
constexpr const char* kDown = "mlp.down_proj.weight";
}  // namespace

void mlp_forward(const LayerContext& ctx, TensorView x) {
  Ops& ops = *ctx.ops;
  const ModelDims& d = *ctx.dims;
  const LayerParams& p = *ctx.params;
  const int64_t T = x.shape[0];
  const DType act = ops.activation_dtype();
  Tensor u = ops.alloc(act, {T, d.hidden});
  ops.rmsnorm(x, p.get(kNorm), d.rms_eps, u);
  Tensor gate = ops.alloc(act, {T, d.intermediate});
  Tensor up = ops.alloc(act, {T, d.intermediate});
  ops.linear(u, p.get(kGate), TensorView{}, gate);
  ops.linear(u, p.get(kUp), TensorView{}, up);
  ops.swiglu(gate, up, gate);
  Tensor down = ops.alloc(act, {T, d.hidden});
  ops.linear(gate, p.get(kDown), TensorView{}, down);
  ops.add(x, down, x);
}

MlpActivations mlp_forward_train(const LayerContext& ctx, TensorView x) {
  Ops& ops = *ctx.ops;
  const ModelDims& d = *ctx.dims;
  const LayerParams& p = *ctx.params;
  const int64_t T = x.shape[0];
  const DType act = ops.activation_dtype();
  MlpActivations a;
  a.x_in = ops.alloc(x.dtype, {T, d.hidden});
  ops.copy(x, a.x_in);
  a.u = ops.alloc(act, {T, d.hidden});
  ops.rmsnorm(x, p.get(kNorm), d.rms_eps, a.u);
  a.gate = ops.alloc(act, {T, d.intermediate});
  a.up = ops.alloc(act, {T, d.intermediate});
  ops.linear(a.u, p.get(kGate), TensorView{}, a.gate);
  ops.linear(a.u, p.get(kUp), TensorView{}, a.up);
  a.s = ops.alloc(act, {T, d.intermediate});
  ops.swiglu(a.gate, a.up, a.s);
  Tensor down = ops.alloc(act, {T, d.hidden});
  ops.linear(a.s, p.get(kDown), TensorView{}, down);
  ops.add(x, down, x);
  return a;
}

void mlp_backward(const LayerContext& ctx, const MlpActivations& a, TensorView dx, const LayerGrads& grads) {
  Ops& ops = *ctx.ops;
  const ModelDims& d = *ctx.dims;
  const LayerParams& p = *ctx.params;
  const int64_t T = dx.shape[0];
  const DType act = ops.activation_dtype();
  Tensor dy = ops.alloc(act, {T, d.hidden});
  ops.copy(dx, dy);
  Tensor ds = ops.alloc(act, {T, d.intermediate});
  ops.linear_backward(a.s, p.get(kDown), dy, ds, grads.get(kDown), TensorView{}, false);
  Tensor dgate = ops.alloc(act, {T, d.intermediate});
  Tensor dup = ops.alloc(act, {T, d.intermediate});
  ops.swiglu_backward(a.gate, a.up, ds, dgate, dup);
  Tensor du = ops.alloc(ops.accum_dtype(), {T, d.hidden});
  ops.linear_backward(a.u, p.get(kGate), dgate, du, grads.get(kGate), TensorView{}, false);
  ops.linear_backward(a.u, p.get(kUp), dup, du, grads.get(kUp), TensorView{}, true);
  ops.rmsnorm_backward(a.x_in, p.get(kNorm), d.rms_eps, du, dx, grads.get(kNorm));
}

}  // namespace rt
