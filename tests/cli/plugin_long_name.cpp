// full_causal under a long name: a plugin whose name is wider than any table column's default, for
// the table-layout test (test_cli_usability.cpp).
#include "rt/sdk/plugin.h"
#include "rt/sdk/single_sublayer_backend.h"

namespace {

class LongNameAttention final : public rt::SingleSublayerBackend {
 public:
  void configure(const rt::Options& options, const rt::ModelDims&) override {
    for (const auto& [key, value] : options.all()) rt::fail("unknown option '", key, "' (value '", value, "')");
  }

 protected:
  bool ring_cache() const override { return false; }
};

}  // namespace

RT_REGISTER_ATTENTION_PLUGIN(LongNameAttention, "causal_attention_with_a_rather_long_plugin_name", "0.0.1",
                             "full causal attention under a long name (tests)")
