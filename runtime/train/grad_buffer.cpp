#include "train/grad_buffer.h"

#include <algorithm>

#include "dist/process_group.h"

namespace rt {

GradBuffer::GradBuffer(Ops& ops, const Qwen2Model& model, const std::vector<std::string>& names) {
  constexpr int64_t kAlign = 64;
  auto padded = [](int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; };
  int64_t total = 0;
  for (const auto& n : names) total += padded(model.parameter(n).numel());
  buffer_ = ops.alloc(ops.accum_dtype(), {total});
  int64_t offset = 0;
  for (const auto& n : names) {
    const TensorView p = model.parameter(n);
    const TensorView g = buffer_.view.rows(offset, offset + p.numel());
    grads_[n] = Tensor{p.ndim == 1 ? g : g.reshaped({p.shape[0], p.shape[1]}), nullptr};
    offset += padded(p.numel());
  }
  zero(ops);
}

void GradBuffer::zero(Ops& ops) {
  if (buffer_.view.numel() > 0) ops.fill(buffer_, 0.f);
}

void GradBuffer::sum_over_ranks(dist::ProcessGroup& group) const {
  constexpr int64_t kBucket = int64_t{1} << 24;
  const TensorView all = buffer_.view;
  for (int64_t b = 0; b < all.numel(); b += kBucket) group.allreduce_sum(all.rows(b, std::min(all.numel(), b + kBucket)));
}

}  // namespace rt
