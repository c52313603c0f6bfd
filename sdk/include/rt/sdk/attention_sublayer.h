// The Qwen2 attention sublayer, written once against Ops so that every plugin shares it:
//   x += o_proj(Attn(rope(q_proj(h)), rope(k_proj(h)), v_proj(h))),  h = RMSNorm(x)
// with the mask (causal, sliding window) and the KV-cache layout as parameters. full_causal, swa
// and the local/global halves of L2A are this sublayer with different settings.
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <span>
#include <string>

#include "rt/sdk/attention_backend.h"
#include "rt/sdk/error.h"
#include "rt/sdk/training.h"

namespace rt {

struct AttentionSublayerSpec {
  std::string norm = "input_layernorm.weight";  // layer-relative names of the weights used
  std::string prefix = "self_attn.";            // q_proj/k_proj/v_proj/o_proj live under this
  int64_t window = 0;                           // 0: full causal
  double rope_theta = 0.0;                      // 0: the model's
  bool materialize = false;                     // AttentionSpec::materialize (the naive dense path)
};

// KV cache of one sublayer for one sequence. Full: every position is kept. Ring: only the last
// `window` positions, in slot pos % window (enough for a sliding window of that size).
class KvCache : public AttentionState {
 public:
  KvCache(Ops& ops, const ModelDims& d, int64_t max_tokens, int64_t ring_window)
      : ring_(ring_window > 0 && ring_window < max_tokens ? ring_window : 0),
        capacity_(ring_ ? ring_ : max_tokens) {
    k_ = ops.alloc(ops.activation_dtype(), {capacity_, d.n_kv_heads, d.head_dim});
    v_ = ops.alloc(ops.activation_dtype(), {capacity_, d.n_kv_heads, d.head_dim});
    max_tokens_ = max_tokens;
  }
  int64_t tokens_seen() const override { return seen_; }
  size_t kv_bytes() const override { return k_.view.nbytes() + v_.view.nbytes(); }
  bool is_ring() const { return ring_ != 0; }
  int64_t max_tokens() const { return max_tokens_; }

  // The whole cache, for a decode step at a device-held position (Ops::qkv_rope_split_at and
  // decode_attention_at): position p lives in row p, or p % ring for a ring (ring > 0).
  struct Slots {
    TensorView k, v;
    int64_t ring;
  };
  Slots slots() const { return {k_.view, v_.view, ring_}; }
  void advance(int64_t tokens) override {
    RT_CHECK(tokens >= 0 && seen_ + tokens <= max_tokens_, "KV cache full: ", seen_ + tokens,
             " positions requested, cache sized for ", max_tokens_);
    seen_ += tokens;
  }

  // Appends k, v [T, Hkv, D] at positions seen..seen+T-1, having first (for a ring) gathered the
  // cached keys the new queries still need. Returns the keys/values to attend over and the
  // position of their first row.
  struct Window {
    TensorView k, v;
    int64_t k_pos0;
    bool unordered = false;  // rows are ring slots, not positions: every row is visible, no mask
  };
  // Where the next T rows can be written in place, so that the projection writes them straight
  // into the cache: every row of a full cache, and the one slot of a decode step in a ring.
  // Empty views when append() has to reorder (a ring taking several tokens) or the cache is full.
  struct Rows {
    TensorView k, v;
  };
  Rows rows_in_place(int64_t T, int64_t window) const {
    if (seen_ + T > max_tokens_) return {};
    if (!ring_) return {k_.view.rows(seen_, seen_ + T), v_.view.rows(seen_, seen_ + T)};
    if (T == 1 && window == ring_) {
      const int64_t slot = seen_ % ring_;
      return {k_.view.rows(slot, slot + 1), v_.view.rows(slot, slot + 1)};
    }
    return {};
  }
  // After T rows were written into rows_in_place(T, window): the keys/values to attend over.
  Window commit_in_place(int64_t T, int64_t window) {
    RT_CHECK(rows_in_place(T, window).k.data != nullptr, "KvCache::commit_in_place: ", T,
             " rows at position ", seen_, " cannot be written in place");
    seen_ += T;
    if (!ring_) return {k_.view.rows(0, seen_), v_.view.rows(0, seen_), 0};
    // Decode: after writing the new token, the ring holds exactly the keys it may see (at most
    // W, all inside its window), so attend over the slots as they are, without reordering.
    const int64_t valid = std::min(seen_, ring_);
    return {k_.view.rows(0, valid), v_.view.rows(0, valid), 0, true};
  }

