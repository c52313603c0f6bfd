// l2a_fused: L2A (DESIGN.md section 4) with the global attention computed only for the tokens the
// router picked. Same options, parameters, checkpoints and semantics as l2a_dense (l2a_common);
// on CUDA only, since its routed kernels are the flash family's RoutedRows instantiations
// (backends/cuda/attention).
//
// Paper layout, per layer:
//   x1 = x + SWA(RMSNorm_in(x))                         every token (the local sublayer)
//   h2 = RMSNorm_g(x1);  p, d = router(h2)               every token
//   index, count = compact(d)                            on the device: no host synchronization
//   k, v = rope(h2 Wk_g + bk_g), h2 Wv_g + bv_g          every token (a routed query sees every key)
//   q = rope(gather(h2, index) Wq_g + bq_g)              routed rows only, at their positions
//   x2 = x1 + scatter(Causal_routed(q, k, v) Wo_g)       routed rows only
// Parallel layout: shared q/k/v; the routed rows' causal output is added to their window output
// before o_proj.
//
// Training: the straight-through gate's gradient of a routed row is dx . (o_proj output). An
// unrouted row has no global output, so its gate gets no task-loss gradient, except on a leak: a
// Bernoulli(leak_prob) drawn per layer and forward (l2a_layer.h), on which the global attention runs
// for every token through the dense flash causal kernel, exactly as l2a_dense computes it. Saved for
// the backward: the routed rows' q, o, lse and o_proj output, and every token's k, v.
// A leak changes the forward only. The forward value of the gate is d in {0, 1}, so an unrouted
// row's global output reaches the loss through its gate's gradient alone: the gradient of its
// attention output is d * dx = 0, and it adds nothing to dq, dk, dv or the projections' gradients.
// The leak's backward is the routed one, over the routed rows gathered from the dense forward (at
// 32K a dense causal backward costs ~4x the routed rows' at 20%).
//
// The count of routed rows stays in device memory: grids and buffers are sized for all T rows
// (the capacity) and the kernels stop at the count, so the routed attention does routed work only,
// while the routed q and o_proj GEMMs run over the capacity (their rows past the count are zeros).
#include <memory>
#include <string>
#include <vector>

#include "../l2a_common/l2a_layer.h"
#include "rt/sdk/plugin.h"

namespace rt::l2a {
namespace {

// The routed rows of one layer: index [T] (ascending positions relative to the call's first row)
// and count [1], both I32 in device memory.
struct RoutedSet {
  Tensor index, count;
};

// What the routed global attention keeps for its backward (paper layout).
struct GlobalRouted {
  RoutedSet rs;
  Tensor h2;      // RMSNorm_g(x1), every token
  Tensor x1;      // the residual after the local sublayer (the global norm's input)
  Tensor hq;      // h2's routed rows [T (capacity), hidden]
  Tensor q, o;    // routed rows [T, Hq, D] (rows past the count: zeros; o's unwritten in inference)
  Tensor lse;     // [Hq, T]
  Tensor k, v;    // every token [T, Hkv, D], after RoPE
  Tensor q_raw, k_raw;  // QK-norm models, training: q and k before the norm
  Tensor a;       // o_proj output of the routed rows [T, hidden] (the gate's gradient reads it)
};

class FusedL2aAttention final : public L2aBackendBase {
 public:
  Capabilities capabilities() const override {
    Capabilities c = l2a_capabilities();
    c.cuda = true;
    c.other_device_hint = "on the CPU use --attention l2a_dense, which computes the same L2A with dense global attention";
    return c;
  }

  void configure(const Options& options, const ModelDims& dims) override {
    configure_layers(options, dims, "l2a_fused", /*materialize=*/false);
    // The routed fraction is known up front only for the fixed_rate router.
    routed_fraction_ = cfg_.router == "fixed_rate" && options.has("sparsity") ? 1.0 - options.get_double("sparsity", 0.0)
                                                                               : -1.0;
  }

  // Data-dependent: known (for TFLOP/s in `runtime profile`) only at a fixed routing rate; else 0.
  double forward_flops(const ModelDims& d, int64_t T) const override {
    return routed_fraction_ >= 0 ? l2a_forward_flops(d, T, routed_fraction_) : 0.0;
  }

