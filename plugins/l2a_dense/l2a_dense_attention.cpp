// l2a_dense: L2A ("Learning When to Attend", DESIGN.md section 4) with the global attention
// computed densely for every token and then masked by the router's decisions. It is the
// reference the fused kernels are measured against: every op goes through rt::Ops, so on CUDA the
// attention is the backend's ordinary kernel over all T queries, whatever the sparsity.
//
// Layouts:
//   paper    x1 = x + SWA(RMSNorm_in(x));  h2 = RMSNorm_g(x1);  x2 = x1 + d * GlobalAttn(h2)
//            with its own global norm and q/k/v/o (initialized as copies of the local ones)
//   parallel o = (SWA(q,k,v) + d * Causal(q,k,v)) Wo, one set of projections, router on h
// The router (a Router plugin, linear_sigmoid by default) gives p and hard decisions d; the
// backward is straight-through: dL/dp = dL/dd (+ the regularizer's 2 coef p).
#include <memory>
#include <vector>

#include "../l2a_common/l2a_layer.h"
#include "rt/sdk/plugin.h"

namespace rt::l2a {
namespace {

class DenseL2aAttention final : public L2aBackendBase {
 public:
  Capabilities capabilities() const override {
    Capabilities c = l2a_capabilities();
    c.cpu = true;
    c.cuda = true;
    return c;
  }
  void configure(const Options& options, const ModelDims& dims) override {
    // Dense and naive on purpose: scores materialized (the replication's pure-PyTorch style).
    configure_layers(options, dims, "l2a_dense", /*materialize=*/true);
  }
  double forward_flops(const ModelDims& d, int64_t T) const override { return l2a_forward_flops(d, T, 1.0); }

  void forward(const LayerContext& ctx, TensorView x, AttentionState* state) override {
    auto* st = static_cast<L2aState*>(state);
    if (pruned_forward(ctx, x, st)) return;
    const int64_t pos0 = st ? st->tokens_seen() : 0;
    Route r;
    if (cfg_.layout == Layout::Paper) {
      attention_sublayer_forward(ctx, local_, x, st ? st->local.get() : nullptr);
      Tensor h2 = normed(ctx, x, global_.norm);
      r = route(ctx, h2, pos0, false, 0);
      attention_sublayer_forward(ctx, global_, x, st ? st->global.get() : nullptr, r.d, &h2);
    } else {
      parallel_inference(ctx, x, st, pos0, r);
    }
    remember_decisions(ctx, r);
  }

  std::unique_ptr<SavedActivations> forward_train(const LayerContext& ctx, TensorView x,
                                                  const TrainContext& tc) override {
    auto s = std::make_unique<Saved>();
    Ops& ops = *ctx.ops;
    const int64_t T = x.shape[0];
    if (cfg_.pruned(ctx.layer)) {
      s->pruned = true;
      s->local = attention_sublayer_forward_train(ctx, local_, x, TensorView{});
      record_pruned_stats(ctx, tc, T);
      return s;
    }
    if (cfg_.layout == Layout::Paper) {
      s->local = attention_sublayer_forward_train(ctx, local_, x, TensorView{});
      s->h = normed(ctx, x, global_.norm);
      s->route = route(ctx, s->h, 0, true, tc.step);
      s->global = attention_sublayer_forward_train(ctx, global_, x, s->route.d, &s->h);
    } else {
      const ModelDims& d = *ctx.dims;
      const DType act = ops.activation_dtype();
      parallel_local_forward_train(ctx, x, tc, s->local, s->route);
      s->h = s->local.h;
      const Qkv& qkv = s->local.qkv;
      s->global.o = ops.alloc(act, {T, d.n_heads, d.head_dim});
      s->global.lse = ops.alloc(ops.accum_dtype(), {d.n_heads, T});
      ops.attention_forward_lse(qkv.q, qkv.k, qkv.v, s->global.o, s->global.lse, sublayer_attention_spec(d, global_, 0));
      s->o = combine(ctx, s->local.o, s->global.o, s->route.d);
      add_output_projection(ctx, s->o, x);
    }
    // Global attention runs for every token on every forward: every forward "leaks" (leak_prob is
    // l2a_fused's; this dense reference gives every gate its task-loss gradient, as the PyTorch
    // reference of tools/make_l2a_fixtures.py does).
    record_stats(ctx, tc, s->route, T, /*leaked=*/true);
    return s;
  }

