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
#include <map>
#include <memory>
#include <vector>

#include "../l2a_common/l2a_config.h"
#include "rt/sdk/attention_sublayer.h"
#include "rt/sdk/plugin.h"

namespace rt::l2a {
namespace {

class L2aState final : public AttentionState {
 public:
  std::unique_ptr<KvCache> local;   // paper: ring of W over the local projections; parallel: none
  std::unique_ptr<KvCache> global;  // every token (a future routed query may attend to any of them)
  int64_t tokens_seen() const override { return global->tokens_seen(); }
  size_t kv_bytes() const override { return global->kv_bytes() + (local ? local->kv_bytes() : 0); }
};

struct Route {
  Tensor p, d;  // [T] accum dtype; d already forced to 0 where force_local applies
  int64_t forced = 0;
};

class DenseL2aAttention final : public AttentionBackend {
 public:
  Capabilities capabilities() const override {
    Capabilities c;
    c.cpu = true;
    c.cuda = true;
    c.f32 = true;
    c.bf16 = true;
    c.backward = true;
    c.decode = true;
    c.router = true;
    c.kv = KvPolicy::Custom;
    return c;
  }
  void attach_router(Router* r) override { router_ = r; }

  void configure(const Options& options, const ModelDims& dims) override {
    RT_CHECK(router_ != nullptr, "l2a_dense: no router attached (the runtime attaches one before configure)");
    Options router_options = cfg_.parse(options, "l2a_dense", router_->option_names());
    router_->configure(router_options, dims);
    // Dense and naive on purpose: scores materialized (the replication's pure-PyTorch style).
    local_.materialize = global_.materialize = true;
    local_.window = cfg_.window;
    local_.rope_theta = cfg_.rope_theta;
    global_.rope_theta = cfg_.rope_theta;
    global_.window = 0;
    if (cfg_.layout == Layout::Paper) {
      global_.norm = "global_layernorm.weight";
      global_.prefix = "global_attn.";
    }
  }

  std::vector<ParamDecl> extra_params(const ModelDims& d) const override {
    std::vector<ParamDecl> out;
    if (cfg_.layout == Layout::Paper) {
      const int64_t q = d.n_heads * d.head_dim, kv = d.n_kv_heads * d.head_dim;
      out.push_back({"global_layernorm.weight", {d.hidden}, "copy_of:input_layernorm.weight"});
      const struct {
        const char* name;
        int64_t rows;
      } proj[] = {{"q_proj", q}, {"k_proj", kv}, {"v_proj", kv}};
      for (const auto& pr : proj) {
        const std::string n = pr.name;
        out.push_back({"global_attn." + n + ".weight", {pr.rows, d.hidden}, "copy_of:self_attn." + n + ".weight"});
        out.push_back({"global_attn." + n + ".bias", {pr.rows}, "copy_of:self_attn." + n + ".bias"});
      }
      out.push_back({"global_attn.o_proj.weight", {d.hidden, q}, "copy_of:self_attn.o_proj.weight"});
    }
    if (router_)
      for (auto& decl : router_->extra_params(d)) out.push_back(decl);
    return out;
  }

  std::unique_ptr<AttentionState> new_state(const LayerContext& ctx, int64_t max_tokens) override {
    auto s = std::make_unique<L2aState>();
    if (cfg_.layout == Layout::Paper) s->local = std::make_unique<KvCache>(*ctx.ops, *ctx.dims, max_tokens, cfg_.window);
    s->global = std::make_unique<KvCache>(*ctx.ops, *ctx.dims, max_tokens, 0);
    return s;
  }

  double forward_flops(const ModelDims& d, int64_t T) const override {
    if (cfg_.layout == Layout::Paper)
      return attention_sublayer_flops(d, T, cfg_.window) + attention_sublayer_flops(d, T, 0) + 2.0 * T * d.hidden;
    return attention_sublayer_flops(d, T, cfg_.window) + 4.0 * visible_pairs(T, 0) * d.head_dim * d.n_heads +
           2.0 * T * d.hidden;
  }

  void forward(const LayerContext& ctx, TensorView x, AttentionState* state) override {
    auto* st = static_cast<L2aState*>(state);
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
    last_d_[ctx.layer] = r.d;
    ops_ = ctx.ops;
  }

