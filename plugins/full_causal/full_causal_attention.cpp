// full_causal: standard causal attention, the baseline every other backend is measured against.
#include "rt/sdk/attention_sublayer.h"
#include "rt/sdk/plugin.h"

namespace {

class FullCausalAttention final : public rt::AttentionBackend {
 public:
  rt::Capabilities capabilities() const override {
    rt::Capabilities c;
    c.cpu = true;
    c.cuda = true;  // the shared sublayer runs on any Ops
    c.f32 = true;
    c.bf16 = true;
    c.decode = true;
    c.kv = rt::KvPolicy::Full;
    return c;
  }
  void configure(const rt::Options& options, const rt::ModelDims&) override {
    for (const auto& [key, value] : options.all())
      rt::fail("full_causal: unknown option '", key, "' (value '", value, "'); it takes none");
  }
  std::unique_ptr<rt::AttentionState> new_state(const rt::LayerContext& ctx, int64_t max_tokens) override {
    return std::make_unique<rt::KvCache>(*ctx.ops, *ctx.dims, max_tokens, 0);
  }
  double forward_flops(const rt::ModelDims& d, int64_t T) const override {
    return rt::attention_sublayer_flops(d, T, 0);
  }
  void forward(const rt::LayerContext& ctx, rt::TensorView x, rt::AttentionState* state) override {
    rt::attention_sublayer_forward(ctx, spec_, x, static_cast<rt::KvCache*>(state));
  }

 private:
  rt::AttentionSublayerSpec spec_;
};

}  // namespace

RT_REGISTER_ATTENTION_PLUGIN(FullCausalAttention, "full_causal", "1.0.0",
                             "standard causal attention (the baseline); KV cache keeps every token")