  Window append(Ops& ops, TensorView k, TensorView v, int64_t window) {
    const int64_t T = k.shape[0];
    const int64_t p0 = seen_;
    RT_CHECK(p0 + T <= max_tokens_, "KV cache full: ", p0 + T, " positions requested, cache sized for ",
             max_tokens_);
    if (const Rows r = rows_in_place(T, window); r.k.data != nullptr) {
      ops.copy(k, r.k);
      ops.copy(v, r.v);
      return commit_in_place(T, window);
    }
    // Ring: keys p0-(W-1) .. p0-1 come from the cache, in position order, then the new rows.
    const int64_t first = std::max<int64_t>(0, p0 - (window - 1));
    const int64_t old = p0 - first;
    Tensor kk = ops.alloc(k.dtype, {old + T, k.shape[1], k.shape[2]});
    Tensor vv = ops.alloc(k.dtype, {old + T, k.shape[1], k.shape[2]});
    for_ring_runs(first, p0, [&](int64_t slot, int64_t p, int64_t n) {
      ops.copy(k_.view.rows(slot, slot + n), kk.view.rows(p - first, p - first + n));
      ops.copy(v_.view.rows(slot, slot + n), vv.view.rows(p - first, p - first + n));
    });
    ops.copy(k, kk.view.rows(old, old + T));
    ops.copy(v, vv.view.rows(old, old + T));
    // Only the last W new positions survive in the ring.
    for_ring_runs(std::max(p0, p0 + T - ring_), p0 + T, [&](int64_t slot, int64_t p, int64_t n) {
      ops.copy(k.rows(p - p0, p - p0 + n), k_.view.rows(slot, slot + n));
      ops.copy(v.rows(p - p0, p - p0 + n), v_.view.rows(slot, slot + n));
    });
    seen_ += T;
    scratch_k_ = kk;  // keep alive until the caller is done with the window
    scratch_v_ = vv;
    return {kk.view, vv.view, first};
  }

 private:
  // Positions [begin, end) (at most ring_ of them) as at most two runs of consecutive slots:
  // f(first slot, first position, count).
  template <typename F>
  void for_ring_runs(int64_t begin, int64_t end, F&& f) const {
    while (begin < end) {
      const int64_t slot = begin % ring_;
      const int64_t n = std::min(end - begin, ring_ - slot);
      f(slot, begin, n);
      begin += n;
    }
  }

  int64_t ring_ = 0;
  int64_t capacity_ = 0;
  int64_t max_tokens_ = 0;
  int64_t seen_ = 0;
  Tensor k_, v_, scratch_k_, scratch_v_;
};

// Keys visible to T queries at positions 0..T-1: sum over i of min(i + 1, W), or T(T+1)/2.
inline double visible_pairs(int64_t T, int64_t window) {
  const double t = static_cast<double>(T);
  if (window <= 0 || window >= T) return t * (t + 1) / 2;
  const double w = static_cast<double>(window);
  return w * (w + 1) / 2 + (t - w) * w;
}

// FLOPs of attention_sublayer_forward over T tokens: q/k/v/o projections plus QK^T and PV over
// the visible pairs (the norm, RoPE and softmax are O(T * hidden) and left out).
inline double attention_sublayer_flops(const ModelDims& d, int64_t T, int64_t window) {
  const double proj = 2.0 * T * d.hidden * (2.0 * d.n_heads * d.head_dim + 2.0 * d.n_kv_heads * d.head_dim);
  return proj + 4.0 * visible_pairs(T, window) * d.head_dim * d.n_heads;
}

// q [T, Hq, D], k, v [T, Hkv, D] of h [T, hidden] through the projections under `prefix`, QK-norm
// (Qwen3) and RoPE applied to q and k (positions pos0..). q_raw, k_raw: q and k before the norm, kept
// for the backward when asked (keep_raw) on a QK-norm model; empty otherwise.
struct Qkv {
  Tensor q, k, v;
  Tensor q_raw, k_raw;
};

inline double sublayer_theta(const ModelDims& d, const AttentionSublayerSpec& spec) {
  return spec.rope_theta > 0 ? spec.rope_theta : d.rope_theta;
}

inline AttentionSpec sublayer_attention_spec(const ModelDims& d, const AttentionSublayerSpec& spec, int64_t pos0) {
  AttentionSpec as;
  as.causal = true;
  as.window = spec.window;
  as.q_pos0 = pos0;
  as.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d.head_dim)));
  as.materialize = spec.materialize;
  return as;
}

