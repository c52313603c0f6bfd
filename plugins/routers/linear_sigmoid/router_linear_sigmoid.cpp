// linear_sigmoid: the L2A router. z = h . w_r (w_r [1, hidden], zero-initialized, so every token
// starts at p = 0.5 and is routed global), p = sigmoid(z / tau), d = 1[p >= threshold].
//
// d is computed from z, as z >= tau * logit(threshold), not from the rounded p: at threshold 0.5
// that is exactly the inference rule d = 1[z >= 0], with no token flipping on sigmoid rounding.
// Backward (straight-through): dz = dp * p (1 - p) / tau.
#include <cmath>

#include "rt/sdk/plugin.h"
#include "rt/sdk/router.h"

namespace {

class RouterLinearSigmoid final : public rt::Router {
 public:
  void configure(const rt::Options& options, const rt::ModelDims&) override {
    tau_ = options.get_double("tau", 0.1);
    threshold_ = options.get_double("threshold", 0.5);
    RT_CHECK(std::isfinite(tau_) && tau_ > 0, "linear_sigmoid router: tau must be > 0, found ", tau_);
    RT_CHECK(threshold_ > 0 && threshold_ < 1, "linear_sigmoid router: threshold must be in (0, 1), found ",
             threshold_);
  }
  std::vector<rt::ParamDecl> extra_params(const rt::ModelDims& d) const override {
    return {{"router.weight", {1, d.hidden}, "zeros"}};
  }
  bool trainable() const override { return true; }

  void forward(const rt::LayerContext& ctx, rt::TensorView h, const rt::RouteCall&, rt::TensorView p,
               rt::TensorView d) override {
    rt::Ops& ops = *ctx.ops;
    const int64_t T = h.shape[0];
    rt::Tensor z = ops.alloc(ops.accum_dtype(), {T, 1});
    ops.linear(h, ctx.params->get("router.weight"), rt::TensorView{}, z);
    ops.sigmoid(z.view.reshaped({T}), static_cast<float>(1.0 / tau_), p);
    ops.step(z.view.reshaped({T}), z_min(), d);
  }

  // d = (z >= tau * logit(threshold)), i.e. sigmoid(z / tau) >= threshold.
  bool linear_threshold(const rt::LayerContext& ctx, rt::TensorView* w, float* zmin) const override {
    *w = ctx.params->get("router.weight");
    *zmin = z_min();
    return true;
  }

  void backward(const rt::LayerContext& ctx, rt::TensorView h, rt::TensorView p, rt::TensorView dp,
                rt::TensorView dh, const rt::LayerGrads& grads) override {
    rt::Ops& ops = *ctx.ops;
    const int64_t T = h.shape[0];
    rt::Tensor dz = ops.alloc(ops.accum_dtype(), {T});
    ops.sigmoid_backward(p, dp, static_cast<float>(1.0 / tau_), dz);
    // The GEMMs take dz in the activation dtype, like every other activation gradient.
    rt::Tensor dz_act = ops.alloc(ops.activation_dtype(), {T, 1});
    ops.copy(dz.view.reshaped({T, 1}), dz_act);
    ops.linear_backward(h, ctx.params->get("router.weight"), dz_act, dh, grads.get("router.weight"),
                        rt::TensorView{}, /*accumulate_dx=*/true);
  }

 private:
  float z_min() const { return static_cast<float>(tau_ * std::log(threshold_ / (1.0 - threshold_))); }

  double tau_ = 0.1, threshold_ = 0.5;
};

}  // namespace

RT_REGISTER_ROUTER_PLUGIN(RouterLinearSigmoid, "linear_sigmoid", "1.0.0",
                          "the L2A router: p = sigmoid(h . w_r / tau), d = 1[p >= threshold], straight-through")
