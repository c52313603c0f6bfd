// L2A's decode step at a device-held position (AttentionBackend::decode_step_at), shared by
// l2a_dense and l2a_fused: the runtime captures it once as a CUDA graph and replays it for every
// token, so it queues the same work at every position, and every decision that depends on the
// position or on the router is taken on the device:
//   - the router's decision d [1] (0 or 1) stays on the device and gates the global output; the
//     global attention kernels read it and exit early when d = 0 with a zero output, so an
//     unrouted token reads no global key (Ops::decode_attention_gated_at) and adds nothing;
//   - force_local zeroes d below the window (Ops::rmsnorm_route_at, or gate_from_position_at);
//   - the token's global k/v are written to the global cache whatever d is: a later routed query
//     attends to every past key.
// Only routers that decide at a device-held position take this path (Router::forward_at).
#pragma once

#include "l2a_config.h"
#include "rt/sdk/attention_sublayer.h"
#include "rt/sdk/router.h"

namespace rt::l2a {

// The sublayers and caches of one layer's decode step. global_cache is null for a pruned layer
// (its window sublayer alone remains); local_cache is null in the parallel layout, whose window
// attention reads the global cache.
struct DecodeLayer {
  const L2aConfig* cfg = nullptr;
  const AttentionSublayerSpec* local = nullptr;
  const AttentionSublayerSpec* global = nullptr;
  Router* router = nullptr;
  KvCache* local_cache = nullptr;
  KvCache* global_cache = nullptr;
  TensorView routed_steps;  // [1] accum dtype: += d every step (the fraction of steps routed)
};

// h (=) RMSNorm(x) with norm_weight, and the router's hard decision d [1] (0 or 1) for the one
// token, force_local applied, all on the device. A linear threshold router (Router::linear_threshold)
// runs as one op with the norm (Ops::rmsnorm_route_at): a decode step is bound by its launch count.
inline Tensor normed_decision_at(const LayerContext& ctx, const DecodeLayer& l, TensorView x, TensorView norm_weight,
                                 TensorView pos, TensorView h) {
  Ops& ops = *ctx.ops;
  Tensor d = ops.alloc(ops.accum_dtype(), {1});
  const int64_t first = l.cfg->force_local ? l.cfg->window : 0;
  TensorView w;
  float z_min = 0.f;
  if (l.router->linear_threshold(ctx, &w, &z_min)) {
    ops.rmsnorm_route_at(x, norm_weight, ctx.dims->rms_eps, w, z_min, pos, first, h, d, l.routed_steps);
    return d;
  }
  ops.rmsnorm(x, norm_weight, ctx.dims->rms_eps, h);
  Tensor p = ops.alloc(ops.accum_dtype(), {1});
  l.router->forward_at(ctx, h, pos, p, d);
  if (first > 0) ops.gate_from_position_at(pos, first, d, d);
  if (l.routed_steps.data) ops.add(l.routed_steps, d, l.routed_steps);
  return d;
}

// Parallel layout: shared q/k/v of RMSNorm_in(x); k, v into the global cache at pos; window and
// causal attention of the one query over it; x += o_proj(o_window + d * o_causal).
inline void parallel_decode_at(const LayerContext& ctx, const DecodeLayer& l, TensorView x, TensorView pos) {
  Ops& ops = *ctx.ops;
  const ModelDims& d = *ctx.dims;
  const DType act = ops.activation_dtype();
  Tensor h = ops.alloc(act, {1, d.hidden});
  const Tensor gate = normed_decision_at(ctx, l, x, ctx.params->get(l.local->norm), pos, h);
  Tensor qkv = fused_qkv_projection(ops, qkv_weights(*ctx.params, d, *l.local), h);
  qk_norm_in_place(ctx, *l.local, qkv);
  Tensor q = ops.alloc(act, {1, d.n_heads, d.head_dim});
  const KvCache::Slots c = l.global_cache->slots();
  ops.qkv_rope_split_at(qkv, pos, sublayer_theta(d, *l.local), q, c.k, c.v, c.ring);
  Tensor o_window = ops.alloc(act, {1, d.n_heads, d.head_dim}), o_causal = ops.alloc(act, {1, d.n_heads, d.head_dim});
  ops.decode_attention_at(q, c.k, c.v, c.ring, pos, sublayer_attention_spec(d, *l.local, 0), o_window);
  ops.decode_attention_gated_at(q, c.k, c.v, c.ring, pos, gate, sublayer_attention_spec(d, *l.global, 0), o_causal);
  // The gate is 0 or 1, and o_causal is 0 where it is 0: o_window + d * o_causal is their sum.
  Tensor o = ops.alloc(act, {1, d.n_heads, d.head_dim});
  ops.add(o_window, o_causal, o);
  add_output_projection(ctx, *l.local, o, TensorView{}, x);
}

inline void l2a_decode_step_at(const LayerContext& ctx, const DecodeLayer& l, TensorView x, TensorView pos) {
  if (!l.global_cache) {  // pruned: the window sublayer and its ring only
    attention_sublayer_decode_at(ctx, *l.local, x, *l.local_cache, pos);
    return;
  }
  if (l.cfg->layout == Layout::Parallel) {
    parallel_decode_at(ctx, l, x, pos);
    return;
  }
  attention_sublayer_decode_at(ctx, *l.local, x, *l.local_cache, pos);
  Ops& ops = *ctx.ops;
  Tensor h2 = ops.alloc(ops.activation_dtype(), {1, ctx.dims->hidden});
  const Tensor gate = normed_decision_at(ctx, l, x, ctx.params->get(l.global->norm), pos, h2);
  attention_sublayer_decode_at(ctx, *l.global, x, *l.global_cache, pos, gate, &h2);
}

}  // namespace rt::l2a