// The q/k/v projection weights (and biases, on a model with them) under spec.prefix, and the same
// as one [(Hq + 2 Hkv) D, hidden] matrix (and vector) when the model stores them as consecutive rows
// of one buffer (stacked_rows; empty views otherwise).
struct QkvWeights {
  TensorView w[3], b[3];
  TensorView w_all, b_all;
  bool has_bias = true;
  bool stacked() const { return w_all.data && (!has_bias || b_all.data); }
};
inline QkvWeights qkv_weights(const LayerParams& p, const ModelDims& d, const AttentionSublayerSpec& spec) {
  QkvWeights r;
  r.has_bias = d.qkv_bias;
  const char* names[3] = {"q_proj", "k_proj", "v_proj"};
  for (int i = 0; i < 3; ++i) {
    r.w[i] = p.get(spec.prefix + names[i] + ".weight");
    if (r.has_bias) r.b[i] = p.get(spec.prefix + names[i] + ".bias");
  }
  r.w_all = stacked_rows({r.w[0], r.w[1], r.w[2]});
  if (r.has_bias) r.b_all = stacked_rows({r.b[0], r.b[1], r.b[2]});
  return r;
}

// qkv [T, (Hq + 2 Hkv) D] = h [T, hidden] through the three projections (q | k | v columns): one
// GEMM when the weights are stacked, else three into column slices.
inline Tensor fused_qkv_projection(Ops& ops, const QkvWeights& qw, TensorView h) {
  const int64_t T = h.shape[0];
  if (qw.stacked()) {
    Tensor qkv = ops.alloc(ops.activation_dtype(), {T, qw.w_all.shape[0]});
    ops.linear(h, qw.w_all, qw.b_all, qkv);
    return qkv;
  }
  Tensor qkv = ops.alloc(ops.activation_dtype(), {T, qw.w[0].shape[0] + qw.w[1].shape[0] + qw.w[2].shape[0]});
  int64_t c0 = 0;
  for (int i = 0; i < 3; ++i) {
    const int64_t n = qw.w[i].shape[0];
    Tensor part = ops.alloc(ops.activation_dtype(), {T, n});
    ops.linear(h, qw.w[i], qw.b[i], part);
    ops.copy(part, qkv.view.cols(c0, c0 + n));
    c0 += n;
  }
  return qkv;
}

// Heads [T, heads, D] of a [T, columns] projection output starting at column col0 (a strided view).
inline TensorView head_columns(TensorView qkv, int64_t col0, int64_t heads, int64_t D) {
  return Ops::qkv_heads(qkv, col0, TensorView::contiguous(nullptr, qkv.dtype, qkv.device, {1, heads, D}));
}

// Qwen3's QK-norm on the q and k heads of a fused projection output qkv [T, (Hq + 2 Hkv) D], in place
// (RMSNorm over head_dim of every head, weights spec.prefix + q_norm / k_norm). No-op without it.
inline void qk_norm_in_place(const LayerContext& ctx, const AttentionSublayerSpec& spec, TensorView qkv) {
  const ModelDims& d = *ctx.dims;
  if (!d.qk_norm) return;
  const TensorView q = head_columns(qkv, 0, d.n_heads, d.head_dim);
  const TensorView k = head_columns(qkv, d.n_heads * d.head_dim, d.n_kv_heads, d.head_dim);
  ctx.ops->rmsnorm(q, ctx.params->get(spec.prefix + "q_norm.weight"), d.rms_eps, q);
  ctx.ops->rmsnorm(k, ctx.params->get(spec.prefix + "k_norm.weight"), d.rms_eps, k);
}

