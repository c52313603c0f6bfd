#include "eval/sharded.h"

#include "dist/process_group.h"

namespace rt::eval {

int64_t items_of_rank(const dist::ProcessGroup* group, int64_t n_items) {
  if (!group || group->size() == 1) return n_items;
  const int64_t r = group->rank(), n = group->size();
  return n_items > r ? (n_items - r + n - 1) / n : 0;
}

std::vector<double> sharded_items(dist::ProcessGroup* group, int64_t n_items, int width,
                                  const std::function<void(int64_t, double*)>& compute,
                                  const std::function<void(int64_t)>& progress) {
  const int64_t ranks = group ? group->size() : 1, rank = group ? group->rank() : 0;
  // Items other ranks own stay 0 here; the sum over ranks then holds each item's one value.
  std::vector<double> values(static_cast<size_t>(n_items * width), 0.0);
  int64_t done = 0;
  for (int64_t i = rank; i < n_items; i += ranks) {
    compute(i, values.data() + i * width);
    if (progress) progress(++done);
  }
  if (ranks > 1 && !values.empty())
    group->allreduce_sum(
        TensorView::contiguous(values.data(), DType::F64, Device::CPU, {static_cast<int64_t>(values.size())}));
  return values;
}

}  // namespace rt::eval