  std::unique_ptr<SavedActivations> forward_train(const LayerContext& ctx, TensorView x,
                                                  const TrainContext& tc) override {
    auto s = std::make_unique<Saved>();
    Ops& ops = *ctx.ops;
    const int64_t T = x.shape[0];
    if (cfg_.layout == Layout::Paper) {
      s->local = attention_sublayer_forward_train(ctx, local_, x, TensorView{});
      s->h = normed(ctx, x, global_.norm);
      s->route = route(ctx, s->h, 0, true, tc.step);
      s->global = attention_sublayer_forward_train(ctx, global_, x, s->route.d, &s->h);
    } else {
      const ModelDims& d = *ctx.dims;
      const DType act = ops.activation_dtype();
      s->local.x_in = ops.alloc(x.dtype, {T, d.hidden});
      ops.copy(x, s->local.x_in);
      s->h = normed(ctx, x, local_.norm);
      s->local.h = s->h;
      s->local.qkv = project_qkv(ctx, local_, s->h, 0);
      s->route = route(ctx, s->h, 0, true, tc.step);
      const Qkv& qkv = s->local.qkv;
      s->local.o = ops.alloc(act, {T, d.n_heads, d.head_dim});
      s->local.lse = ops.alloc(ops.accum_dtype(), {d.n_heads, T});
      ops.attention_forward_lse(qkv.q, qkv.k, qkv.v, s->local.o, s->local.lse, sublayer_attention_spec(d, local_, 0));
      s->global.o = ops.alloc(act, {T, d.n_heads, d.head_dim});
      s->global.lse = ops.alloc(ops.accum_dtype(), {d.n_heads, T});
      ops.attention_forward_lse(qkv.q, qkv.k, qkv.v, s->global.o, s->global.lse, sublayer_attention_spec(d, global_, 0));
      s->o = combine(ctx, s->local.o, s->global.o, s->route.d);
      add_output_projection(ctx, s->o, x);
    }
    record_stats(ctx, tc, *s, T);
    return s;
  }