// k_dst, v_dst: where k and v go when given (KV-cache rows, KvCache::rows_in_place); otherwise
// they are allocated. With stacked weights this is one GEMM (plus the QK-norm) and one
// split-and-rotate pass.
inline Qkv project_qkv(const LayerContext& ctx, const AttentionSublayerSpec& spec, TensorView h, int64_t pos0,
                       TensorView k_dst = TensorView{}, TensorView v_dst = TensorView{}, bool keep_raw = false) {
  Ops& ops = *ctx.ops;
  const ModelDims& d = *ctx.dims;
  const int64_t T = h.shape[0];
  const DType act = ops.activation_dtype();
  auto kv_out = [&](TensorView dst) {
    return dst.data ? Tensor{dst, nullptr} : ops.alloc(act, {T, d.n_kv_heads, d.head_dim});
  };
  Qkv r{ops.alloc(act, {T, d.n_heads, d.head_dim}), kv_out(k_dst), kv_out(v_dst)};
  const QkvWeights qw = qkv_weights(*ctx.params, d, spec);
  const double theta = sublayer_theta(d, spec);
  Tensor qkv = fused_qkv_projection(ops, qw, h);
  if (d.qk_norm && keep_raw) {
    r.q_raw = ops.alloc(act, {T, d.n_heads, d.head_dim});
    r.k_raw = ops.alloc(act, {T, d.n_kv_heads, d.head_dim});
    ops.copy(head_columns(qkv, 0, d.n_heads, d.head_dim), r.q_raw);
    ops.copy(head_columns(qkv, d.n_heads * d.head_dim, d.n_kv_heads, d.head_dim), r.k_raw);
  }
  qk_norm_in_place(ctx, spec, qkv);
  ops.qkv_rope_split(qkv, pos0, theta, r.q, r.k, r.v);
  return r;
}

// Backward of Qwen3's QK-norm of one of q, k: dx_raw = the pull-back of dx (the gradient of the
// normed heads) through RMSNorm(x_raw) * w; the weight's gradient goes to grads.
inline Tensor head_norm_backward(const LayerContext& ctx, const std::string& weight, TensorView x_raw, TensorView dx,
                                 const LayerGrads& grads) {
  Ops& ops = *ctx.ops;
  Tensor dx_raw = ops.alloc(dx.dtype, {x_raw.shape[0], x_raw.shape[1], x_raw.shape[2]});
  ops.fill(dx_raw, 0.f);
  ops.rmsnorm_backward(x_raw, ctx.params->get(weight), ctx.dims->rms_eps, dx, dx_raw, grads.get(weight));
  return dx_raw;
}

// dL/d(q, k, v) buffers (activation dtype) for project_qkv_backward: head views [T, H, D] side by
// side in the rows of one [T, (Hq + 2 Hkv) D] buffer, the layout of the forward's fused projection,
// so that with stacked weights the pull-back into dh is one GEMM of depth (Hq + 2 Hkv) D instead of
// three passes over the f32 dh.
inline Qkv alloc_qkv_grads(Ops& ops, const ModelDims& d, int64_t T) {
  const int64_t nq = d.n_heads * d.head_dim, nk = d.n_kv_heads * d.head_dim;
  Tensor all = ops.alloc(ops.activation_dtype(), {T, nq + 2 * nk});
  return {Tensor{head_columns(all.view, 0, d.n_heads, d.head_dim), all.storage},
          Tensor{head_columns(all.view, nq, d.n_kv_heads, d.head_dim), all.storage},
          Tensor{head_columns(all.view, nq + nk, d.n_kv_heads, d.head_dim), all.storage}};
}

// A [T, H, D] view whose heads are packed within a row (strides [s, D, 1]) as the 2-D [T, H D].
inline TensorView head_rows(TensorView v) {
  RT_CHECK(v.ndim == 3 && v.stride[2] == 1 && v.stride[1] == v.shape[2], "head_rows: expected a [T, H, D] view "
           "with packed heads (strides [s, D, 1]), found shape ", v.shape_str());
  TensorView r = TensorView::contiguous(v.data, v.dtype, v.device, {v.shape[0], v.shape[1] * v.shape[2]});
  r.stride[0] = v.stride[0];
  return r;
}

