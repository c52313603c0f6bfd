// What `runtime prune` and `runtime sparsity` share about pruned L2A layers: which layers a model
// has pruned (its "pruned_layers" option, from config.json's "l2a" section or --set), layer lists
// on the command line, and the KV-cache bytes of a model with a given set of pruned layers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cli/model_session.h"

namespace rt {

// Layer lists on the command line: rt::parse_layer_indices (sdk/include/rt/sdk/options.h), the one
// parser the L2A plugins use for their pruned_layers option too.

// The session's pruned layers (its backend's "pruned_layers" option), sorted; empty when none.
std::vector<int> pruned_layers_of(const ModelSession& session);

// KV-cache bytes of one sequence of T tokens with every cache in `dtype_bytes` per element, as the
// L2A plugins allocate them (plugins/l2a_common/l2a_layer.h, L2aBackendBase::new_state): per layer
// K and V [rows, Hkv, D], rows = T for the global cache (unpruned layers), min(T, W) for the local
// ring (paper layout, and every pruned layer).
struct L2aKvShape {
  int64_t n_layers = 0, kv_heads = 0, head_dim = 0, window = 0;
  bool paper = true;
};
L2aKvShape l2a_kv_shape(const ModelSession& session);
double l2a_kv_bytes(const L2aKvShape& s, const std::vector<int>& pruned, int64_t T, double dtype_bytes);

// The real bytes of new_states(T) of the session's model (every layer's AttentionState::kv_bytes).
size_t model_kv_bytes(ModelSession& session, int64_t T);

}  // namespace rt
