// L2A options (DESIGN.md section 4), parsed once for l2a_dense and l2a_fused, and the pieces of
// L2A semantics both share: the router gate with force_local, and the sparsity regularizer.
#pragma once

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "rt/sdk/attention_backend.h"
#include "rt/sdk/error.h"
#include "rt/sdk/router.h"

namespace rt::l2a {

enum class Layout { Paper, Parallel };

struct L2aConfig {
  Layout layout = Layout::Paper;
  int64_t window = 0;
  double tau = 0.1;
  double threshold = 0.5;
  bool force_local = false;
  double rope_theta = 0.0;  // 0: the model's
  double leak_prob = 0.1;
  double lambda = 0.0;
  bool reg_mean = false;    // reg_norm "mean" (else "sum")
  bool lambda_ramp = true;  // lambda_schedule "ramp" (else "constant")
  std::string router = "linear_sigmoid";
  // Layers whose global sublayer (router, global norm and projections, global KV cache) was removed
  // by `runtime prune`: they run the local window sublayer only. Sorted.
  std::vector<int> pruned_layers;

  // Parses and validates; fills the layout-dependent defaults (tau, force_local) and returns the
  // options the router is configured with (the user's, plus those defaults made explicit).
  Options parse(const Options& o, const char* plugin, const std::vector<std::string>& router_keys) {
    static const std::set<std::string> own = {"layout",    "window",    "tau",    "threshold",
                                              "force_local", "rope_theta", "leak_prob", "lambda",
                                              "reg_norm",  "lambda_schedule", "router",
                                              "pruned_layers"};
    for (const auto& [key, value] : o.all()) {
      bool known = own.count(key) != 0;
      for (const auto& k : router_keys) known = known || k == key;
      if (!known) {
        std::string keys;
        for (const auto& k : own) keys += " " + k;
        for (const auto& k : router_keys) keys += " " + k;
        fail(plugin, ": unknown option '", key, "' (value '", value, "'); it takes:", keys);
      }
    }
    const std::string lay = o.get_string("layout", "paper");
    RT_CHECK(lay == "paper" || lay == "parallel", plugin, ": option 'layout' must be 'paper' or 'parallel', found '",
             lay, "'");
    layout = lay == "paper" ? Layout::Paper : Layout::Parallel;
    RT_CHECK(o.has("window"), plugin, ": the local window is required: pass --window W (or --set window=W)");
    window = o.get_int("window", 0);
    RT_CHECK(window >= 1, plugin, ": option 'window' must be >= 1, found ", window);
    tau = o.get_double("tau", layout == Layout::Paper ? 0.1 : 1.0);
    RT_CHECK(std::isfinite(tau) && tau > 0, plugin, ": option 'tau' must be > 0, found ", tau);
    threshold = o.get_double("threshold", 0.5);
    RT_CHECK(threshold > 0 && threshold < 1, plugin, ": option 'threshold' must be in (0, 1), found ", threshold);
    force_local = o.get_bool("force_local", layout == Layout::Parallel);
    rope_theta = o.get_double("rope_theta", 0.0);
    RT_CHECK(std::isfinite(rope_theta) && rope_theta >= 0, plugin,
             ": option 'rope_theta' must be > 0 (or 0 for the model's), found ", rope_theta);
    leak_prob = o.get_double("leak_prob", 0.1);
    RT_CHECK(leak_prob >= 0 && leak_prob <= 1, plugin, ": option 'leak_prob' must be in [0, 1], found ", leak_prob);
    lambda = o.get_double("lambda", 0.0);
    RT_CHECK(std::isfinite(lambda) && lambda >= 0, plugin, ": option 'lambda' must be >= 0, found ", lambda);
    const std::string norm = o.get_string("reg_norm", "sum");
    RT_CHECK(norm == "sum" || norm == "mean", plugin, ": option 'reg_norm' must be 'sum' or 'mean', found '", norm,
             "'");
    reg_mean = norm == "mean";
    const std::string sched = o.get_string("lambda_schedule", "ramp");
    RT_CHECK(sched == "ramp" || sched == "constant", plugin,
             ": option 'lambda_schedule' must be 'ramp' or 'constant', found '", sched, "'");
    lambda_ramp = sched == "ramp";
    router = o.get_string("router", "linear_sigmoid");
    pruned_layers = parse_layer_list(o.get_string("pruned_layers", ""), plugin);
    Options for_router = o;
    for_router.set("tau", exact(tau));
    for_router.set("threshold", exact(threshold));
    return for_router;
  }

  // Out-of-range indices are refused by check_pruned_layers (the layer count is known only at configure).
  static std::vector<int> parse_layer_list(const std::string& text, const char* plugin) {
    return parse_layer_indices(text, std::string(plugin) + ": option 'pruned_layers'");
  }

  void check_pruned_layers(const ModelDims& d, const char* plugin) const {
    for (int l : pruned_layers)
      RT_CHECK(l < d.n_layers, plugin, ": option 'pruned_layers': layer ", l, " is out of range: the model has ",
               d.n_layers, " layers (0..", d.n_layers - 1, ")");
  }

  bool pruned(int layer) const { return std::binary_search(pruned_layers.begin(), pruned_layers.end(), layer); }

  static std::string exact(double v) {  // round-trips through Options::get_double
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return buf;
  }

  // lambda at a 1-based step: "constant", or "ramp" (0 through warmup, then linear to lambda at
  // the last step).
  double lambda_at(const TrainContext& tc) const {
    if (!lambda_ramp) return lambda;
    if (tc.step <= tc.warmup_steps) return 0.0;
    const double span = static_cast<double>(std::max<int64_t>(1, tc.total_steps - tc.warmup_steps));
    return lambda * std::min(1.0, static_cast<double>(tc.step - tc.warmup_steps) / span);
  }

  // The regularizer of one layer for one sequence of T tokens is coef * sum_t p_t^2:
  //   sum  (official): lambda / n_layers per sequence, averaged over the batch (loss_scale);
  //   mean (replication): additionally divided by T (a mean over batch, tokens and layers).
  double reg_coef(const TrainContext& tc, const ModelDims& d, int64_t T) const {
    double c = lambda_at(tc) * tc.loss_scale / static_cast<double>(d.n_layers);
    if (reg_mean) c /= static_cast<double>(T);
    return c;
  }

  // Positions whose decision force_local pins to 0 among [pos0, pos0 + T).
  int64_t forced_rows(int64_t pos0, int64_t T) const {
    if (!force_local) return 0;
    return std::clamp<int64_t>(window - pos0, 0, T);
  }
};

// The view of element [row, col] of a 2-D tensor as a [1] tensor (route_stats cells).
inline TensorView cell(TensorView m, int64_t row, int64_t col) {
  TensorView v = m;
  v.data = static_cast<char*>(m.data) + (row * m.stride[0] + col * m.stride[1]) * static_cast<int64_t>(dtype_size(m.dtype));
  v.ndim = 1;
  v.shape[0] = 1;
  v.stride[0] = 1;
  return v;
}

}  // namespace rt::l2a