  void forward(const LayerContext& ctx, TensorView x, AttentionState* state) override {
    require_cuda(ctx);
    auto* st = static_cast<L2aState*>(state);
    if (pruned_forward(ctx, x, st)) return;
    const int64_t pos0 = st ? st->tokens_seen() : 0;
    Route r;
    if (cfg_.layout == Layout::Paper) {
      attention_sublayer_forward(ctx, local_, x, st ? st->local.get() : nullptr);
      Tensor h2 = normed(ctx, x, global_.norm);
      r = route(ctx, h2, pos0, false, 0);
      paper_global_forward(ctx, x, h2, compact(ctx, r.d), st ? st->global.get() : nullptr, pos0, false);
    } else {
      parallel_inference(ctx, x, st, pos0, r);
    }
    remember_decisions(ctx, r);
  }

  std::unique_ptr<SavedActivations> forward_train(const LayerContext& ctx, TensorView x,
                                                  const TrainContext& tc) override {
    require_cuda(ctx);
    auto s = std::make_unique<Saved>();
    Ops& ops = *ctx.ops;
    const ModelDims& d = *ctx.dims;
    const int64_t T = x.shape[0];
    if (cfg_.pruned(ctx.layer)) {
      s->pruned = true;
      s->local = attention_sublayer_forward_train(ctx, local_, x, TensorView{});
      record_pruned_stats(ctx, tc, T);
      return s;
    }
    s->leak = leaks(ctx, tc);
    if (cfg_.layout == Layout::Paper) {
      s->local = attention_sublayer_forward_train(ctx, local_, x, TensorView{});
      // x1 (the global norm's input, kept for its backward) copied by the norm as it reads it; a
      // leak's dense sublayer keeps its own.
      Tensor x1;
      if (s->leak) {
        s->h = normed(ctx, x, global_.norm);
      } else {
        x1 = ops.alloc(x.dtype, {T, d.hidden});
        s->h = ops.alloc(ops.activation_dtype(), {T, d.hidden});
        ops.rmsnorm_keep_input(x, ctx.params->get(global_.norm), d.rms_eps, s->h, x1);
      }
      s->route = route(ctx, s->h, 0, true, tc.step);
      if (s->leak) s->dense = attention_sublayer_forward_train(ctx, global_, x, s->route.d, &s->h);
      else s->global = paper_global_forward(ctx, x, s->h, compact(ctx, s->route.d), nullptr, 0, true, std::move(x1));
    } else {
      const DType act = ops.activation_dtype();
      s->o = ops.alloc(act, {T, d.n_heads, d.head_dim});
      s->dense.o = ops.alloc(act, {T, d.n_heads, d.head_dim});
      s->dense.lse = ops.alloc(ops.accum_dtype(), {d.n_heads, T});
      // The global part (all tokens on a leak step, else the routed rows) beside the window.
      auto global = [&] {
        const Qkv& qkv = s->local.qkv;
        if (s->leak) {
          ops.attention_forward_lse(qkv.q, qkv.k, qkv.v, s->dense.o, s->dense.lse,
                                    sublayer_attention_spec(d, global_, 0));
          return;
        }
        s->global.rs = compact(ctx, s->route.d);
        s->global.q = gather_heads(ctx, qkv.q, s->global.rs);
        ops.attention_forward_lse(s->global.q, qkv.k, qkv.v, s->dense.o, s->dense.lse,
                                  routed_spec(ctx, s->global.rs, 0));
      };
      parallel_local_forward_train(ctx, x, tc, s->local, s->route, global);
      s->h = s->local.h;
      if (s->leak) {  // every token: o = o_local + d * o_global, as l2a_dense
        ops.row_scale(rows2d(s->dense.o), s->route.d, rows2d(s->o));
        ops.add(s->o, s->local.o, s->o);
      } else {  // routed rows: their causal output added to their window output
        ops.copy(s->local.o, s->o);
        ops.scatter_add_rows(rows2d(s->dense.o), s->global.rs.index, s->global.rs.count, rows2d(s->o));
      }
      add_output_projection(ctx, local_, s->o, TensorView{}, x);
    }
    record_stats(ctx, tc, s->route, T, s->leak);
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
      Tensor dh2;
      if (s.leak) {  // every token's gate, then the routed rows' backward (top of the file)
        ops.row_dot(dx, s.dense.a, dgate, /*accumulate=*/false);
        dh2 = paper_global_backward(ctx, routed_from_dense(ctx, s), dx, nullptr, grads);
      } else {
        dh2 = paper_global_backward(ctx, s.global, dx, &dgate, grads);
      }
      router_backward_into(ctx, s.h, s.route, dgate, grads, tc, T, dh2);
      const TensorView x1 = s.leak ? s.dense.x_in.view : s.global.x1.view;
      ops.rmsnorm_backward(x1, ctx.params->get(global_.norm), d.rms_eps, dh2, dx, grads.get(global_.norm));
      attention_sublayer_backward(ctx, local_, s.local, dx, grads, TensorView{}, TensorView{});
      return;
    }
    parallel_backward(ctx, s, dx, dgate, grads, tc);
  }