  void backward(const LayerContext& ctx, SavedActivations& saved, TensorView dx, const LayerGrads& grads,
                const TrainContext& tc) override {
    Saved& s = static_cast<Saved&>(saved);
    Ops& ops = *ctx.ops;
    const ModelDims& d = *ctx.dims;
    const int64_t T = dx.shape[0];
    Tensor dgate = ops.alloc(ops.accum_dtype(), {T});
    ops.fill(dgate, 0.f);
    if (cfg_.layout == Layout::Paper) {
      attention_sublayer_backward(ctx, global_, s.global, dx, grads, s.route.d, dgate);
      Tensor dh2 = router_backward(ctx, s, dgate, grads, tc, T);
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
    Qkv g = alloc_qkv(ops, d, T), g2 = alloc_qkv(ops, d, T);
    ops.attention_backward(qkv.q, qkv.k, qkv.v, s.local.o, s.local.lse, dout, g.q, g.k, g.v,
                           sublayer_attention_spec(d, local_, 0));
    ops.attention_backward(qkv.q, qkv.k, qkv.v, s.global.o, s.global.lse, dout_g, g2.q, g2.k, g2.v,
                           sublayer_attention_spec(d, global_, 0));
    ops.add(g.q, g2.q, g.q);
    ops.add(g.k, g2.k, g.k);
    ops.add(g.v, g2.v, g.v);
    Tensor dh = ops.alloc(ops.accum_dtype(), {T, d.hidden});
    ops.fill(dh, 0.f);
    project_qkv_backward(ctx, local_, s.h, g.q, g.k, g.v, 0, dh, grads);
    Tensor dh_router = router_backward(ctx, s, dgate, grads, tc, T);
    if (dh_router.view.data) ops.add(dh, dh_router, dh);
    ops.rmsnorm_backward(s.local.x_in, ctx.params->get(local_.norm), d.rms_eps, dh, dx, grads.get(local_.norm));
  }

  std::vector<float> last_decisions(int layer) const override {
    auto it = last_d_.find(layer);
    if (it == last_d_.end()) return {};
    return host_values(it->second);
  }

 private:
  struct Saved final : SavedActivations {
    SublayerActivations local, global;  // parallel: local holds x_in, h, qkv and the SWA output; global its causal output
    Tensor h;                           // the router's input (paper: RMSNorm_g(x1); parallel: RMSNorm_in(x))
    Tensor o;                           // parallel: SWA + d * causal, the o_proj input
    Route route;
  };

  static Qkv alloc_qkv(Ops& ops, const ModelDims& d, int64_t T) {
    const DType act = ops.activation_dtype();
    return {ops.alloc(act, {T, d.n_heads, d.head_dim}), ops.alloc(act, {T, d.n_kv_heads, d.head_dim}),
            ops.alloc(act, {T, d.n_kv_heads, d.head_dim})};
  }

  static Tensor normed(const LayerContext& ctx, TensorView x, const std::string& norm) {
    Tensor h = ctx.ops->alloc(ctx.ops->activation_dtype(), {x.shape[0], ctx.dims->hidden});
    ctx.ops->rmsnorm(x, ctx.params->get(norm), ctx.dims->rms_eps, h);
    return h;
  }

  Route route(const LayerContext& ctx, TensorView h, int64_t pos0, bool training, int64_t step) const {
    Ops& ops = *ctx.ops;
    const int64_t T = h.shape[0];
    Route r{ops.alloc(ops.accum_dtype(), {T}), ops.alloc(ops.accum_dtype(), {T}), cfg_.forced_rows(pos0, T)};
    RouteCall call;
    call.pos0 = pos0;
    call.training = training;
    call.step = step;
    router_->forward(ctx, h, call, r.p, r.d);
    if (r.forced > 0) ops.fill(r.d.view.rows(0, r.forced), 0.f);
    return r;
  }

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

  // dL/dp = dL/dd (zero at forced positions: the gate there is a constant) + the regularizer's
  // 2 coef p; the router pulls it back. Returns dL/dh of the router's input (empty if the router
  // has no trainable path).
  Tensor router_backward(const LayerContext& ctx, const Saved& s, Tensor& dgate, const LayerGrads& grads,
                         const TrainContext& tc, int64_t T) {
    Ops& ops = *ctx.ops;
    if (!router_->trainable()) return {};
    if (s.route.forced > 0) ops.fill(dgate.view.rows(0, s.route.forced), 0.f);
    const double coef = cfg_.reg_coef(tc, *ctx.dims, T);
    if (coef != 0.0) ops.axpby(1.f, dgate, static_cast<float>(2.0 * coef), s.route.p, dgate);
    Tensor dh = ops.alloc(ops.accum_dtype(), {T, ctx.dims->hidden});
    ops.fill(dh, 0.f);
    router_->backward(ctx, s.h, s.route.p, dgate, dh, grads);
    return dh;
  }

  void record_stats(const LayerContext& ctx, const TrainContext& tc, const Saved& s, int64_t T) const {
    Ops& ops = *ctx.ops;
    if (tc.route_stats.data) {
      const double coef = cfg_.reg_coef(tc, *ctx.dims, T);
      Tensor sq = ops.alloc(ops.accum_dtype(), {1});
      ops.fill(sq, 0.f);
      ops.reduce_sum(s.route.p, 2, sq);
      TensorView reg = cell(tc.route_stats, ctx.layer, 0);
      ops.axpby(static_cast<float>(coef), sq, 1.f, reg, reg);
      ops.reduce_sum(s.route.d, 1, cell(tc.route_stats, ctx.layer, 1));
    }
    if (tc.route_counts) {
      tc.route_counts[ctx.layer].tokens += T;
      tc.route_counts[ctx.layer].forced_local += s.route.forced;
    }
  }

  std::vector<float> host_values(const Tensor& t) const {
    std::vector<float> out(static_cast<size_t>(t.view.numel()));
    ops_->copy(t, TensorView::contiguous(out.data(), DType::F32, Device::CPU, {t.view.numel()}));
    return out;
  }

  L2aConfig cfg_;
  Router* router_ = nullptr;
  AttentionSublayerSpec local_, global_;
  std::map<int, Tensor> last_d_;
  Ops* ops_ = nullptr;  // of the last inference forward, to read its decisions back
};

}  // namespace
}  // namespace rt::l2a

RT_REGISTER_ATTENTION_PLUGIN(rt::l2a::DenseL2aAttention, "l2a_dense", "1.0.0",
                             "L2A, global attention dense for every token then masked by the router "
                             "(options: layout, window, tau, threshold, force_local, rope_theta, lambda, ...)")