  void backward(const LayerContext& ctx, SavedActivations& saved, TensorView dx, const LayerGrads& grads,
                const TrainContext& tc) override {
    Saved& s = static_cast<Saved&>(saved);
    if (s.pruned) {
      attention_sublayer_backward(ctx, local_, s.local, dx, grads, TensorView{}, TensorView{});
      return;
    }
    Ops& ops = *ctx.ops;
    const ModelDims& d = *ctx.dims;
    const int64_t T = dx.shape[0];
    Tensor dgate = ops.alloc(ops.accum_dtype(), {T});
    ops.fill(dgate, 0.f);
    if (cfg_.layout == Layout::Paper) {
      attention_sublayer_backward(ctx, global_, s.global, dx, grads, s.route.d, dgate);
      Tensor dh2 = router_backward(ctx, s.h, s.route, dgate, grads, tc, T);
      if (dh2.view.data)
        ops.rmsnorm_backward(s.global.x_in, ctx.params->get(global_.norm), d.rms_eps, dh2, dx, grads.get(global_.norm));
      attention_sublayer_backward(ctx, local_, s.local, dx, grads, TensorView{}, TensorView{});
      return;
    }
    const DType act = ops.activation_dtype();
    const int64_t HD = d.n_heads * d.head_dim;
    Tensor da = ops.alloc(act, {T, d.hidden});
    ops.copy(dx, da);
    const std::string wo = local_.prefix + "o_proj.weight";
    Tensor dout = ops.alloc(act, {T, d.n_heads, d.head_dim});
    ops.linear_backward(s.o.view.reshaped({T, HD}), ctx.params->get(wo), da, dout.view.reshaped({T, HD}),
                        grads.get(wo), TensorView{}, false);
    ops.row_dot(dout.view.reshaped({T, HD}), s.global.o.view.reshaped({T, HD}), dgate, false);
    Tensor dout_g = ops.alloc(act, {T, d.n_heads, d.head_dim});
    ops.row_scale(dout.view.reshaped({T, HD}), s.route.d, dout_g.view.reshaped({T, HD}));
    const Qkv& qkv = s.local.qkv;
    Qkv g = alloc_qkv_grads(ops, d, T), g2 = alloc_qkv(ops, d, T);
    ops.attention_backward(qkv.q, qkv.k, qkv.v, s.local.o, s.local.lse, dout, g.q, g.k, g.v,
                           sublayer_attention_spec(d, local_, 0));
    ops.attention_backward(qkv.q, qkv.k, qkv.v, s.global.o, s.global.lse, dout_g, g2.q, g2.k, g2.v,
                           sublayer_attention_spec(d, global_, 0));
    ops.add(head_rows(g.q), head_rows(g2.q), head_rows(g.q));  // 2-D rows: see l2a_fused
    ops.add(head_rows(g.k), head_rows(g2.k), head_rows(g.k));
    ops.add(head_rows(g.v), head_rows(g2.v), head_rows(g.v));
    parallel_backward_tail(ctx, s.local, s.route, g, dgate, dx, grads, tc);
  }

 private:
  struct Saved final : SavedActivations {
    SublayerActivations local, global;  // parallel: local holds x_in, h, qkv and the SWA output; global its causal output
    Tensor h;                           // the router's input (paper: RMSNorm_g(x1); parallel: RMSNorm_in(x))
    Tensor o;                           // parallel: SWA + d * causal, the o_proj input
    Route route;
    bool pruned = false;  // the window sublayer alone (local)
  };

  // o = o_local + d * o_global over [T, Hq * D] rows.
  static Tensor combine(const LayerContext& ctx, const Tensor& o_local, const Tensor& o_global, const Tensor& d) {
    Ops& ops = *ctx.ops;
    const int64_t T = o_local.view.shape[0], HD = ctx.dims->n_heads * ctx.dims->head_dim;
    Tensor o = ops.alloc(ops.activation_dtype(), {T, ctx.dims->n_heads, ctx.dims->head_dim});
    ops.row_scale(o_global.view.reshaped({T, HD}), d, o.view.reshaped({T, HD}));
    ops.add(o, o_local, o);
    return o;
  }

  void add_output_projection(const LayerContext& ctx, const Tensor& o, TensorView x) const {
    Ops& ops = *ctx.ops;
    const int64_t T = x.shape[0], HD = ctx.dims->n_heads * ctx.dims->head_dim;
    Tensor a = ops.alloc(ops.activation_dtype(), {T, ctx.dims->hidden});
    ops.linear(o.view.reshaped({T, HD}), ctx.params->get(local_.prefix + "o_proj.weight"), TensorView{}, a);
    ops.add(x, a, x);
  }

  void parallel_inference(const LayerContext& ctx, TensorView x, L2aState* st, int64_t pos0, Route& r) {
    Ops& ops = *ctx.ops;
    const ModelDims& d = *ctx.dims;
    const int64_t T = x.shape[0];
    Tensor h = normed(ctx, x, local_.norm);
    Qkv qkv = project_qkv(ctx, local_, h, pos0);
    r = route(ctx, h, pos0, false, 0);
    TensorView k = qkv.k, v = qkv.v;
    if (st) {
      KvCache::Window w = st->global->append(ops, qkv.k, qkv.v, 0);
      k = w.k;
      v = w.v;
    }
    AttentionSpec local_spec = sublayer_attention_spec(d, local_, pos0), global_spec = sublayer_attention_spec(d, global_, pos0);
    Tensor o_l = ops.alloc(ops.activation_dtype(), {T, d.n_heads, d.head_dim});
    Tensor o_g = ops.alloc(ops.activation_dtype(), {T, d.n_heads, d.head_dim});
    ops.attention(qkv.q, k, v, o_l, local_spec);
    ops.attention(qkv.q, k, v, o_g, global_spec);
    add_output_projection(ctx, combine(ctx, o_l, o_g, r.d), x);
  }
};

}  // namespace
}  // namespace rt::l2a

RT_REGISTER_ATTENTION_PLUGIN(rt::l2a::DenseL2aAttention, "l2a_dense", "1.0.0",
                             "L2A, global attention dense for every token then masked by the router "
                             "(options: layout, window, tau, threshold, force_local, rope_theta, lambda, ...)")