 private:
  struct Saved final : SavedActivations {
    SublayerActivations local;  // paper: the local sublayer; parallel: x_in, h, qkv, the window output
    SublayerActivations dense;  // paper, leak: the dense global sublayer; parallel: o, lse of the causal part
    GlobalRouted global;        // paper, no leak: the routed global sublayer; parallel: rs and the routed q
    Tensor h;                   // the router's input
    Tensor o;                   // parallel: the o_proj input
    Route route;
    bool leak = false;
    bool pruned = false;  // the window sublayer alone (local)
  };

  double routed_fraction_ = -1.0;  // fixed_rate router: 1 - sparsity; else unknown (-1)

  static void require_cuda(const LayerContext& ctx) {
    RT_CHECK(ctx.ops->device() == Device::CUDA, "l2a_fused runs on CUDA only (--device cuda); on the CPU use "
             "--attention l2a_dense, which computes the same L2A with dense global attention");
  }

  static TensorView rows2d(const Tensor& t) {
    const TensorView& v = t.view;
    return v.reshaped({v.shape[0], v.numel() / std::max<int64_t>(1, v.shape[0])});
  }

  static RoutedSet compact(const LayerContext& ctx, const Tensor& d) {
    Ops& ops = *ctx.ops;
    const int64_t T = d.view.shape[0];
    RoutedSet rs{ops.alloc(DType::I32, {T}), ops.alloc(DType::I32, {1})};
    ops.compact_rows(d, rs.index, rs.count);
    return rs;
  }

  AttentionSpec routed_spec(const LayerContext& ctx, const RoutedSet& rs, int64_t pos0) const {
    AttentionSpec spec = sublayer_attention_spec(*ctx.dims, global_, pos0);
    spec.q_index = rs.index;
    spec.q_count = rs.count;
    return spec;
  }

  // q [T, Hq, D] (every token) -> its routed rows, compact [T (capacity), Hq, D].
  static Tensor gather_heads(const LayerContext& ctx, const Tensor& q, const RoutedSet& rs) {
    Ops& ops = *ctx.ops;
    Tensor out = ops.alloc(q.view.dtype, {q.view.shape[0], q.view.shape[1], q.view.shape[2]});
    ops.gather_rows(rows2d(q), rs.index, rs.count, rows2d(out));
    return out;
  }

  // lse [Hq, T] -> its routed columns, compact [Hq, T (capacity)]: one gather over the transposed
  // views ([T, Hq] with a column stride of T).
  static Tensor gather_lse(const LayerContext& ctx, const Tensor& lse, const RoutedSet& rs) {
    const TensorView& v = lse.view;
    Tensor out = ctx.ops->alloc(v.dtype, {v.shape[0], v.shape[1]});
    auto by_position = [](TensorView m) {
      std::swap(m.shape[0], m.shape[1]);
      std::swap(m.stride[0], m.stride[1]);
      return m;
    };
    ctx.ops->gather_rows(by_position(v), rs.index, rs.count, by_position(out.view));
    return out;
  }

  // A leak step's dense global sublayer (paper layout) seen as the routed one: its routed rows'
  // q, o, lse and inputs gathered, every token's k and v as they are. The o_proj output stays
  // every token's (the caller has read the gates' gradients from it; the routed backward does not
  // read it without a dgate).
  GlobalRouted routed_from_dense(const LayerContext& ctx, const Saved& s) const {
    Ops& ops = *ctx.ops;
    const SublayerActivations& dense = s.dense;
    GlobalRouted g;
    g.rs = compact(ctx, s.route.d);
    g.h2 = dense.h;
    g.x1 = dense.x_in;
    g.hq = ops.alloc(dense.h.view.dtype, {dense.h.view.shape[0], dense.h.view.shape[1]});
    ops.gather_rows(dense.h, g.rs.index, g.rs.count, g.hq);
    g.q = gather_heads(ctx, dense.qkv.q, g.rs);
    g.o = gather_heads(ctx, dense.o, g.rs);
    g.lse = gather_lse(ctx, dense.lse, g.rs);
    g.k = dense.qkv.k;
    g.v = dense.qkv.v;
    if (dense.qkv.q_raw.view.data) g.q_raw = gather_heads(ctx, dense.qkv.q_raw, g.rs);
    g.k_raw = dense.qkv.k_raw;
    g.a = dense.a;
    return g;
  }

