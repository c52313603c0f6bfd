#include "train/adamw_optimizer.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include "model/host_values.h"
#include "rt/sdk/error.h"

namespace rt {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The order backpropagation produces gradients in: lm_head, the final norm, the layers from the
// last to the first, the embedding (within a layer, by name). The first non-finite gradient in this
// order is where the NaN/Inf appeared, not merely where it propagated to.
struct BackwardRank {
  int group = 0;       // 0 lm_head / others, 1 final norm, 2 layers, 3 embedding
  int64_t layer = 0;   // descending
  std::string rest;
};

BackwardRank backward_rank(const std::string& n) {
  static const std::string kLayers = "model.layers.";
  if (n.rfind("model.embed_tokens.", 0) == 0) return {3, 0, n};
  if (n.rfind("model.norm.", 0) == 0) return {1, 0, n};
  if (n.rfind(kLayers, 0) == 0) {
    size_t e = kLayers.size();
    while (e < n.size() && std::isdigit(static_cast<unsigned char>(n[e]))) ++e;
    if (e > kLayers.size() && e - kLayers.size() < 18)
      return {2, std::stoll(n.substr(kLayers.size(), e - kLayers.size())), n.substr(e)};
  }
  return {0, 0, n};
}

bool backward_less(const std::string& a, const std::string& b) {
  const BackwardRank ra = backward_rank(a), rb = backward_rank(b);
  if (ra.group != rb.group) return ra.group < rb.group;
  if (ra.layer != rb.layer) return ra.layer > rb.layer;
  return ra.rest < rb.rest;
}

Tensor alloc_like(Ops& ops, DType dt, TensorView v) {
  return v.ndim == 1 ? ops.alloc(dt, {v.shape[0]}) : ops.alloc(dt, {v.shape[0], v.shape[1]});
}

}  // namespace

std::vector<std::string> trainable_parameters(const std::string& regime, const std::vector<std::string>& names,
                                              const std::string& attention) {
  std::vector<std::string> out;
  for (const auto& n : names) {
    const bool router = ends_with(n, ".router.weight");
    const bool attn = n.find(".self_attn.") != std::string::npos || n.find(".global_attn.") != std::string::npos;
    const bool norm = ends_with(n, "layernorm.weight") || n == "model.norm.weight";
    bool take = false;
    if (regime == "router_only") take = router;
    else if (regime == "attention") take = router || attn || norm;
    else if (regime == "full") take = true;
    else fail("train: unknown regime '", regime, "' (expected router_only, attention or full)");
    if (take) out.push_back(n);
  }
  RT_CHECK(!out.empty(), "train: regime '", regime, "' trains nothing with --attention ", attention,
           ": it has no router weights. Use a routed backend (--attention l2a_dense) or regime 'attention'/'full'");
  return out;
}

AdamWOptimizer::AdamWOptimizer(Ops& ops, Qwen2Model& model, std::vector<std::string> trainable,
                               AdamWSettings settings)
    : ops_(ops), model_(model), names_(std::move(trainable)), settings_(settings) {
  const DType acc = ops.accum_dtype();
  for (const auto& n : names_) {
    TensorView p = model.parameter(n);
    Slot s;
    s.master = alloc_like(ops, acc, p);
    ops.copy(p, s.master);
    s.m = alloc_like(ops, acc, p);
    s.v = alloc_like(ops, acc, p);
    ops.fill(s.m, 0.f);
    ops.fill(s.v, 0.f);
    s.decay = p.ndim >= 2;
    slots_[n] = std::move(s);
  }
  grads_ = GradBuffer(ops, model, names_);
  zero_grad();
}

int64_t AdamWOptimizer::trainable_count() const {
  int64_t n = 0;
  for (const auto& [name, s] : slots_) n += s.master.view.numel();
  return n;
}

void AdamWOptimizer::zero_grad() {
  grads_.zero(ops_);
}

