// Shared by the training tests: a tiny fixture model on a CPU backend (fp32 or fp64) with any
// attention plugin (and router) from the build tree, plus loss/gradient helpers.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cpu/cpu_ops.h"
#include "loader/hf_config.h"
#include "loader/weight_store.h"
#include "model/host_values.h"
#include "model/model_dims.h"
#include "model/qwen2_model.h"
#include "plugin_host/plugin_registry.h"
#include "rt/sdk/error.h"
#include "rt/sdk/router.h"

namespace rt::test {

inline const std::string kModelsDir = std::string(RT_FIXTURES_DIR) + "/models/";

// The real router with its decisions post-processed by adjust(): tests force or soften decisions
// this way while the router's parameters, options and backward stay the real ones.
class WrappedRouter : public Router {
 public:
  explicit WrappedRouter(Router* inner) : inner_(inner) {}
  void configure(const Options& o, const ModelDims& d) override { inner_->configure(o, d); }
  std::vector<std::string> option_names() const override { return inner_->option_names(); }
  std::vector<ParamDecl> extra_params(const ModelDims& d) const override { return inner_->extra_params(d); }
  bool trainable() const override { return inner_->trainable(); }
  bool reads_position() const override { return inner_->reads_position(); }
  void forward(const LayerContext& ctx, TensorView h, const RouteCall& call, TensorView p, TensorView d) override {
    inner_->forward(ctx, h, call, p, d);
    adjust(ctx, p, d);
  }
  void backward(const LayerContext& ctx, TensorView h, TensorView p, TensorView dp, TensorView dh,
                const LayerGrads& g) override {
    inner_->backward(ctx, h, p, dp, dh, g);
  }

 protected:
  virtual void adjust(const LayerContext& ctx, TensorView p, TensorView d) = 0;

 private:
  Router* inner_;
};

struct TrainFixture {
  PluginRegistry registry;
  std::unique_ptr<Ops> ops;
  RouterPtr router;
  std::unique_ptr<Router> custom_router;
  AttentionBackendPtr attention;
  std::optional<WeightStore> store;
  std::unique_ptr<Qwen2Model> model;

  // wrap_router: replaces the backend's router by wrap(real router) (the real one is kept alive).
  TrainFixture(const std::string& model_dir, const std::string& backend, const Options& opts, DType compute,
               std::function<std::unique_ptr<Router>(Router*)> wrap_router = nullptr)
      : TrainFixture(model_dir, backend, opts, make_cpu_ops(compute), std::move(wrap_router)) {}
  // On any compute backend (e.g. CUDA).
  TrainFixture(const std::string& model_dir, const std::string& backend, const Options& opts,
               std::unique_ptr<Ops> compute_ops, std::function<std::unique_ptr<Router>(Router*)> wrap_router = nullptr) {
    ops = std::move(compute_ops);
    registry.scan_directory(RT_BIN_DIR);
    attention = registry.create_attention(backend, ops->device());
    HfConfig cfg = parse_hf_config(model_dir + "/config.json");
    if (attention->capabilities().router) {
      router = registry.create_router(opts.get_string("router", "linear_sigmoid"));
      Router* r = router.get();
      if (wrap_router) {
        custom_router = wrap_router(r);
        r = custom_router.get();
      }
      attention->attach_router(r);
    }
    attention->configure(opts, dims_from_config(cfg));
    model = std::make_unique<Qwen2Model>(cfg, *ops, *attention);
    store.emplace(WeightStore::open(model_dir));
    model->load_weights(*store);
  }
  int64_t n_layers() const { return model->dims().n_layers; }
};

using rt::host_doubles;  // model/host_values.h

// One sequence's total loss (LM + what the plugin adds) and, with grads, its gradients.
struct LossParts {
  double lm = 0, reg = 0, routed = 0;
  double total() const { return lm + reg; }
};

inline LossParts run_sequence(TrainFixture& f, const std::vector<int32_t>& ids, TrainContext tc,
                              const Qwen2Model::GradMap& grads, bool recompute = false) {
  Ops& ops = *f.ops;
  Tensor lm = ops.alloc(ops.accum_dtype(), {1});
  ops.fill(lm, 0.f);
  Tensor stats = ops.alloc(ops.accum_dtype(), {f.n_layers(), 2});
  ops.fill(stats, 0.f);
  tc.route_stats = stats;
  f.model->train_sequence(ids, tc, grads, recompute, lm);
  LossParts r;
  r.lm = host_doubles(ops, lm)[0];
  const auto st = host_doubles(ops, stats);
  for (int64_t l = 0; l < f.n_layers(); ++l) {
    r.reg += st[static_cast<size_t>(2 * l)];
    r.routed += st[static_cast<size_t>(2 * l + 1)];
  }
  return r;
}

inline Qwen2Model::GradMap zero_grads(TrainFixture& f, const std::vector<std::string>& names) {
  Qwen2Model::GradMap g;
  for (const auto& n : names) {
    TensorView p = f.model->parameter(n);
    Tensor t = p.ndim == 1 ? f.ops->alloc(f.ops->accum_dtype(), {p.shape[0]})
                           : f.ops->alloc(f.ops->accum_dtype(), {p.shape[0], p.shape[1]});
    f.ops->fill(t, 0.f);
    g[n] = t;
  }
  return g;
}

// Sets a parameter (CPU, f32 or f64) to seeded normal values times `scale`.
inline void randomize_parameter(TrainFixture& f, const std::string& name, uint64_t seed, double scale) {
  TensorView p = f.model->parameter(name);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> n(0.0, scale);
  for (int64_t i = 0; i < p.numel(); ++i) {
    if (p.dtype == DType::F64) p.ptr<double>()[i] = n(rng);
    else p.ptr<float>()[i] = static_cast<float>(n(rng));
  }
}

inline double read_elem(TensorView p, int64_t i) {
  return p.dtype == DType::F64 ? p.ptr<double>()[i] : p.ptr<float>()[i];
}
inline void write_elem(TensorView p, int64_t i, double v) {
  if (p.dtype == DType::F64) p.ptr<double>()[i] = v;
  else p.ptr<float>()[i] = static_cast<float>(v);
}

}  // namespace rt::test
