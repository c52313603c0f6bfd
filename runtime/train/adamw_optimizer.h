// AdamW over the trainable parameters of a Qwen2Model: fp32 master weights and moments (accum
// dtype), gradient buffers, global grad-norm clipping. The model's own parameters (bf16 on CUDA)
// receive the rounded master after every step.
#pragma once

#include <map>
#include <optional>
#include <unordered_map>
#include <string>
#include <vector>

#include "model/qwen2_model.h"
#include "train/checkpoint.h"
#include "train/grad_buffer.h"

namespace rt {
namespace dist {
class ProcessGroup;
}

struct AdamWSettings {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

class AdamWOptimizer {
 public:
  // Weight decay applies to matrices only (parameters of 2 or more dimensions), not to norm
  // weights and biases.
  // shard (ZeRO-1): the ranks of a data-parallel run among which the optimizer state is split; each
  // tensor's master and moments live on one rank (its owner, by balanced size), which updates the
  // parameter and broadcasts it. Null: every rank holds everything.
  AdamWOptimizer(Ops& ops, Qwen2Model& model, std::vector<std::string> trainable, AdamWSettings settings,
                 dist::ProcessGroup* shard = nullptr);

  const std::vector<std::string>& trainable() const { return names_; }
  int64_t trainable_count() const;  // elements
  const Qwen2Model::GradMap& grads() const { return grads_.grads(); }
  // Every gradient in one buffer, in the order of trainable() (what data parallelism sums).
  const GradBuffer& grad_buffer() const { return grads_; }
  // The fp32 master of a parameter whose state this rank holds (every one, unless sharded).
  TensorView master(const std::string& name) const { return slots_.at(name).master.view; }
  // Bytes of optimizer state (masters and moments) held by this rank.
  size_t state_bytes() const;
  bool sharded() const { return shard_ != nullptr; }
  void zero_grad();
  // L2 norm of all gradients together (one device reduction, read back).
  double grad_norm();
  // The first trainable parameter whose gradient holds a NaN or Inf, in a fixed order: the one
  // backpropagation produces them in (lm_head, final norm, layers from the last to the first, the
  // embedding; within a layer by name), so the tensor named is where the non-finite value
  // appeared. With the first bad element's index and value; or, where every element is finite but
  // the sum of their squares overflows float (so the global grad norm is inf), its largest
  // element, with norm_overflow set. nullopt when every gradient and its norm are finite. Reads the
  // gradients back to the host: for the skipped-step path only.
  struct NonFinite {
    std::string name;
    int64_t index = 0;
    float value = 0;
    bool norm_overflow = false;
  };
  std::optional<NonFinite> first_nonfinite_grad() const;
  // One step at learning rate lr (t: 1-based step for bias correction), gradients scaled by
  // grad_scale first (clipping).
  void step(double lr, int64_t t, double grad_scale);

  // Master weights and moments as host f32, for checkpoints: "<name>", "<name>.exp_avg",
  // "<name>.exp_avg_sq". Sharded: a collective (every rank calls it; each gets all of it).
  std::vector<NamedHostTensor> state() const;
  // The fp32 master of every trainable parameter as host floats (the export). Sharded: a collective.
  std::map<std::string, std::vector<float>> masters() const;
  // Restores what state() returned (every tensor must be present with its shape) and writes the
  // masters into the model.
  void load_state(const std::vector<NamedHostTensor>& tensors);

 private:
  GradBuffer grads_;
  dist::ProcessGroup* shard_ = nullptr;
  std::unordered_map<std::string, int> owner_;  // sharded: the rank holding each tensor's state
  bool mine(const std::string& name) const;
  // A parameter-shaped f32 [numel] view of `what` of `name` (0 master, 1 m, 2 v) as host floats, from
  // its owner (sharded: a broadcast every rank takes part in).
  std::vector<float> gather(const std::string& name, int what) const;
  struct Slot {
    Tensor master, m, v;
    bool decay = false;
  };
  Ops& ops_;
  Qwen2Model& model_;
  std::vector<std::string> names_;
  AdamWSettings settings_;
  std::unordered_map<std::string, Slot> slots_;
};

// The parameters a regime trains (DESIGN.md section 4), from all of the model's names:
//   router_only  router weights;  attention  routers + every attention projection + every RMSNorm;
//   full         everything.
// Throws when the regime trains nothing with this attention backend (e.g. router_only without a
// router).
std::vector<std::string> trainable_parameters(const std::string& regime, const std::vector<std::string>& names,
                                              const std::string& attention);

}  // namespace rt
