// swa: sliding-window attention. Query i sees keys i-W+1 .. i (W keys including itself).
// The KV cache is a ring buffer of W positions. Option full_layers: layers that attend to every
// past token instead (with a full cache), as Hugging Face's "full_attention" entries of layer_types
// in a checkpoint that slides only some layers; the runtime fills it in from such a checkpoint.
#include "rt/sdk/plugin.h"
#include "rt/sdk/single_sublayer_backend.h"

namespace {

class SlidingWindowAttention final : public rt::SingleSublayerBackend {
 public:
  void configure(const rt::Options& options, const rt::ModelDims& dims) override {
    for (const auto& [key, value] : options.all())
      if (key != "window" && key != "full_layers")
        rt::fail("swa: unknown option '", key, "' (value '", value, "'); it takes 'window' and 'full_layers'");
    RT_CHECK(options.has("window"), "swa: the window size is required: pass --window W (or --set window=W)");
    spec_.window = options.get_int("window", 0);
    RT_CHECK(spec_.window >= 1, "swa: window must be >= 1, found ", spec_.window);
    set_full_layers(rt::parse_layer_indices(options.get_string("full_layers", ""), "swa: option full_layers",
                                            dims.n_layers),
                    dims.n_layers);
  }

 protected:
  bool ring_cache() const override { return true; }
};

}  // namespace

RT_REGISTER_ATTENTION_PLUGIN(SlidingWindowAttention, "swa", "1.0.0",
                             "sliding-window attention of W keys (options: window, full_layers); ring-buffer KV cache")
