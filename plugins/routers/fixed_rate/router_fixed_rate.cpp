// fixed_rate: routes a chosen fraction of tokens global with no learned parameters, to profile a
// routed backend at a controlled sparsity without training.
//   sparsity s in [0, 1]: the fraction of tokens NOT routed global.
//   pattern "strided": position t is global iff floor((t+1)(1-s)) > floor(t(1-s)), i.e. evenly
//            spaced, exactly round-down((1-s) * n) of any n leading positions;
//   pattern "random":  position t of layer l is global iff u(seed, l, step, t) < 1 - s, with u a
//            hash-based uniform (rt::position_draw), so a (layer, step, position) always gets
//            the same decision, drawn where the decisions live (Ops::position_draw_rows; a
//            replayed decode step: forward_at at the device-held position).
// p = d (there is no probability to learn), and backward does nothing.
#include <cmath>
#include <cstdint>
#include <vector>

#include "rt/sdk/plugin.h"
#include "rt/sdk/position_hash.h"
#include "rt/sdk/router.h"

namespace {

class RouterFixedRate final : public rt::Router {
 public:
  void configure(const rt::Options& options, const rt::ModelDims&) override {
    RT_CHECK(options.has("sparsity"), "fixed_rate router: option 'sparsity' (fraction of tokens kept local, 0..1) is required");
    sparsity_ = options.get_double("sparsity", 0.0);
    RT_CHECK(sparsity_ >= 0 && sparsity_ <= 1, "fixed_rate router: sparsity must be in [0, 1], found ", sparsity_);
    const std::string pattern = options.get_string("pattern", "random");
    RT_CHECK(pattern == "random" || pattern == "strided",
             "fixed_rate router: pattern must be 'random' or 'strided', found '", pattern, "'");
    strided_ = pattern == "strided";
    seed_ = static_cast<uint64_t>(options.get_int("seed", 0));
  }
  std::vector<std::string> option_names() const override { return {"sparsity", "pattern", "seed"}; }
  bool trainable() const override { return false; }
  // Strided and random patterns are functions of the position; the random one is also drawn on
  // the device.
  bool reads_position() const override { return true; }
  bool decides_at_device_position() const override { return !strided_; }

  void forward_at(const rt::LayerContext& ctx, rt::TensorView, rt::TensorView pos, rt::TensorView p,
                  rt::TensorView d) override {
    RT_CHECK(!strided_, "fixed_rate router: the strided pattern decides on the host (no forward_at)");
    ctx.ops->position_draw_at(pos, key(ctx.layer, 0), 1.0 - sparsity_, d);
    ctx.ops->copy(d, p);
  }

  void forward(const rt::LayerContext& ctx, rt::TensorView h, const rt::RouteCall& call, rt::TensorView p,
               rt::TensorView d) override {
    const int64_t T = h.shape[0];
    const double keep = 1.0 - sparsity_;
    if (!strided_) {  // drawn where d lives: no host loop, and on a GPU no upload that syncs the stream
      ctx.ops->position_draw_rows(call.pos0, key(ctx.layer, call.step), keep, d);
      ctx.ops->copy(d, p);
      return;
    }
    std::vector<float> host(static_cast<size_t>(T));
    for (int64_t i = 0; i < T; ++i) {
      const int64_t t = call.pos0 + i;
      host[static_cast<size_t>(i)] = std::floor((t + 1) * keep) > std::floor(t * keep) ? 1.f : 0.f;
    }
    rt::TensorView src = rt::TensorView::contiguous(host.data(), rt::DType::F32, rt::Device::CPU, {T});
    ctx.ops->copy(src, d);
    ctx.ops->copy(src, p);
  }

  void backward(const rt::LayerContext&, rt::TensorView, rt::TensorView, rt::TensorView, rt::TensorView,
                const rt::LayerGrads&) override {}

 private:
  // The draw's key for one (layer, step): every position of it draws from the same stream.
  uint64_t key(int64_t layer, int64_t step) const {
    return rt::splitmix64(seed_ ^ rt::splitmix64(static_cast<uint64_t>(layer) ^ rt::splitmix64(static_cast<uint64_t>(step))));
  }

  double sparsity_ = 0.0;
  bool strided_ = false;
  uint64_t seed_ = 0;
};

}  // namespace

RT_REGISTER_ROUTER_PLUGIN(RouterFixedRate, "fixed_rate", "1.0.0",
                          "routes a fixed fraction of tokens global (options: sparsity, pattern random|strided, seed)")
