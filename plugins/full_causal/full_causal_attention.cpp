// full_causal: standard causal attention, the baseline every other backend is measured against.
#include "rt/sdk/plugin.h"
#include "rt/sdk/single_sublayer_backend.h"

namespace {

class FullCausalAttention final : public rt::SingleSublayerBackend {
 public:
  void configure(const rt::Options& options, const rt::ModelDims&) override {
    for (const auto& [key, value] : options.all())
      rt::fail("full_causal: unknown option '", key, "' (value '", value, "'); it takes none");
  }

 protected:
  bool ring_cache() const override { return false; }
};

}  // namespace

RT_REGISTER_ATTENTION_PLUGIN(FullCausalAttention, "full_causal", "1.0.0",
                             "standard causal attention (the baseline); KV cache keeps every token")
