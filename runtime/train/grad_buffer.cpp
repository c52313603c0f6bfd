#include "train/grad_buffer.h"

#include <algorithm>
#include <cctype>

#include "dist/process_group.h"

namespace rt {

namespace {

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

// Within a layer by name, except that the q/k/v projections sort as q, k, v (weights together,
// biases together): their gradients then lie as the stacked [(Hq + 2 Hkv) D, hidden] matrix (and
// [(Hq + 2 Hkv) D] bias) that project_qkv_backward fills in one GEMM.
std::string within_layer_key(const std::string& rest) {
  static const char* kParts[3] = {".q_proj.", ".k_proj.", ".v_proj."};
  for (int i = 0; i < 3; ++i)
    if (const size_t at = rest.rfind(kParts[i]); at != std::string::npos)
      return rest.substr(0, at) + ".qkv_proj." + rest.substr(at + 8) + "." + std::to_string(i);
  return rest;
}

bool backward_order(const std::string& a, const std::string& b) {
  const BackwardRank ra = backward_rank(a), rb = backward_rank(b);
  if (ra.group != rb.group) return ra.group < rb.group;
  if (ra.layer != rb.layer) return ra.layer > rb.layer;
  const std::string ka = within_layer_key(ra.rest), kb = within_layer_key(rb.rest);
  return ka != kb ? ka < kb : ra.rest < rb.rest;
}

// The backward stage after which a parameter's gradient is final (see GradBuffer::final_after).
int stage_of(const std::string& n, int n_layers) {
  const BackwardRank r = backward_rank(n);
  if (r.group == 3) return -1;
  if (r.group == 2) return static_cast<int>(r.layer);
  return n_layers;
}

void sum_range(dist::ProcessGroup& group, TensorView all, int64_t begin, int64_t end, int64_t bucket) {
  for (int64_t b = begin; b < end; b += bucket) group.allreduce_sum(all.rows(b, std::min(end, b + bucket)));
}

}  // namespace

bool backward_less(const std::string& a, const std::string& b) { return backward_order(a, b); }

GradBuffer::GradBuffer(Ops& ops, const Qwen2Model& model, const std::vector<std::string>& names) {
  constexpr int64_t kAlign = 64;
  auto padded = [](int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; };
  std::vector<std::string> order = names;
  std::stable_sort(order.begin(), order.end(), backward_order);
  int64_t total = 0;
  for (const auto& n : order) total += padded(model.parameter(n).numel());
  buffer_ = ops.alloc(ops.accum_dtype(), {total});
  const int L = static_cast<int>(model.dims().n_layers);
  int64_t offset = 0;
  for (int s = L; s >= -1; --s) final_after_[s] = 0;
  for (const auto& n : order) {
    const TensorView p = model.parameter(n);
    const TensorView g = buffer_.view.rows(offset, offset + p.numel());
    grads_[n] = Tensor{p.ndim == 1 ? g : g.reshaped({p.shape[0], p.shape[1]}), nullptr};
    offset += padded(p.numel());
    // Final after its stage and every later one (stages run from n_layers down to -1).
    for (int s = stage_of(n, L); s >= -1; --s) final_after_[s] = offset;
  }
  final_after_[-1] = total;
  zero(ops);
}

int64_t GradBuffer::final_after(int stage) const {
  auto it = final_after_.find(stage);
  return it == final_after_.end() ? buffer_.view.numel() : it->second;
}

void GradBuffer::zero(Ops& ops) {
  if (buffer_.view.numel() > 0) ops.fill(buffer_, 0.f);
}

void GradBuffer::sum_over_ranks(dist::ProcessGroup& group, int64_t bucket) const {
  sum_range(group, buffer_.view, 0, buffer_.view.numel(), bucket);
}

OverlappedGradSum::OverlappedGradSum(const GradBuffer& buffer, dist::ProcessGroup& group, int64_t bucket)
    : buffer_(buffer), group_(group), bucket_(bucket), thread_([this] { run(); }) {}

OverlappedGradSum::~OverlappedGradSum() {
  {
    // Left without finish() (an error in the backward): no further collectives; one already
    // running ends with the peers or at the group's timeout.
    std::lock_guard<std::mutex> lock(mu_);
    abandoned_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void OverlappedGradSum::stage_done(int stage) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ready_ = std::max(ready_, buffer_.final_after(stage));
  }
  cv_.notify_all();
}

void OverlappedGradSum::finish() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    all_ready_ = true;
    ready_ = buffer_.buffer().numel();
  }
  cv_.notify_all();
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return done_; });
  if (error_) std::rethrow_exception(error_);
}

void OverlappedGradSum::run() {
  int64_t summed = 0;
  const int64_t total = buffer_.buffer().numel();
  try {
    while (summed < total) {
      int64_t until = 0;
      {
        std::unique_lock<std::mutex> lock(mu_);
        // Whole buckets while the backward runs (the bucket boundaries are then the same in every
        // step and on every rank), the tail once everything is final.
        cv_.wait(lock, [&] {
          return abandoned_ || ready_ - summed >= bucket_ || (all_ready_ && ready_ > summed) || ready_ >= total;
        });
        if (abandoned_) break;
        until = ready_ >= total ? total : summed + (ready_ - summed) / bucket_ * bucket_;
      }
      sum_range(group_, buffer_.buffer(), summed, until, bucket_);
      summed = until;
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = std::current_exception();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
  }
  cv_.notify_all();
}

}  // namespace rt
