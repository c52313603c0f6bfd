// What l2a_dense and l2a_fused share beyond the options (l2a_config.h): the extra parameters, the KV
// cache, the router call with force_local, the leak draw, the router's backward with the sparsity
// regularizer, the routing statistics and the decisions report. Each plugin derives from
// L2aBackendBase and writes only how its global attention runs (dense then masked, or routed).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "l2a_config.h"
#include "l2a_decode.h"
#include "rt/sdk/attention_sublayer.h"

namespace rt::l2a {

class L2aState final : public AttentionState {
 public:
  // paper: ring of W over the local projections; parallel: none. A pruned layer (either layout):
  // the ring of its window sublayer, and no global cache.
  std::unique_ptr<KvCache> local;
  std::unique_ptr<KvCache> global;  // every token (a future routed query may attend to any of them)
  int64_t tokens_seen() const override { return global ? global->tokens_seen() : local->tokens_seen(); }
  size_t kv_bytes() const override {
    return (global ? global->kv_bytes() : 0) + (local ? local->kv_bytes() : 0);
  }
  // After a decode_step_at: both caches move on; the step is counted.
  void advance(int64_t tokens) override {
    if (global) global->advance(tokens);
    if (local) local->advance(tokens);
    decode_steps += tokens;
  }
  bool decode_routing(int64_t* routed, int64_t* steps) const override {
    if (!routed_steps.view.data || decode_steps == 0) return false;
    float r = 0;
    ops->copy(routed_steps, TensorView::contiguous(&r, DType::F32, Device::CPU, {1}));
    *routed = static_cast<int64_t>(std::lround(r));
    *steps = decode_steps;
    return true;
  }
  // decode_step_at adds each step's decision here (on the device: a replayed graph runs no host code).
  Tensor routed_steps;  // [1] accum dtype; empty for a pruned layer
  int64_t decode_steps = 0;
  Ops* ops = nullptr;
};

struct Route {
  Tensor p, d;  // [T] accum dtype; d already forced to 0 where force_local applies
  int64_t forced = 0;
};

// A uniform in [0, 1) from (seed, step, micro, layer): splitmix64 over the packed key, so a resumed
// or recomputed forward draws the same value without carrying generator state.
inline double leak_uniform(uint64_t seed, int64_t step, int64_t micro, int layer) {
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(step) * 0xd1b54a32d192ed03ull +
               static_cast<uint64_t>(micro) * 0x8cb92ba72f3d8dd7ull + static_cast<uint64_t>(layer) + 0x632be59bd9b4e019ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  return static_cast<double>(x >> 11) * 0x1.0p-53;
}

class L2aBackendBase : public AttentionBackend {
 public:
  void attach_router(Router* r) override { router_ = r; }

  // The L2A layout fixes which parameters a checkpoint holds (paper: a second set of attention
  // weights, global_attn.* and global_layernorm; parallel: none), so a layout that contradicts the
  // checkpoint would silently ignore its trained global weights or fill them by copying the local
  // ones. The checkpoint's layout is its recorded "layout" (config.json's "l2a" section), else
  // what its tensors show (global_attn weights: paper; routers without them: parallel; neither: a
  // base model, any layout). It is the default; asking for another is an error naming the file
  // and both values.
  void reconcile_checkpoint(const CheckpointFacts& ckpt, Options& options) const override {
    std::string recorded, where;
    if (ckpt.recorded.has("layout")) {
      recorded = ckpt.recorded.get_string("layout", "");
      where = ckpt.config_source + ": field l2a.layout is \"" + recorded + "\"";
    } else {
      const CheckpointFacts::Tensor *global = nullptr, *router = nullptr;
      for (const auto& t : ckpt.tensors) {
        if (!global && t.name.find(".global_attn.") != std::string::npos) global = &t;
        if (!router && t.name.size() > 14 && t.name.compare(t.name.size() - 14, 14, ".router.weight") == 0) router = &t;
      }
      if (global) {
        recorded = "paper";
        where = global->file + " holds " + global->name + " (global attention weights)";
      } else if (router) {
        recorded = "parallel";
        where = router->file + " holds " + router->name + " and no global_attn weights";
      }
    }
    note_pruned_weights(ckpt, options);
    if (recorded.empty()) return;  // a base model: every layout starts from it
    if (!options.has("layout")) {
      options.set("layout", recorded);
      return;
    }
    const std::string asked = options.get_string("layout", "");
    RT_CHECK(asked == recorded, where, ": the checkpoint has L2A layout \"", recorded,
             "\", but this run asks for layout \"", asked, "\" (--set layout / [attention] layout), which would ",
             recorded == "paper" ? "ignore its trained global attention weights"
                                 : "fill the global attention weights it lacks by copying the local ones",
             ". Drop the layout override (the checkpoint's layout is the default) or train a model with that layout");
  }

