// What a plugin sees of training: where its parameters' gradients go, what the step is, and
// where it reports routing statistics. The runtime owns the optimizer, the loss and the data.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "rt/sdk/tensor.h"

namespace rt {

// Gradient buffers of one layer's parameters, by layer-relative name ("self_attn.q_proj.weight",
// "router.weight"). Backward adds (+=) into them. A frozen parameter's gradient is an empty view
// (data == nullptr): pass it to a backward op as is and that part is skipped.
class LayerGrads {
 public:
  virtual ~LayerGrads() = default;
  virtual TensorView get(const std::string& name) const = 0;
};

// Routing statistics of one layer, summed over a step's forwards. Host-side counts.
struct LayerRouteCounts {
  int64_t tokens = 0;        // decisions made
  int64_t forced_local = 0;  // of which forced to d = 0 by force_local
  int64_t leaked = 0;        // forwards of this layer whose global attention ran for every token (leak)
};

struct TrainContext {
  int64_t step = 1;          // optimizer step, 1-based
  int64_t total_steps = 1;
  int64_t warmup_steps = 0;
  // This forward's share of the batch mean: 1 / (sequences per optimizer step). Loss terms a
  // plugin adds (the sparsity regularizer) are scaled by it, as the runtime scales the LM loss.
  float loss_scale = 1.f;
  // L2A leak (DESIGN.md section 4): on a leak, a layer's global attention runs for every token so
  // that unrouted tokens' gates get a task-loss gradient. Routed plugins draw one Bernoulli(leak_prob)
  // per layer and forward from (seed, step, micro, layer), so a resumed run draws the same ones (and a
  // recomputed forward, under gradient checkpointing, the same as the first). leak = true forces it
  // on every layer (tests).
  bool leak = false;
  uint64_t seed = 0;   // the run's seed
  int64_t micro = 0;   // index of this forward (sequence) within the optimizer step
  // [n_layers, 2] accum dtype on the device, added to (+=) by routed plugins: column 0 the
  // regularizer's contribution to the loss (already scaled by lambda, the norm and loss_scale),
  // column 1 the number of tokens routed global (sum of d). Empty for non-routed runs.
  TensorView route_stats;
  LayerRouteCounts* route_counts = nullptr;  // [n_layers], or null
};

// What a plugin's forward_train keeps for its backward. Each plugin derives its own.
class SavedActivations {
 public:
  virtual ~SavedActivations() = default;
};

}  // namespace rt
