// swa: sliding-window attention. Query i sees keys i-W+1 .. i (W keys including itself).
// The KV cache is a ring buffer of W positions.
#include "rt/sdk/attention_sublayer.h"
#include "rt/sdk/plugin.h"

namespace {

class SlidingWindowAttention final : public rt::AttentionBackend {
 public:
  rt::Capabilities capabilities() const override {
    rt::Capabilities c;
    c.cpu = true;
    c.cuda = true;  // the shared sublayer runs on any Ops
    c.f32 = true;
    c.bf16 = true;
    c.decode = true;
    c.kv = rt::KvPolicy::RingBuffer;
    return c;
  }
  void configure(const rt::Options& options, const rt::ModelDims&) override {
    for (const auto& [key, value] : options.all())
      if (key != "window") rt::fail("swa: unknown option '", key, "' (value '", value, "'); it takes 'window'");
    RT_CHECK(options.has("window"), "swa: the window size is required: pass --window W (or --set window=W)");
    spec_.window = options.get_int("window", 0);
    RT_CHECK(spec_.window >= 1, "swa: window must be >= 1, found ", spec_.window);
  }
  std::unique_ptr<rt::AttentionState> new_state(const rt::LayerContext& ctx, int64_t max_tokens) override {
    return std::make_unique<rt::KvCache>(*ctx.ops, *ctx.dims, max_tokens, spec_.window);
  }
  double forward_flops(const rt::ModelDims& d, int64_t T) const override {
    return rt::attention_sublayer_flops(d, T, spec_.window);
  }
  void forward(const rt::LayerContext& ctx, rt::TensorView x, rt::AttentionState* state) override {
    rt::attention_sublayer_forward(ctx, spec_, x, static_cast<rt::KvCache*>(state));
  }

 private:
  rt::AttentionSublayerSpec spec_;
};

}  // namespace

RT_REGISTER_ATTENTION_PLUGIN(SlidingWindowAttention, "swa", "1.0.0",
                             "sliding-window attention of W keys (option: window); ring-buffer KV cache")
