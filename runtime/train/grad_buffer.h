// The gradients of a set of parameters as one contiguous device buffer (accum dtype) with a view
// per parameter: zeroed in one fill, and summed over data-parallel ranks in a few large collectives
// (buckets of the buffer) instead of one per tensor. The optimizer and `runtime profile`'s
// training rows use it.
#pragma once

#include <string>
#include <vector>

#include "model/qwen2_model.h"

namespace rt {
namespace dist {
class ProcessGroup;
}

class GradBuffer {
 public:
  GradBuffer() = default;
  // One gradient per name, shaped like model.parameter(name), in the order given; each view
  // starts on a 256-byte boundary (the device kernels' vector loads), the padding stays zero.
  GradBuffer(Ops& ops, const Qwen2Model& model, const std::vector<std::string>& names);
  const Qwen2Model::GradMap& grads() const { return grads_; }
  TensorView buffer() const { return buffer_.view; }
  void zero(Ops& ops);
  // Every rank ends with the sum over ranks, in buckets of 16M elements (64 MB in f32).
  void sum_over_ranks(dist::ProcessGroup& group) const;

 private:
  Tensor buffer_;
  Qwen2Model::GradMap grads_;
};

}  // namespace rt