// The 2-D [T, sum of H D] view of head views that lie side by side in the rows of one buffer (each
// with packed heads, the same row stride, each starting where the previous one ends), as
// alloc_qkv_grads makes them; an empty view otherwise.
inline TensorView side_by_side_heads(std::initializer_list<TensorView> parts) {
  TensorView all;
  for (const TensorView& p : parts) {
    if (p.data == nullptr || p.ndim != 3 || p.stride[2] != 1 || p.stride[1] != p.shape[2]) return {};
    const TensorView r = head_rows(p);
    if (all.data == nullptr) {
      all = r;
      continue;
    }
    const char* next = static_cast<const char*>(all.data) + all.shape[1] * static_cast<int64_t>(dtype_size(all.dtype));
    if (r.data != next || r.dtype != all.dtype || r.device != all.device || r.shape[0] != all.shape[0] ||
        r.stride[0] != all.stride[0] || all.shape[1] + r.shape[1] > all.stride[0])
      return {};
    all.shape[1] += r.shape[1];
  }
  return all;
}

// Backward of project_qkv (run with keep_raw on a QK-norm model): dq, dk, dv are the gradients of
// the roped q, k (consumed: rotated back in place) and of v. dh (+= when accumulate_dh, else =)
// their pull-back through the QK-norm and the projections; weight and bias gradients go to grads
// (frozen ones are skipped). With stacked weights and dq, dk, dv side by side (alloc_qkv_grads)
// the pull-back is one GEMM, and so are the weight gradients where grads stacks them too.
inline void project_qkv_backward(const LayerContext& ctx, const AttentionSublayerSpec& spec, TensorView h,
                                 const Qkv& fwd, TensorView dq, TensorView dk, TensorView dv, int64_t pos0,
                                 TensorView dh, const LayerGrads& grads, bool accumulate_dh = true) {
  Ops& ops = *ctx.ops;
  const ModelDims& d = *ctx.dims;
  const LayerParams& p = *ctx.params;
  const double theta = sublayer_theta(d, spec);
  ops.rope_backward(dq, pos0, theta);
  ops.rope_backward(dk, pos0, theta);
  Tensor dq_raw, dk_raw;
  if (d.qk_norm) {
    RT_CHECK(fwd.q_raw.view.data && fwd.k_raw.view.data,
             "project_qkv_backward: a QK-norm model needs the forward's q_raw/k_raw (project_qkv with keep_raw)");
    dq_raw = head_norm_backward(ctx, spec.prefix + "q_norm.weight", fwd.q_raw, dq, grads);
    dk_raw = head_norm_backward(ctx, spec.prefix + "k_norm.weight", fwd.k_raw, dk, grads);
    dq = dq_raw.view;
    dk = dk_raw.view;
  }
  const QkvWeights qw = qkv_weights(p, d, spec);
  const char* names[3] = {"q_proj", "k_proj", "v_proj"};
  const TensorView g[3] = {head_rows(dq), head_rows(dk), head_rows(dv)};
  TensorView gw[3], gb[3];
  bool frozen = true;
  for (int i = 0; i < 3; ++i) {
    gw[i] = grads.get(spec.prefix + names[i] + ".weight");
    if (d.qkv_bias) gb[i] = grads.get(spec.prefix + names[i] + ".bias");
    frozen = frozen && gw[i].data == nullptr && gb[i].data == nullptr;
  }
  if (const TensorView g_all = side_by_side_heads({dq, dk, dv}); qw.w_all.data && g_all.data) {
    const TensorView gw_all = stacked_rows({gw[0], gw[1], gw[2]});
    const TensorView gb_all = d.qkv_bias ? stacked_rows({gb[0], gb[1], gb[2]}) : TensorView{};
    if (frozen || (gw_all.data && (!d.qkv_bias || gb_all.data))) {
      ops.linear_backward(h, qw.w_all, g_all, dh, gw_all, gb_all, accumulate_dh);
      return;
    }
    ops.linear_backward(h, qw.w_all, g_all, dh, TensorView{}, TensorView{}, accumulate_dh);
    for (int i = 0; i < 3; ++i)
      if (gw[i].data || gb[i].data) ops.linear_backward(h, qw.w[i], g[i], TensorView{}, gw[i], gb[i], false);
    return;
  }
  for (int i = 0; i < 3; ++i) ops.linear_backward(h, qw.w[i], g[i], dh, gw[i], gb[i], accumulate_dh || i > 0);
}