  // The paper layout's global sublayer on the routed rows (see the top of the file). With a cache,
  // every token's k and v are appended to it (positions pos0..). Training passes x1, the copy of x
  // its backward keeps.
  GlobalRouted paper_global_forward(const LayerContext& ctx, TensorView x, const Tensor& h2, RoutedSet rs,
                                    KvCache* cache, int64_t pos0, bool training, Tensor x1 = {}) const {
    Ops& ops = *ctx.ops;
    const ModelDims& d = *ctx.dims;
    const LayerParams& p = *ctx.params;
    const int64_t T = x.shape[0], HD = d.n_heads * d.head_dim, KD = d.n_kv_heads * d.head_dim;
    const DType act = ops.activation_dtype();
    const double theta = sublayer_theta(d, global_);
    const std::string& pre = global_.prefix;
    GlobalRouted g;
    g.rs = std::move(rs);
    g.h2 = h2;
    g.x1 = std::move(x1);
    const KvCache::Rows in_cache = cache ? cache->rows_in_place(T, 0) : KvCache::Rows{};
    g.k = in_cache.k.data ? Tensor{in_cache.k, nullptr} : ops.alloc(act, {T, d.n_kv_heads, d.head_dim});
    g.v = in_cache.v.data ? Tensor{in_cache.v, nullptr} : ops.alloc(act, {T, d.n_kv_heads, d.head_dim});
    // Projection (then Qwen3's QK-norm over each head, into `out`), keeping the pre-norm values
    // for the backward when training.
    auto project = [&](TensorView in, const char* name, const char* norm, int64_t heads, Tensor& out, Tensor& raw) {
      const TensorView w = p.get(pre + name + ".weight");
      const TensorView b = d.qkv_bias ? p.get(pre + name + ".bias") : TensorView{};
      if (!d.qk_norm) {
        ops.linear(in, w, b, out.view.reshaped({T, heads * d.head_dim}));
        return;
      }
      Tensor pre_norm = ops.alloc(act, {T, heads, d.head_dim});
      ops.linear(in, w, b, pre_norm.view.reshaped({T, heads * d.head_dim}));
      ops.rmsnorm(pre_norm, p.get(pre + norm + ".weight"), d.rms_eps, out);
      if (training) raw = pre_norm;
    };
    project(h2, "k_proj", "k_norm", d.n_kv_heads, g.k, g.k_raw);
    ops.rope(g.k, pos0, theta);
    ops.linear(h2, p.get(pre + "v_proj.weight"), d.qkv_bias ? p.get(pre + "v_proj.bias") : TensorView{},
               g.v.view.reshaped({T, KD}));
    TensorView keys = g.k, values = g.v;
    int64_t k_pos0 = 0;
    if (cache) {
      const KvCache::Window w = in_cache.k.data ? cache->commit_in_place(T, 0) : cache->append(ops, g.k, g.v, 0);
      keys = w.k;
      values = w.v;
      k_pos0 = w.k_pos0;
    }
    g.hq = ops.alloc(act, {T, d.hidden});
    ops.gather_rows(h2, g.rs.index, g.rs.count, g.hq);
    g.q = ops.alloc(act, {T, d.n_heads, d.head_dim});
    project(g.hq, "q_proj", "q_norm", d.n_heads, g.q, g.q_raw);
    ops.rope_rows(g.q, g.rs.index, g.rs.count, pos0, theta, /*backward=*/false);
    AttentionSpec spec = routed_spec(ctx, g.rs, pos0);
    spec.k_pos0 = k_pos0;
    g.o = ops.alloc(act, {T, d.n_heads, d.head_dim});
    if (training) {
      g.lse = ops.alloc(ops.accum_dtype(), {d.n_heads, T});
      ops.attention_forward_lse(g.q, keys, values, g.o, g.lse, spec);
    } else {  // o's rows past the count only feed o_proj rows the scatter-add does not read
      spec.inactive_unwritten = true;
      ops.attention(g.q, keys, values, g.o, spec);
    }
    g.a = ops.alloc(act, {T, d.hidden});
    ops.linear(g.o.view.reshaped({T, HD}), p.get(pre + "o_proj.weight"), TensorView{}, g.a);
    ops.scatter_add_rows(g.a, g.rs.index, g.rs.count, x);
    return g;
  }