 protected:
  // What both L2A backends declare: options recorded in config.json's "l2a" section, the local
  // sublayer's window, a router, their own KV cache.
  Capabilities l2a_capabilities() const {
    Capabilities c;
    c.backward = true;
    c.decode = true;
    // The decode step is captured as a graph unless the router needs the position on the host
    // (fixed_rate's strided pattern).
    c.graph_decode = router_ == nullptr || router_->decides_at_device_position();
    c.router = true;
    c.kv = KvPolicy::Custom;
    c.config_section = "l2a";
    c.windowed = true;
    return c;
  }

 public:

  // A pruned layer declares none of them: its weights are absent from a pruned checkpoint (and
  // ignored, with a note, in one that still holds them).
  std::vector<ParamDecl> extra_params(const ModelDims& d) const override {
    std::vector<int> kept;  // empty: every layer (none pruned)
    if (!cfg_.pruned_layers.empty()) {
      for (int l = 0; l < d.n_layers; ++l)
        if (!cfg_.pruned(l)) kept.push_back(l);
      if (kept.empty()) return {};  // an empty list would mean every layer
    }
    std::vector<ParamDecl> out = global_params(d);
    for (auto& decl : out) decl.layers = kept;
    return out;
  }

  std::unique_ptr<AttentionState> new_state(const LayerContext& ctx, int64_t max_tokens) override {
    auto s = std::make_unique<L2aState>();
    if (cfg_.layout == Layout::Paper || cfg_.pruned(ctx.layer))
      s->local = std::make_unique<KvCache>(*ctx.ops, *ctx.dims, max_tokens, cfg_.window);
    if (!cfg_.pruned(ctx.layer)) {
      s->global = std::make_unique<KvCache>(*ctx.ops, *ctx.dims, max_tokens, 0);
      s->routed_steps = ctx.ops->alloc(ctx.ops->accum_dtype(), {1});
      ctx.ops->fill(s->routed_steps, 0.f);
    }
    s->ops = ctx.ops;
    return s;
  }

  // Capabilities::graph_decode: see l2a_decode.h.
  void decode_step_at(const LayerContext& ctx, TensorView x, AttentionState& state, TensorView pos) override {
    auto& st = static_cast<L2aState&>(state);
    DecodeLayer l;
    l.cfg = &cfg_;
    l.local = &local_;
    l.global = &global_;
    l.router = router_;
    l.local_cache = st.local.get();
    l.global_cache = st.global.get();
    l.routed_steps = st.routed_steps;
    l2a_decode_step_at(ctx, l, x, pos);
  }

  std::vector<float> last_decisions(int layer) const override {
    auto it = last_d_.find(layer);
    if (it == last_d_.end()) return {};
    std::vector<float> out(static_cast<size_t>(it->second.view.numel()));
    ops_->copy(it->second, TensorView::contiguous(out.data(), DType::F32, Device::CPU, {it->second.view.numel()}));
    return out;
  }

