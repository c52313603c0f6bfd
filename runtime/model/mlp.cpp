#include "model/mlp.h"

namespace rt {

namespace {
constexpr const char* kNorm = "post_attention_layernorm.weight";
constexpr const char* kGate = "mlp.gate_proj.weight";
constexpr const char* kUp = "mlp.up_proj.weight";
constexpr const char* kDown = "mlp.down_proj.weight";

struct GateUp {
  Tensor gate, up;
};

// gate(u) and up(u): one GEMM into [T, 2I] when the model stores the two weights as consecutive
// rows (stacked_rows), gate and up then being its column halves.
GateUp project_gate_up(Ops& ops, const ModelDims& d, const LayerParams& p, TensorView u) {
  const int64_t T = u.shape[0];
  const DType act = ops.activation_dtype();
  const TensorView wg = p.get(kGate), wu = p.get(kUp);
  if (const TensorView w = stacked_rows({wg, wu}); w.data) {
    Tensor both = ops.alloc(act, {T, 2 * d.intermediate});
    ops.linear(u, w, TensorView{}, both);
    return {Tensor{both.view.cols(0, d.intermediate), both.storage},
            Tensor{both.view.cols(d.intermediate, 2 * d.intermediate), both.storage}};
  }
  GateUp r{ops.alloc(act, {T, d.intermediate}), ops.alloc(act, {T, d.intermediate})};
  ops.linear(u, wg, TensorView{}, r.gate);
  ops.linear(u, wu, TensorView{}, r.up);
  return r;
}

// x += down(silu(gate(u)) * up(u)), u = RMSNorm_post(x), into a (x_in too when it is allocated: the
// norm copies x there as it reads it).
void mlp_apply(const LayerContext& ctx, TensorView x, MlpActivations& a) {
  Ops& ops = *ctx.ops;
  const ModelDims& d = *ctx.dims;
  const LayerParams& p = *ctx.params;
  const int64_t T = x.shape[0];
  const DType act = ops.activation_dtype();
  a.u = ops.alloc(act, {T, d.hidden});
  if (a.x_in.view.data) ops.rmsnorm_keep_input(x, p.get(kNorm), d.rms_eps, a.u, a.x_in);
  else ops.rmsnorm(x, p.get(kNorm), d.rms_eps, a.u);
  GateUp gu = project_gate_up(ops, d, p, a.u);
  a.gate = std::move(gu.gate);
  a.up = std::move(gu.up);
  a.s = ops.alloc(act, {T, d.intermediate});
  ops.swiglu(a.gate, a.up, a.s);
  ops.linear_accumulate(a.s, p.get(kDown), x);  // the residual add rides on the GEMM
}

}  // namespace

void mlp_forward(const LayerContext& ctx, TensorView x) {
  MlpActivations a;
  mlp_apply(ctx, x, a);
}

MlpActivations mlp_forward_train(const LayerContext& ctx, TensorView x) {
  MlpActivations a;
  a.x_in = ctx.ops->alloc(x.dtype, {x.shape[0], ctx.dims->hidden});
  mlp_apply(ctx, x, a);
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
  Tensor du = ops.alloc(ops.accum_dtype(), {T, d.hidden});
  // With gate and up stored as one [2I, hidden] weight (and their gradients likewise, or both
  // frozen), du = [dgate | dup] [Wg; Wu] is one GEMM of depth 2I: no second pass over du to add
  // the other half.
  const TensorView wg = p.get(kGate), wu = p.get(kUp), gg = grads.get(kGate), gu = grads.get(kUp);
  const TensorView w = stacked_rows({wg, wu});
  const bool frozen = gg.data == nullptr && gu.data == nullptr;
  const TensorView gw = frozen ? TensorView{} : stacked_rows({gg, gu});
  if (w.data && (frozen || gw.data)) {
    Tensor both = ops.alloc(act, {T, 2 * d.intermediate});
    ops.swiglu_backward(a.gate, a.up, ds, both.view.cols(0, d.intermediate),
                        both.view.cols(d.intermediate, 2 * d.intermediate));
    ops.linear_backward(a.u, w, both, du, gw, TensorView{}, false);
  } else {
    Tensor dgate = ops.alloc(act, {T, d.intermediate});
    Tensor dup = ops.alloc(act, {T, d.intermediate});
    ops.swiglu_backward(a.gate, a.up, ds, dgate, dup);
    ops.linear_backward(a.u, wg, dgate, du, gg, TensorView{}, false);
    ops.linear_backward(a.u, wu, dup, du, gu, TensorView{}, true);
  }
  ops.rmsnorm_backward(a.x_in, p.get(kNorm), d.rms_eps, du, dx, grads.get(kNorm));
}

}  // namespace rt
