#include "loader/l2a_official.h"

#include "rt/sdk/error.h"

namespace rt {

namespace {

constexpr size_t kMaxListed = 8;
constexpr const char* kLayers = "model.layers.";

// "model.layers.N." and the rest, or false when `name` is not a per-layer tensor.
bool split_layer(const std::string& name, std::string& prefix, std::string& rest) {
  if (name.rfind(kLayers, 0) != 0) return false;
  const size_t dot = name.find('.', std::char_traits<char>::length(kLayers));
  if (dot == std::string::npos || dot == std::char_traits<char>::length(kLayers)) return false;
  prefix = name.substr(0, dot + 1);
  rest = name.substr(dot + 1);
  return true;
}

std::string translate(const std::string& name, bool to_ours) {
  std::string prefix, rest;
  if (!split_layer(name, prefix, rest)) return name;
  for (const L2aNamePair& p : l2a_official_name_table())
    if (rest == (to_ours ? p.official : p.ours)) return prefix + (to_ours ? p.ours : p.official);
  return name;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string listed(const std::vector<std::string>& items) {
  std::string s;
  for (size_t i = 0; i < items.size() && i < kMaxListed; ++i) s += (i ? ", " : "") + items[i];
  if (items.size() > kMaxListed) s += ", ... (" + std::to_string(items.size() - kMaxListed) + " more)";
  return s;
}

}  // namespace

const std::vector<L2aNamePair>& l2a_official_name_table() {
  static const std::vector<L2aNamePair> table = {
      {"input_layernorm_global.weight", "global_layernorm.weight"},
      {"self_attn.q_proj_global.weight", "global_attn.q_proj.weight"},
      {"self_attn.k_proj_global.weight", "global_attn.k_proj.weight"},
      {"self_attn.v_proj_global.weight", "global_attn.v_proj.weight"},
      {"self_attn.o_proj_global.weight", "global_attn.o_proj.weight"},
      {"self_attn.q_norm_global.weight", "global_attn.q_norm.weight"},
      {"self_attn.k_norm_global.weight", "global_attn.k_norm.weight"},
      {"self_attn.sigmoid_linear.weight", "router.weight"},
  };
  return table;
}

std::string l2a_official_to_ours(const std::string& name) { return translate(name, true); }
std::string l2a_ours_to_official(const std::string& name) { return translate(name, false); }

std::vector<L2aOfficialTensor> l2a_official_expected(const HfConfig& c) {
  const int64_t d = c.hidden_size, q = c.q_dim(), kv = c.kv_dim();
  const std::vector<std::vector<int64_t>> shapes = {{d}, {q, d}, {kv, d}, {kv, d}, {d, q}, {c.head_dim}, {c.head_dim}, {1, d}};
  const auto& table = l2a_official_name_table();
  RT_CHECK(shapes.size() == table.size(), "l2a_official: name table and shapes out of step");
  std::vector<L2aOfficialTensor> out;
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer)
    for (size_t i = 0; i < table.size(); ++i)
      out.push_back({kLayers + std::to_string(layer) + "." + table[i].official, shapes[i]});
  return out;
}

void adopt_official_l2a_names(const HfConfig& config, WeightStore& store) {
  if (!config.official_l2a) return;
  const std::string files = store.files_searched();
  std::vector<std::string> missing, problems;
  std::vector<std::pair<std::string, std::string>> renames;
  for (const L2aOfficialTensor& e : l2a_official_expected(config)) {
    const std::string ours = l2a_official_to_ours(e.name);
    const WeightInfo* official = store.find(e.name);
    const WeightInfo* mine = store.find(ours);
    if (official && mine) {
      problems.push_back(official->file + ": holds both \"" + e.name + "\" and \"" + ours +
                         "\" (the same tensor under the official and this runtime's name)");
      continue;
    }
    const WeightInfo* w = official ? official : mine;
    if (!w) {
      missing.push_back(e.name);
      continue;
    }
    if (w->shape != e.shape)
      problems.push_back(w->file + ": tensor \"" + w->name + "\" has shape " + shape_str(w->shape) + " but " +
                         config.source + " implies " + shape_str(e.shape) +
                         (ours.size() >= 14 && ours.compare(ours.size() - 14, 14, ".router.weight") == 0
                              ? " (the router sigmoid_linear: one logit per token, no bias)"
                              : ""));
    if (official) renames.emplace_back(e.name, ours);
  }
  // A router bias would shift every decision; hidden_linearproj has none, so it cannot be ignored.
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    const std::string bias = kLayers + std::to_string(layer) + ".self_attn.sigmoid_linear.bias";
    if (const WeightInfo* b = store.find(bias))
      problems.push_back(b->file + ": tensor \"" + bias + "\" is a router bias, which the official router " +
                         "(sig_input_type hidden_linearproj, sigmoid_linear) does not have");
  }
  if (!missing.empty())
    fail(config.source, " is an official L2A model (model_type l2a_qwen3), but its weights lack ", missing.size(),
         " global-attention/router tensor(s): ", listed(missing), " (searched: ", files, ")");
  if (!problems.empty())
    fail(problems.front(), problems.size() > 1 ? " (and " + std::to_string(problems.size() - 1) + " more problem(s))" : "");
  for (const auto& [from, to] : renames) store.rename(from, to);
}

}  // namespace rt
