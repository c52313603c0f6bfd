// example_chunked: chunked local attention (as in Llama 4's local layers). The sequence is cut
// into chunks of C positions; a query sees the keys of its own chunk up to itself.
//
// It shows what a plugin does with only the SDK: declare capabilities, read options, call Ops
// for the norm and attention, reuse the SDK's q/k/v projection (project_qkv: biases, Qwen3's
// QK-norm and RoPE as the model has them), and register itself in one line at the bottom.
// Prefill/training only: it declares no decode support, so `runtime generate` refuses it.
#include <cmath>

#include "rt/sdk/attention_sublayer.h"
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
    const int64_t qdim = d.n_heads * d.head_dim;

    rt::Tensor h = ops.alloc(rt::DType::F32, {T, d.hidden});
    ops.rmsnorm(x, p.get("input_layernorm.weight"), d.rms_eps, h);
    // q [T, Hq, D], k, v [T, Hkv, D] from self_attn.{q,k,v}_proj, at positions 0..T-1.
    const rt::Qkv qkv = rt::project_qkv(ctx, rt::AttentionSublayerSpec{}, h, /*pos0=*/0);
    const rt::TensorView q = qkv.q, k = qkv.k, v = qkv.v;

    // Each chunk is an independent causal attention problem.
    rt::Tensor o = ops.alloc(rt::DType::F32, {T, d.n_heads, d.head_dim});
    for (int64_t c0 = 0; c0 < T; c0 += chunk_) {
      const int64_t c1 = std::min(T, c0 + chunk_);
      rt::AttentionSpec spec;
      spec.q_pos0 = spec.k_pos0 = c0;
      ops.attention(q.rows(c0, c1), k.rows(c0, c1), v.rows(c0, c1), o.view.rows(c0, c1), spec);
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