// x += gate[:, None] * o_proj(o), o [T, Hq, D]; without a gate a single GEMM accumulating into the
// residual (the add rides on it). Returns o_proj(o) before the gate when gated (the gate's
// backward needs it), else an empty tensor.
inline Tensor add_output_projection(const LayerContext& ctx, const AttentionSublayerSpec& spec, TensorView o,
                                    TensorView gate, TensorView x) {
  Ops& ops = *ctx.ops;
  const ModelDims& d = *ctx.dims;
  const int64_t T = o.shape[0];
  const TensorView o2 = o.reshaped({T, d.n_heads * d.head_dim});
  const TensorView wo = ctx.params->get(spec.prefix + "o_proj.weight");
  if (!gate.data) {
    ops.linear_accumulate(o2, wo, x);
    return Tensor{};
  }
  const DType act = ops.activation_dtype();
  Tensor a = ops.alloc(act, {T, d.hidden});
  ops.linear(o2, wo, TensorView{}, a);
  Tensor ga = ops.alloc(act, {T, d.hidden});
  ops.row_scale(a, gate, ga);
  ops.add(x, ga, x);
  return a;
}

// x [T, hidden] += attention sublayer(x). Positions start at cache->tokens_seen() (or 0).
// With a gate [T] (accum dtype), the sublayer's output row t is scaled by gate[t] (L2A routing).
// normed: RMSNorm(x) with spec.norm when the caller already has it (the L2A router reads it too).
inline void attention_sublayer_forward(const LayerContext& ctx, const AttentionSublayerSpec& spec,
                                       TensorView x, KvCache* cache, TensorView gate = TensorView{},
                                       const Tensor* normed = nullptr) {
  Ops& ops = *ctx.ops;
  const ModelDims& d = *ctx.dims;
  const LayerParams& p = *ctx.params;
  const int64_t T = x.shape[0];
  const int64_t pos0 = cache ? cache->tokens_seen() : 0;

  const DType act = ops.activation_dtype();
  Tensor h = normed ? *normed : ops.alloc(act, {T, d.hidden});
  if (!normed) ops.rmsnorm(x, p.get(spec.norm), d.rms_eps, h);
  const KvCache::Rows in_cache = cache ? cache->rows_in_place(T, spec.window) : KvCache::Rows{};
  Qkv qkv = project_qkv(ctx, spec, h, pos0, in_cache.k, in_cache.v);

  AttentionSpec as = sublayer_attention_spec(d, spec, pos0);
  Tensor o = ops.alloc(act, {T, d.n_heads, d.head_dim});
  if (cache) {
    KvCache::Window w = in_cache.k.data ? cache->commit_in_place(T, spec.window)
                                        : cache->append(ops, qkv.k, qkv.v, spec.window);
    as.k_pos0 = w.k_pos0;
    if (w.unordered) {
      as.causal = false;
      as.window = 0;
    }
    ops.attention(qkv.q, w.k, w.v, o, as);
  } else {
    ops.attention(qkv.q, qkv.k, qkv.v, o, as);
  }

  add_output_projection(ctx, spec, o, gate, x);
}