 private:
  std::vector<ParamDecl> global_params(const ModelDims& d) const {
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
        if (d.qkv_bias) out.push_back({"global_attn." + n + ".bias", {pr.rows}, "copy_of:self_attn." + n + ".bias"});
      }
      out.push_back({"global_attn.o_proj.weight", {d.hidden, q}, "copy_of:self_attn.o_proj.weight"});
      if (d.qk_norm)
        for (const char* n : {"q_norm", "k_norm"})
          out.push_back({std::string("global_attn.") + n + ".weight", {d.head_dim},
                         std::string("copy_of:self_attn.") + n + ".weight"});
    }
    if (router_)
      for (auto& decl : router_->extra_params(d)) out.push_back(decl);
    return out;
  }

  // A checkpoint that records pruned layers but still holds their global weights (pruned by
  // --set pruned_layers at load, or written by another tool) is fine: the weights go unused.
  static void note_pruned_weights(const CheckpointFacts& ckpt, const Options& options) {
    if (!options.has("pruned_layers")) return;
    std::vector<int> layers;
    try {
      layers = L2aConfig::parse_layer_list(options.get_string("pruned_layers", ""), "l2a");
    } catch (const Error&) {
      return;  // configure reports it
    }
    std::string found;
    for (int l : layers) {
      const std::string pre = "model.layers." + std::to_string(l) + ".";
      for (const auto& t : ckpt.tensors)
        if (t.name.rfind(pre, 0) == 0 && (t.name.find("global") != std::string::npos || t.name.find(".router.") != std::string::npos ||
                                          t.name.find("sigmoid_linear") != std::string::npos)) {
          found += (found.empty() ? "" : ", ") + std::to_string(l);
          break;
        }
    }
    if (!found.empty())
      std::fprintf(stderr, "note: %s holds global-sublayer weights (router, global attention) of pruned layers %s; "
                   "they are ignored\n", ckpt.config_source.c_str(), found.c_str());
  }

 protected:
  // Parses the options (unknown keys refused naming `plugin`), configures the router, and sets up
  // the two sublayer specs: local (window W) and global (causal; paper: its own norm and weights).
  void configure_layers(const Options& options, const ModelDims& dims, const char* plugin, bool materialize) {
    RT_CHECK(router_ != nullptr, plugin, ": no router attached (the runtime attaches one before configure)");
    Options router_options = cfg_.parse(options, plugin, router_->option_names());
    router_->configure(router_options, dims);
    cfg_.check_pruned_layers(dims, plugin);
    local_.materialize = global_.materialize = materialize;
    local_.window = cfg_.window;
    local_.rope_theta = global_.rope_theta = cfg_.rope_theta;
    global_.window = 0;
    if (cfg_.layout == Layout::Paper) {
      global_.norm = "global_layernorm.weight";
      global_.prefix = "global_attn.";
    }
  }

  double l2a_forward_flops(const ModelDims& d, int64_t T, double routed_fraction) const {
    const double global_pairs = routed_fraction * visible_pairs(T, 0);
    if (cfg_.layout == Layout::Paper) {
      const double kv_proj = 2.0 * T * d.hidden * 2.0 * d.n_kv_heads * d.head_dim;
      const double q_o_proj = routed_fraction * 2.0 * T * d.hidden * 2.0 * d.n_heads * d.head_dim;
      return attention_sublayer_flops(d, T, cfg_.window) + kv_proj + q_o_proj +
             4.0 * global_pairs * d.head_dim * d.n_heads + 2.0 * T * d.hidden;
    }
    return attention_sublayer_flops(d, T, cfg_.window) + 4.0 * global_pairs * d.head_dim * d.n_heads +
           2.0 * T * d.hidden;
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

  // Whether this layer's global attention runs for every token on this training forward.
  bool leaks(const LayerContext& ctx, const TrainContext& tc) const {
    if (tc.leak || cfg_.leak_prob >= 1.0) return true;
    return cfg_.leak_prob > 0.0 && leak_uniform(tc.seed, tc.step, tc.micro, ctx.layer) < cfg_.leak_prob;
  }

  // dL/dp = dL/dd (zero at forced positions: the gate there is a constant) + the regularizer's
  // 2 coef p; the router pulls it back. Returns dL/dh of the router's input (empty if the router
  // has no trainable path).
  Tensor router_backward(const LayerContext& ctx, TensorView h, const Route& route, Tensor& dgate,
                         const LayerGrads& grads, const TrainContext& tc, int64_t T) {
    if (!router_->trainable()) return {};
    Tensor dh = ctx.ops->alloc(ctx.ops->accum_dtype(), {T, ctx.dims->hidden});
    ctx.ops->fill(dh, 0.f);
    router_backward_into(ctx, h, route, dgate, grads, tc, T, dh);
    return dh;
  }
  // The same, adding dL/dh into dh (no [T, hidden] buffer of its own, no pass to add it).
  void router_backward_into(const LayerContext& ctx, TensorView h, const Route& route, Tensor& dgate,
                            const LayerGrads& grads, const TrainContext& tc, int64_t T, TensorView dh) {
    Ops& ops = *ctx.ops;
    if (!router_->trainable()) return;
    if (route.forced > 0) ops.fill(dgate.view.rows(0, route.forced), 0.f);
    const double coef = cfg_.reg_coef(tc, *ctx.dims, T);
    if (coef != 0.0) ops.axpby(1.f, dgate, static_cast<float>(2.0 * coef), route.p, dgate);
    router_->backward(ctx, h, route.p, dgate, dh, grads);
  }

  void record_stats(const LayerContext& ctx, const TrainContext& tc, const Route& route, int64_t T, bool leaked) const {
    Ops& ops = *ctx.ops;
    if (tc.route_stats.data) {
      const double coef = cfg_.reg_coef(tc, *ctx.dims, T);
      Tensor sq = ops.alloc(ops.accum_dtype(), {1});
      ops.fill(sq, 0.f);
      ops.reduce_sum(route.p, 2, sq);
      TensorView reg = cell(tc.route_stats, ctx.layer, 0);
      ops.axpby(static_cast<float>(coef), sq, 1.f, reg, reg);
      ops.reduce_sum(route.d, 1, cell(tc.route_stats, ctx.layer, 1));
    }
    if (tc.route_counts) {
      tc.route_counts[ctx.layer].tokens += T;
      tc.route_counts[ctx.layer].forced_local += route.forced;
      tc.route_counts[ctx.layer].leaked += leaked ? 1 : 0;
    }
  }

  // Parallel layout, training forward, the part both plugins share: x_in, h = RMSNorm_in(x), the
  // shared q/k/v (positions 0..), the routing of h, and the window attention of every token (o, lse).
  // `beside`, if given, is work that needs the routing but not the window's output (the routed
  // rows' attention): it runs concurrently with the window attention (Ops::concurrently).
  void parallel_local_forward_train(const LayerContext& ctx, TensorView x, const TrainContext& tc,
                                    SublayerActivations& local, Route& r,
                                    const std::function<void()>& beside = {}) const {
    Ops& ops = *ctx.ops;
    const ModelDims& d = *ctx.dims;
    const int64_t T = x.shape[0];
    local.x_in = ops.alloc(x.dtype, {T, d.hidden});
    local.h = ops.alloc(ops.activation_dtype(), {T, d.hidden});
    ops.rmsnorm_keep_input(x, ctx.params->get(local_.norm), d.rms_eps, local.h, local.x_in);
    local.qkv = project_qkv(ctx, local_, local.h, 0, TensorView{}, TensorView{}, /*keep_raw=*/true);
    r = route(ctx, local.h, 0, true, tc.step);
    local.o = ops.alloc(ops.activation_dtype(), {T, d.n_heads, d.head_dim});
    local.lse = ops.alloc(ops.accum_dtype(), {d.n_heads, T});
    const Qkv& qkv = local.qkv;
    auto window = [&] {
      ops.attention_forward_lse(qkv.q, qkv.k, qkv.v, local.o, local.lse, sublayer_attention_spec(d, local_, 0));
    };
    if (beside) ops.concurrently(window, beside);
    else window();
  }

  // Parallel layout, backward, the end both plugins share: g holds dL/d(q, k, v) of the shared
  // projections (window and global parts summed); they are pulled back through the projections,
  // the router (dgate, straight-through) and the input norm into dx.
  void parallel_backward_tail(const LayerContext& ctx, const SublayerActivations& local, const Route& r, const Qkv& g,
                              Tensor& dgate, TensorView dx, const LayerGrads& grads, const TrainContext& tc) {
    Ops& ops = *ctx.ops;
    const ModelDims& d = *ctx.dims;
    const int64_t T = dx.shape[0];
    Tensor dh = ops.alloc(ops.accum_dtype(), {T, d.hidden});
    project_qkv_backward(ctx, local_, local.h, local.qkv, g.q, g.k, g.v, 0, dh, grads, /*accumulate_dh=*/false);
    router_backward_into(ctx, local.h, r, dgate, grads, tc, T, dh);
    ops.rmsnorm_backward(local.x_in, ctx.params->get(local_.norm), d.rms_eps, dh, dx, grads.get(local_.norm));
  }

  // dL/d(q, k, v) buffers of one layer's global part (its window part: alloc_qkv_grads).
  static Qkv alloc_qkv(Ops& ops, const ModelDims& d, int64_t T) {
    const DType act = ops.activation_dtype();
    return {ops.alloc(act, {T, d.n_heads, d.head_dim}), ops.alloc(act, {T, d.n_kv_heads, d.head_dim}),
            ops.alloc(act, {T, d.n_kv_heads, d.head_dim})};
  }

  // Keeps the decisions of an inference forward for last_decisions().
  void remember_decisions(const LayerContext& ctx, const Route& r) {
    last_d_[ctx.layer] = r.d;
    ops_ = ctx.ops;
  }

  // A pruned layer is the window sublayer alone (in either layout: with d = 0 the parallel layout's
  // o = SWA(q, k, v) Wo is the same sublayer over the shared projections), and routes nothing: its
  // decisions read as all zeros, i.e. 100% local.
  bool pruned_forward(const LayerContext& ctx, TensorView x, L2aState* st) {
    if (!cfg_.pruned(ctx.layer)) return false;
    attention_sublayer_forward(ctx, local_, x, st ? st->local.get() : nullptr);
    Tensor zeros = ctx.ops->alloc(ctx.ops->accum_dtype(), {x.shape[0]});
    ctx.ops->fill(zeros, 0.f);
    last_d_[ctx.layer] = zeros;
    ops_ = ctx.ops;
    return true;
  }
  void record_pruned_stats(const LayerContext& ctx, const TrainContext& tc, int64_t T) const {
    if (tc.route_counts) tc.route_counts[ctx.layer].tokens += T;
  }

  L2aConfig cfg_;
  Router* router_ = nullptr;
  AttentionSublayerSpec local_, global_;

 private:
  std::map<int, Tensor> last_d_;
  Ops* ops_ = nullptr;  // of the last inference forward, to read its decisions back
};

}  // namespace rt::l2a