  // dx: the gradient of x2 (read); dgate (when given) += the routed rows' gate gradients. Returns
  // dL/dh2 of the global projections (accum dtype, [T, hidden]). Parameter gradients go to grads.
  Tensor paper_global_backward(const LayerContext& ctx, const GlobalRouted& g, TensorView dx, Tensor* dgate,
                               const LayerGrads& grads) const {
    Ops& ops = *ctx.ops;
    const ModelDims& d = *ctx.dims;
    const LayerParams& p = *ctx.params;
    const int64_t T = dx.shape[0], HD = d.n_heads * d.head_dim, KD = d.n_kv_heads * d.head_dim;
    const DType act = ops.activation_dtype(), acc = ops.accum_dtype();
    const double theta = sublayer_theta(d, global_);
    const std::string& pre = global_.prefix;
    const TensorView idx = g.rs.index, cnt = g.rs.count;

    Tensor dxr = ops.alloc(acc, {T, d.hidden});  // dx of the routed rows (d = 1 there)
    ops.gather_rows(dx, idx, cnt, dxr);
    if (dgate) ops.row_dot_rows(dxr, g.a, idx, cnt, *dgate);  // the active rows only
    Tensor da = ops.alloc(act, {T, d.hidden});
    ops.copy(dxr, da);

    const std::string wo = pre + "o_proj.weight";
    Tensor dout = ops.alloc(act, {T, d.n_heads, d.head_dim});
    ops.linear_backward(g.o.view.reshaped({T, HD}), p.get(wo), da, dout.view.reshaped({T, HD}), grads.get(wo),
                        TensorView{}, false);
    Tensor dq = ops.alloc(act, {T, d.n_heads, d.head_dim});
    Tensor dk = ops.alloc(act, {T, d.n_kv_heads, d.head_dim});
    Tensor dv = ops.alloc(act, {T, d.n_kv_heads, d.head_dim});
    ops.attention_backward(g.q, g.k, g.v, g.o, g.lse, dout, dq, dk, dv, routed_spec(ctx, g.rs, 0));
    ops.rope_rows(dq, idx, cnt, 0, theta, /*backward=*/true);
    ops.rope_backward(dk, 0, theta);

    if (d.qk_norm) {
      dq = head_norm_backward(ctx, pre + "q_norm.weight", g.q_raw, dq, grads);
      dk = head_norm_backward(ctx, pre + "k_norm.weight", g.k_raw, dk, grads);
    }
    auto bias_grad = [&](const std::string& b) { return d.qkv_bias ? grads.get(b) : TensorView{}; };

    Tensor dhr = ops.alloc(acc, {T, d.hidden});
    ops.fill(dhr, 0.f);
    const std::string wq = pre + "q_proj.weight", bq = pre + "q_proj.bias";
    ops.linear_backward(g.hq, p.get(wq), dq.view.reshaped({T, HD}), dhr, grads.get(wq), bias_grad(bq), true);
    Tensor dh2 = ops.alloc(acc, {T, d.hidden});
    ops.fill(dh2, 0.f);
    ops.scatter_add_rows(dhr, idx, cnt, dh2);
    const struct {
      const char* name;
      const Tensor* grad;
    } kv[] = {{"k_proj", &dk}, {"v_proj", &dv}};
    for (const auto& part : kv) {
      const std::string w = pre + part.name + ".weight", b = pre + part.name + ".bias";
      ops.linear_backward(g.h2, p.get(w), part.grad->view.reshaped({T, KD}), dh2, grads.get(w), bias_grad(b), true);
    }
    return dh2;
  }