double AdamWOptimizer::grad_norm() {
  Tensor sum = ops_.alloc(ops_.accum_dtype(), {1});
  ops_.fill(sum, 0.f);
  for (const auto& n : names_) ops_.reduce_sum(grads_.grads().at(n), 2, sum);
  return std::sqrt(host_doubles(ops_, sum)[0]);
}

std::optional<AdamWOptimizer::NonFinite> AdamWOptimizer::first_nonfinite_grad() const {
  std::vector<std::string> order = names_;
  std::sort(order.begin(), order.end(), backward_less);
  for (const auto& n : order) {
    const std::vector<float> g = host_floats(ops_, grads_.grads().at(n));
    float sum_sq = 0;  // in float like the accumulator grad_norm() sums in on the device
    size_t largest = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      if (!std::isfinite(g[i])) return NonFinite{n, static_cast<int64_t>(i), g[i], false};
      sum_sq += g[i] * g[i];
      if (std::abs(g[i]) > std::abs(g[largest])) largest = i;
    }
    if (!std::isfinite(sum_sq)) return NonFinite{n, static_cast<int64_t>(largest), g[largest], true};
  }
  return std::nullopt;
}

void AdamWOptimizer::step(double lr, int64_t t, double grad_scale) {
  for (const auto& n : names_) {
    Slot& s = slots_.at(n);
    Ops::AdamW hp;
    hp.lr = static_cast<float>(lr);
    hp.beta1 = static_cast<float>(settings_.beta1);
    hp.beta2 = static_cast<float>(settings_.beta2);
    hp.eps = static_cast<float>(settings_.eps);
    hp.weight_decay = s.decay ? static_cast<float>(settings_.weight_decay) : 0.f;
    hp.grad_scale = static_cast<float>(grad_scale);
    hp.step = t;
    ops_.adamw_step(s.master, grads_.grads().at(n), s.m, s.v, model_.parameter(n), hp);
  }
}

std::vector<NamedHostTensor> AdamWOptimizer::state() const {
  std::vector<NamedHostTensor> out;
  for (const auto& n : names_) {
    const Slot& s = slots_.at(n);
    std::vector<int64_t> shape(s.master.view.shape.begin(), s.master.view.shape.begin() + s.master.view.ndim);
    out.push_back({n, shape, host_floats(ops_, s.master)});
    out.push_back({n + ".exp_avg", shape, host_floats(ops_, s.m)});
    out.push_back({n + ".exp_avg_sq", shape, host_floats(ops_, s.v)});
  }
  return out;
}

void AdamWOptimizer::load_state(const std::vector<NamedHostTensor>& tensors) {
  std::unordered_map<std::string, const NamedHostTensor*> by_name;
  for (const auto& t : tensors) by_name[t.name] = &t;
  for (const auto& n : names_) {
    Slot& s = slots_.at(n);
    const struct {
      std::string key;
      Tensor* dst;
    } parts[] = {{n, &s.master}, {n + ".exp_avg", &s.m}, {n + ".exp_avg_sq", &s.v}};
    for (const auto& part : parts) {
      auto it = by_name.find(part.key);
      RT_CHECK(it != by_name.end(), "checkpoint: missing optimizer tensor '", part.key,
               "' (was it written with another regime or attention backend?)");
      const TensorView dst = part.dst->view;
      RT_CHECK(static_cast<int64_t>(it->second->data.size()) == dst.numel(), "checkpoint: tensor '", part.key,
               "' has ", it->second->data.size(), " elements, the model expects ", dst.numel(), " (shape ",
               dst.shape_str(), ")");
      TensorView src = dst;
      src.data = const_cast<float*>(it->second->data.data());
      src.device = Device::CPU;
      src.dtype = DType::F32;
      ops_.copy(src, dst);
    }
    ops_.copy(s.master, model_.parameter(n));
  }
}

}  // namespace rt
