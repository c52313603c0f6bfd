#include "cli/prune_plan.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>

#include "rt/sdk/error.h"

namespace rt {

std::vector<int> pruned_layers_of(const ModelSession& session) {
  const Options& o = session.attention_options;
  if (!o.has("pruned_layers")) return {};
  return parse_layer_indices(o.get_string("pruned_layers", ""), "pruned_layers", session.model->dims().n_layers);
}

L2aKvShape l2a_kv_shape(const ModelSession& session) {
  const ModelDims& d = session.model->dims();
  L2aKvShape s;
  s.n_layers = d.n_layers;
  s.kv_heads = d.n_kv_heads;
  s.head_dim = d.head_dim;
  s.window = session.attention_options.get_int("window", 0);
  s.paper = session.attention_options.get_string("layout", "paper") == "paper";
  return s;
}

double l2a_kv_bytes(const L2aKvShape& s, const std::vector<int>& pruned, int64_t T, double dtype_bytes) {
  const double row = 2.0 * static_cast<double>(s.kv_heads * s.head_dim) * dtype_bytes;  // K and V of one token
  const double ring = static_cast<double>(std::min(T, s.window));
  double rows = 0;
  for (int64_t l = 0; l < s.n_layers; ++l) {
    const bool is_pruned = std::binary_search(pruned.begin(), pruned.end(), static_cast<int>(l));
    if (!is_pruned) rows += static_cast<double>(T);
    if (s.paper || is_pruned) rows += ring;
  }
  return rows * row;
}

size_t model_kv_bytes(ModelSession& session, int64_t T) {
  size_t n = 0;
  for (const auto& st : session.model->new_states(T)) n += st->kv_bytes();
  return n;
}

}  // namespace rt