  void parallel_inference(const LayerContext& ctx, TensorView x, L2aState* st, int64_t pos0, Route& r) {
    Ops& ops = *ctx.ops;
    const ModelDims& d = *ctx.dims;
    const int64_t T = x.shape[0];
    Tensor h = normed(ctx, x, local_.norm);
    Qkv qkv = project_qkv(ctx, local_, h, pos0);
    r = route(ctx, h, pos0, false, 0);
    const RoutedSet rs = compact(ctx, r.d);
    TensorView k = qkv.k, v = qkv.v;
    int64_t k_pos0 = 0;
    if (st) {
      const KvCache::Window w = st->global->append(ops, qkv.k, qkv.v, 0);
      k = w.k;
      v = w.v;
      k_pos0 = w.k_pos0;
    }
    AttentionSpec local_spec = sublayer_attention_spec(d, local_, pos0), global_spec = routed_spec(ctx, rs, pos0);
    local_spec.k_pos0 = global_spec.k_pos0 = k_pos0;
    // The routed rows read their queries from q through the index (no gathered copy), and o_g's
    // rows past the count stay unwritten: the scatter-add below reads the first count rows only.
    global_spec.q_indexed = global_spec.inactive_unwritten = true;
    Tensor o = ops.alloc(ops.activation_dtype(), {T, d.n_heads, d.head_dim});
    Tensor o_g = ops.alloc(ops.activation_dtype(), {T, d.n_heads, d.head_dim});
    ops.concurrently([&] { ops.attention(qkv.q, k, v, o, local_spec); },
                     [&] { ops.attention(qkv.q, k, v, o_g, global_spec); });
    ops.scatter_add_rows(rows2d(o_g), rs.index, rs.count, rows2d(o));
    add_output_projection(ctx, local_, o, TensorView{}, x);
  }

  void parallel_backward(const LayerContext& ctx, Saved& s, TensorView dx, Tensor& dgate, const LayerGrads& grads,
                         const TrainContext& tc) {
    Ops& ops = *ctx.ops;
    const ModelDims& d = *ctx.dims;
    const int64_t T = dx.shape[0], HD = d.n_heads * d.head_dim;
    const DType act = ops.activation_dtype();
    Tensor da = ops.alloc(act, {T, d.hidden});
    ops.copy(dx, da);
    const std::string wo = local_.prefix + "o_proj.weight";
    Tensor dout = ops.alloc(act, {T, d.n_heads, d.head_dim});
    ops.linear_backward(s.o.view.reshaped({T, HD}), ctx.params->get(wo), da, dout.view.reshaped({T, HD}),
                        grads.get(wo), TensorView{}, false);
    const Qkv& qkv = s.local.qkv;
    Qkv g = alloc_qkv_grads(ops, d, T), g2 = alloc_qkv(ops, d, T);
    // The window's backward (into g) beside the global part's (into g2 and dgate).
    auto window = [&] {
      ops.attention_backward(qkv.q, qkv.k, qkv.v, s.local.o, s.local.lse, dout, g.q, g.k, g.v,
                             sublayer_attention_spec(d, local_, 0));
    };
    auto global = [&] {
      Tensor o_r = s.dense.o, lse_r = s.dense.lse, dout_r;
      if (s.leak) {  // every token's gate, then the routed rows' backward (top of the file)
        ops.row_dot(rows2d(dout), rows2d(s.dense.o), dgate, false);
        s.global.rs = compact(ctx, s.route.d);
        s.global.q = gather_heads(ctx, qkv.q, s.global.rs);
        o_r = gather_heads(ctx, s.dense.o, s.global.rs);
        lse_r = gather_lse(ctx, s.dense.lse, s.global.rs);
        dout_r = gather_heads(ctx, dout, s.global.rs);
      } else {
        const RoutedSet& rs = s.global.rs;
        dout_r = gather_heads(ctx, dout, rs);
        ops.row_dot_rows(rows2d(dout_r), rows2d(o_r), rs.index, rs.count, dgate);  // the active rows only
      }
      ops.attention_backward(s.global.q, qkv.k, qkv.v, o_r, lse_r, dout_r, g2.q, g2.k, g2.v,
                             routed_spec(ctx, s.global.rs, 0));
    };
    ops.concurrently(window, global);
    // (As 2-D rows: g's heads sit side by side in one buffer, and a [T, H, D] view of it with its
    // row stride would take the elementwise kernels' slow path of several outer dimensions.)
    ops.scatter_add_rows(rows2d(g2.q), s.global.rs.index, s.global.rs.count, head_rows(g.q));
    ops.add(head_rows(g.k), rows2d(g2.k), head_rows(g.k));
    ops.add(head_rows(g.v), rows2d(g2.v), head_rows(g.v));
    parallel_backward_tail(ctx, s.local, s.route, g, dgate, dx, grads, tc);
  }
};

}  // namespace
}  // namespace rt::l2a

RT_REGISTER_ATTENTION_PLUGIN(rt::l2a::FusedL2aAttention, "l2a_fused", "1.0.0",
                             "L2A, global attention only for the routed tokens in fused flash kernels "
                             "(CUDA; same options and checkpoints as l2a_dense)")