// x [T, hidden] holds independent sequences back to back, segments[i] rows each, every one from
// position 0 (the documents of a packed evaluation batch): x += the sublayer of each, as
// attention_sublayer_forward computes it on each alone. The norm and the projections run once over
// all T rows (one GEMM each instead of one per sequence); the split-and-rotate and the attention
// run per sequence, on its rows. A sequence of 0 rows is skipped.
inline void attention_sublayer_forward_segments(const LayerContext& ctx, const AttentionSublayerSpec& spec,
                                                TensorView x, std::span<const int64_t> segments) {
  Ops& ops = *ctx.ops;
  const ModelDims& d = *ctx.dims;
  const int64_t T = x.shape[0];
  int64_t rows = 0;
  for (int64_t n : segments) {
    RT_CHECK(n >= 0, "attention_sublayer_forward_segments: a segment of ", n, " rows");
    rows += n;
  }
  RT_CHECK(rows == T, "attention_sublayer_forward_segments: the segments hold ", rows, " rows, x has ", T);
  const DType act = ops.activation_dtype();
  Tensor h = ops.alloc(act, {T, d.hidden});
  ops.rmsnorm(x, ctx.params->get(spec.norm), d.rms_eps, h);
  Tensor qkv = fused_qkv_projection(ops, qkv_weights(*ctx.params, d, spec), h);
  qk_norm_in_place(ctx, spec, qkv);
  Tensor q = ops.alloc(act, {T, d.n_heads, d.head_dim}), k = ops.alloc(act, {T, d.n_kv_heads, d.head_dim}),
         v = ops.alloc(act, {T, d.n_kv_heads, d.head_dim}), o = ops.alloc(act, {T, d.n_heads, d.head_dim});
  const double theta = sublayer_theta(d, spec);
  const AttentionSpec as = sublayer_attention_spec(d, spec, 0);
  int64_t row = 0;
  for (int64_t n : segments) {
    if (n == 0) continue;
    const int64_t end = row + n;
    ops.qkv_rope_split(qkv.view.rows(row, end), 0, theta, q.view.rows(row, end), k.view.rows(row, end),
                       v.view.rows(row, end));
    ops.attention(q.view.rows(row, end), k.view.rows(row, end), v.view.rows(row, end), o.view.rows(row, end), as);
    row = end;
  }
  add_output_projection(ctx, spec, o, TensorView{}, x);
}

// One token x [1, hidden] += attention sublayer(x) at the position held in device memory pos (I32
// [1]), for a decode step that is captured once and replayed (AttentionBackend::decode_step_at):
// every position-dependent argument is read from pos by the Ops::*_at ops. The cache's host-side
// count is not advanced (the caller does, with cache.advance(1)). gate [1] (accum dtype) is a hard
// decision, 0 or 1 (L2A's router): 0 skips the attention itself (Ops::decode_attention_gated_at),
// not the k/v append, and adds nothing to x. normed as in attention_sublayer_forward (L2A's global
// sublayer: RMSNorm_g(x)).
inline void attention_sublayer_decode_at(const LayerContext& ctx, const AttentionSublayerSpec& spec, TensorView x,
                                         KvCache& cache, TensorView pos, TensorView gate = TensorView{},
                                         const Tensor* normed = nullptr) {
  Ops& ops = *ctx.ops;
  const ModelDims& d = *ctx.dims;
  RT_CHECK(x.ndim == 2 && x.shape[0] == 1, "decode_step_at: expected one token x [1, hidden], found ",
           x.shape_str());
  const DType act = ops.activation_dtype();
  Tensor h = normed ? *normed : ops.alloc(act, {1, d.hidden});
  if (!normed) ops.rmsnorm(x, ctx.params->get(spec.norm), d.rms_eps, h);
  Tensor qkv = fused_qkv_projection(ops, qkv_weights(*ctx.params, d, spec), h);
  qk_norm_in_place(ctx, spec, qkv);
  Tensor q = ops.alloc(act, {1, d.n_heads, d.head_dim});
  const KvCache::Slots c = cache.slots();
  ops.qkv_rope_split_at(qkv, pos, sublayer_theta(d, spec), q, c.k, c.v, c.ring);
  Tensor o = ops.alloc(act, {1, d.n_heads, d.head_dim});
  const AttentionSpec as = sublayer_attention_spec(d, spec, 0);
  if (gate.data) ops.decode_attention_gated_at(q, c.k, c.v, c.ring, pos, gate, as, o);  // gate 0: o = 0, no key read
  else ops.decode_attention_at(q, c.k, c.v, c.ring, pos, as, o);
  // With a gate of 0 or 1, o is already the gated output (o_proj has no bias): one GEMV into x.
  add_output_projection(ctx, spec, o, TensorView{}, x);
}

