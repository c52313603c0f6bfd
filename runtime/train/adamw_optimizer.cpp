#include "train/adamw_optimizer.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include "dist/process_group.h"
#include "model/host_values.h"
#include "rt/sdk/error.h"

namespace rt {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
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
                               AdamWSettings settings, dist::ProcessGroup* shard)
    : shard_(shard && shard->size() > 1 ? shard : nullptr),
      ops_(ops),
      model_(model),
      names_(std::move(trainable)),
      settings_(settings) {
  const DType acc = ops.accum_dtype();
  if (shard_) {
    // Each tensor to the least loaded rank so far, largest first (the same on every rank).
    std::vector<std::string> by_size = names_;
    std::stable_sort(by_size.begin(), by_size.end(), [&](const std::string& a, const std::string& b) {
      return model.parameter(a).numel() > model.parameter(b).numel();
    });
    std::vector<int64_t> load(static_cast<size_t>(shard_->size()), 0);
    for (const auto& n : by_size) {
      const int r = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
      owner_[n] = r;
      load[static_cast<size_t>(r)] += model.parameter(n).numel();
    }
  }
  for (const auto& n : names_) {
    if (!mine(n)) continue;
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

bool AdamWOptimizer::mine(const std::string& name) const {
  return !shard_ || owner_.at(name) == shard_->rank();
}

size_t AdamWOptimizer::state_bytes() const {
  size_t b = 0;
  for (const auto& [n, s] : slots_) b += s.master.view.nbytes() + s.m.view.nbytes() + s.v.view.nbytes();
  return b;
}

void AdamWOptimizer::step(double lr, int64_t t, double grad_scale) {
  for (const auto& n : names_) {
    if (!mine(n)) continue;
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
  // Sharded: every updated parameter from its owner to the others (the bits the owner computed,
  // which are what every rank computes unsharded).
  if (shard_)
    for (const auto& n : names_) shard_->broadcast(model_.parameter(n), owner_.at(n));
}

std::vector<float> AdamWOptimizer::gather(const std::string& name, int what) const {
  auto part = [&](const Slot& s) -> const Tensor& { return what == 0 ? s.master : what == 1 ? s.m : s.v; };
  if (!shard_) return host_floats(ops_, part(slots_.at(name)));
  const int64_t numel = model_.parameter(name).numel();
  Tensor t = ops_.alloc(ops_.accum_dtype(), {numel});
  if (mine(name)) ops_.copy(part(slots_.at(name)).view.reshaped({numel}), t);
  shard_->broadcast(t, owner_.at(name));
  return host_floats(ops_, t);
}

std::map<std::string, std::vector<float>> AdamWOptimizer::masters() const {
  std::map<std::string, std::vector<float>> out;
  for (const auto& n : names_) out[n] = gather(n, 0);
  return out;
}

std::vector<NamedHostTensor> AdamWOptimizer::state() const {
  std::vector<NamedHostTensor> out;
  for (const auto& n : names_) {
    const TensorView p = model_.parameter(n);
    std::vector<int64_t> shape(p.shape.begin(), p.shape.begin() + p.ndim);
    out.push_back({n, shape, gather(n, 0)});
    out.push_back({n + ".exp_avg", shape, gather(n, 1)});
    out.push_back({n + ".exp_avg_sq", shape, gather(n, 2)});
  }
  return out;
}

void AdamWOptimizer::load_state(const std::vector<NamedHostTensor>& tensors) {
  std::unordered_map<std::string, const NamedHostTensor*> by_name;
  for (const auto& t : tensors) by_name[t.name] = &t;
  for (const auto& n : names_) {
    if (!mine(n)) {
      // Not held here: the owner restores it; the parameter comes from the checkpoint's master.
      auto it = by_name.find(n);
      RT_CHECK(it != by_name.end(), "checkpoint: missing optimizer tensor '", n,
               "' (was it written with another regime or attention backend?)");
      const TensorView dst = model_.parameter(n);
      RT_CHECK(static_cast<int64_t>(it->second->data.size()) == dst.numel(), "checkpoint: tensor '", n, "' has ",
               it->second->data.size(), " elements, the model expects ", dst.numel());
      ops_.copy(TensorView::contiguous(const_cast<float*>(it->second->data.data()), DType::F32, Device::CPU,
                                       {dst.numel()}),
                dst.reshaped({dst.numel()}));
      continue;
    }
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
