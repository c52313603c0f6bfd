#include "cli/prune_plan.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>

#include "rt/sdk/error.h"

namespace rt {

std::vector<int> parse_layer_indices(const std::string& text, const std::string& flag, int64_t n_layers) {
  auto trim = [](std::string t) {
    while (!t.empty() && std::isspace(static_cast<unsigned char>(t.front()))) t.erase(t.begin());
    while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
    return t;
  };
  std::string s = trim(text);
  if (!s.empty() && s.front() == '[' && s.back() == ']') s = trim(s.substr(1, s.size() - 2));
  const std::string range =
      n_layers >= 0 ? " (the model has " + std::to_string(n_layers) + " layers: 0.." + std::to_string(n_layers - 1) + ")"
                    : "";
  std::vector<int> out;
  if (s.empty()) return out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(',', start);
    if (end == std::string::npos) end = s.size();
    const std::string item = trim(s.substr(start, end - start));
    char* stop = nullptr;
    errno = 0;
    const long long v = item.empty() ? 0 : std::strtoll(item.c_str(), &stop, 10);
    RT_CHECK(!item.empty() && *stop == '\0' && errno == 0, flag, ": '", item,
             "' is not a layer index (expected 0-based indices separated by commas, e.g. 0,5,7)", range);
    RT_CHECK(v >= 0, flag, ": layer ", v, " is negative (layers are 0-based)", range);
    RT_CHECK(n_layers < 0 || v < n_layers, flag, ": layer ", v, " is out of range", range);
    RT_CHECK(std::find(out.begin(), out.end(), static_cast<int>(v)) == out.end(), flag, ": layer ", v,
             " is listed twice");
    out.push_back(static_cast<int>(v));
    start = end + 1;
  }
  std::sort(out.begin(), out.end());
  return out;
}

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
