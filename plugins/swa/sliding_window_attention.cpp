// swa: sliding-window attention. Query i sees keys i-W+1 .. i (W keys including itself).
// The KV cache is a ring buffer of W positions.
#include "rt/sdk/plugin.h"
#include "rt/sdk/single_sublayer_backend.h"

namespace {

class SlidingWindowAttention final : public rt::SingleSublayerBackend {
 public:
  void configure(const rt::Options& options, const rt::ModelDims&) override {
    for (const auto& [key, value] : options.all())
      if (key != "window") rt::fail("swa: unknown option '", key, "' (value '", value, "'); it takes 'window'");
    RT_CHECK(options.has("window"), "swa: the window size is required: pass --window W (or --set window=W)");
    spec_.window = options.get_int("window", 0);
    RT_CHECK(spec_.window >= 1, "swa: window must be >= 1, found ", spec_.window);
  }

 protected:
  bool ring_cache() const override { return true; }
};

}  // namespace

RT_REGISTER_ATTENTION_PLUGIN(SlidingWindowAttention, "swa", "1.0.0",
                             "sliding-window attention of W keys (option: window); ring-buffer KV cache")
