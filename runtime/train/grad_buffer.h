// The gradients of a set of parameters as one contiguous device buffer (accum dtype) with a view
// per parameter, laid out in the order backpropagation finishes them (lm_head and the final norm,
// the layers from the last to the first, the embedding): zeroed in one fill, and summed over
// data-parallel ranks in a few large collectives, which can start while the backward still runs
// (OverlappedGradSum). The optimizer and `runtime profile`'s training rows use it.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "model/qwen2_model.h"

namespace rt {
namespace dist {
class ProcessGroup;
}

// The order backpropagation produces gradients in: lm_head, the final norm, the layers from the
// last to the first, the embedding (within a layer by name, except that the q, k, v projections
// come in that order: their gradients form the stacked matrix project_qkv_backward fills at once).
bool backward_less(const std::string& a, const std::string& b);

class GradBuffer {
 public:
  GradBuffer() = default;
  // One gradient per name, shaped like model.parameter(name); each view starts on a 256-byte
  // boundary (the device kernels' vector loads), the padding stays zero.
  GradBuffer(Ops& ops, const Qwen2Model& model, const std::vector<std::string>& names);
  const Qwen2Model::GradMap& grads() const { return grads_; }
  TensorView buffer() const { return buffer_.view; }
  void zero(Ops& ops);
  // Every rank ends with the sum over ranks, in buckets of `bucket` elements (16M: 64 MB in f32).
  static constexpr int64_t kBucket = int64_t{1} << 24;
  void sum_over_ranks(dist::ProcessGroup& group, int64_t bucket = kBucket) const;
  // Elements [0, final_after(stage)) no longer change once the backward has finished `stage`
  // (Qwen2Model::train_sequence's grads_final: n_layers for the head, then each layer, -1 for the
  // embedding, i.e. everything).
  int64_t final_after(int stage) const;

 private:
  Tensor buffer_;
  Qwen2Model::GradMap grads_;
  std::map<int, int64_t> final_after_;  // stage -> prefix length
};

// Sums a GradBuffer over the ranks while the backward runs: the backward reports each stage it
// finishes (stage_done, from train_sequence's grads_final hook), and a thread sums the buffer's
// finished prefix in buckets meanwhile. finish() waits for the rest and rethrows a collective's
// error. For host-synchronous compute (the CPU backend): a finished stage's gradients are in memory.
class OverlappedGradSum {
 public:
  // The same buckets as GradBuffer::sum_over_ranks(group, bucket), hence the same sums.
  OverlappedGradSum(const GradBuffer& buffer, dist::ProcessGroup& group, int64_t bucket = GradBuffer::kBucket);
  ~OverlappedGradSum();
  OverlappedGradSum(const OverlappedGradSum&) = delete;
  OverlappedGradSum& operator=(const OverlappedGradSum&) = delete;
  void stage_done(int stage);
  void finish();

 private:
  void run();

  const GradBuffer& buffer_;
  dist::ProcessGroup& group_;
  int64_t bucket_;
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t ready_ = 0;  // elements the backward has finished
  bool all_ready_ = false, done_ = false, abandoned_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace rt