// ---- Training ----------------------------------------------------------------------------------

// What attention_sublayer_backward needs from the forward.
struct SublayerActivations {
  Tensor x_in;  // the residual stream before the sublayer (accum dtype)
  Tensor h;     // RMSNorm(x_in)
  Qkv qkv;      // after RoPE (and the pre-norm q, k of a QK-norm model)
  Tensor o, lse;
  Tensor a;     // o_proj output, before the gate (kept only when gated)
};

// x += gate[:, None] * o_proj(Attn(...)) with positions from 0; gate [T] (accum dtype) or empty
// for an ungated sublayer; normed as in attention_sublayer_forward. Returns the activations for
// the backward.
inline SublayerActivations attention_sublayer_forward_train(const LayerContext& ctx, const AttentionSublayerSpec& spec,
                                                            TensorView x, TensorView gate,
                                                            const Tensor* normed = nullptr) {
  Ops& ops = *ctx.ops;
  const ModelDims& d = *ctx.dims;
  const LayerParams& p = *ctx.params;
  const int64_t T = x.shape[0];
  const DType act = ops.activation_dtype();
  SublayerActivations s;
  s.x_in = ops.alloc(x.dtype, {T, d.hidden});
  s.h = normed ? *normed : ops.alloc(act, {T, d.hidden});
  if (normed) ops.copy(x, s.x_in);
  else ops.rmsnorm_keep_input(x, p.get(spec.norm), d.rms_eps, s.h, s.x_in);
  s.qkv = project_qkv(ctx, spec, s.h, 0, TensorView{}, TensorView{}, /*keep_raw=*/true);
  s.o = ops.alloc(act, {T, d.n_heads, d.head_dim});
  s.lse = ops.alloc(ops.accum_dtype(), {d.n_heads, T});
  ops.attention_forward_lse(s.qkv.q, s.qkv.k, s.qkv.v, s.o, s.lse, sublayer_attention_spec(d, spec, 0));
  s.a = add_output_projection(ctx, spec, s.o, gate, x);
  return s;
}

// dx: dL/d(x after) in, dL/d(x before) out (in place). With a gate: dgate[t] += dL/dgate[t] (when
// dgate is given). Parameter gradients go to grads.
inline void attention_sublayer_backward(const LayerContext& ctx, const AttentionSublayerSpec& spec,
                                        const SublayerActivations& s, TensorView dx, const LayerGrads& grads,
                                        TensorView gate, TensorView dgate) {
  Ops& ops = *ctx.ops;
  const ModelDims& d = *ctx.dims;
  const LayerParams& p = *ctx.params;
  const int64_t T = dx.shape[0];
  const DType act = ops.activation_dtype();
  // da = gate * dx (the gradient of the o_proj output), in the activation dtype for the GEMMs.
  Tensor da = ops.alloc(act, {T, d.hidden});
  if (gate.data) {
    if (dgate.data) ops.row_dot(dx, s.a, dgate, /*accumulate=*/true);
    ops.row_scale(dx, gate, da);
  } else {
    ops.copy(dx, da);
  }
  const std::string wo = spec.prefix + "o_proj.weight";
  Tensor dout = ops.alloc(act, {T, d.n_heads, d.head_dim});
  ops.linear_backward(s.o.view.reshaped({T, d.n_heads * d.head_dim}), p.get(wo), da,
                      dout.view.reshaped({T, d.n_heads * d.head_dim}), grads.get(wo), TensorView{}, false);
  const Qkv g = alloc_qkv_grads(ops, d, T);
  ops.attention_backward(s.qkv.q, s.qkv.k, s.qkv.v, s.o, s.lse, dout, g.q, g.k, g.v,
                         sublayer_attention_spec(d, spec, 0));
  Tensor dh = ops.alloc(ops.accum_dtype(), {T, d.hidden});
  project_qkv_backward(ctx, spec, s.h, s.qkv, g.q, g.k, g.v, 0, dh, grads, /*accumulate_dh=*/false);
  ops.rmsnorm_backward(s.x_in, p.get(spec.norm), d.rms_eps, dh, dx, grads.get(spec.norm));
}

}  // namespace rt
