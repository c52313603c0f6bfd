// example_chunked: chunked local attention (as in Llama 4's local layers). The sequence is cut
// into chunks of C positions; a query sees the keys of its own chunk up to itself.
//
// It shows what a plugin does with only the SDK: declare capabilities, read options, call Ops
// for norm, projections, RoPE and attention, and register itself in one line at the bottom.
// Prefill/training only: it declares no decode support, so `runtime generate` refuses it.
#include <cmath>

#include "rt/sdk/plugin.h"

namespace {

class ChunkedAttention final : public rt::AttentionBackend {
 public:
  rt::Capabilities capabilities() const override {
    rt::Capabilities c;
    c.cpu = true;
    c.decode = false;
    c.kv = rt::KvPolicy::None;
    return c;
  }
  void configure(const rt::Options& options, const rt::ModelDims&) override {
    chunk_ = options.get_int("chunk", 64);
    RT_CHECK(chunk_ >= 1, "example_chunked: chunk must be >= 1, found ", chunk_);
  }
  std::unique_ptr<rt::AttentionState> new_state(const rt::LayerContext&, int64_t) override {
    rt::fail("example_chunked: no KV cache; this plugin supports prefill only");
  }
  void forward(const rt::LayerContext& ctx, rt::TensorView x, rt::AttentionState* state) override {
    RT_CHECK(state == nullptr, "example_chunked: no KV cache; this plugin supports prefill only");
    rt::Ops& ops = *ctx.ops;
    const rt::ModelDims& d = *ctx.dims;
    const rt::LayerParams& p = *ctx.params;
    const int64_t T = x.shape[0];
    const int64_t qdim = d.n_heads * d.head_dim, kvdim = d.n_kv_heads * d.head_dim;

    rt::Tensor h = ops.alloc(rt::DType::F32, {T, d.hidden});
    ops.rmsnorm(x, p.get("input_layernorm.weight"), d.rms_eps, h);
    rt::Tensor q = ops.alloc(rt::DType::F32, {T, d.n_heads, d.head_dim});
    rt::Tensor k = ops.alloc(rt::DType::F32, {T, d.n_kv_heads, d.head_dim});
    rt::Tensor v = ops.alloc(rt::DType::F32, {T, d.n_kv_heads, d.head_dim});
    ops.linear(h, p.get("self_attn.q_proj.weight"), p.get("self_attn.q_proj.bias"), q.view.reshaped({T, qdim}));
    ops.linear(h, p.get("self_attn.k_proj.weight"), p.get("self_attn.k_proj.bias"), k.view.reshaped({T, kvdim}));
    ops.linear(h, p.get("self_attn.v_proj.weight"), p.get("self_attn.v_proj.bias"), v.view.reshaped({T, kvdim}));
    ops.rope(q, 0, d.rope_theta);
    ops.rope(k, 0, d.rope_theta);

    // Each chunk is an independent causal attention problem.
    rt::Tensor o = ops.alloc(rt::DType::F32, {T, d.n_heads, d.head_dim});
    for (int64_t c0 = 0; c0 < T; c0 += chunk_) {
      const int64_t c1 = std::min(T, c0 + chunk_);
      rt::AttentionSpec spec;
      spec.q_pos0 = spec.k_pos0 = c0;
      ops.attention(q.view.rows(c0, c1), k.view.rows(c0, c1), v.view.rows(c0, c1), o.view.rows(c0, c1), spec);
    }
    rt::Tensor a = ops.alloc(rt::DType::F32, {T, d.hidden});
    ops.linear(o.view.reshaped({T, qdim}), p.get("self_attn.o_proj.weight"), rt::TensorView{}, a);
    ops.add(x, a, x);
  }

 private:
  int64_t chunk_ = 64;
};

}  // namespace

RT_REGISTER_ATTENTION_PLUGIN(ChunkedAttention, "example_chunked", "0.1.0",
                             "example: chunked local attention (option: chunk); prefill only")
