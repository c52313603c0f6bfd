#include "loader/qwen2_weights.h"

#include <cstring>
#include <set>
#include <vector>

#include "rt/sdk/error.h"
#include "rt/sdk/half.h"

namespace rt {

namespace {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

bool allowed_dtype(StDType t) { return t == StDType::F32 || t == StDType::F16 || t == StDType::BF16; }

// Equal values (as torch.equal compares them after loading): the same bytes, or across dtypes the
// same floats, row by row to bound the memory.
bool same_values(const WeightInfo& a, const WeightInfo& b) {
  if (a.shape != b.shape || a.shape.size() != 2) return false;
  const auto da = a.sdk_dtype(), db = b.sdk_dtype();
  if (!da || !db) return false;
  if (a.dtype == b.dtype) return a.nbytes == b.nbytes && std::memcmp(a.data, b.data, a.nbytes) == 0;
  const auto cols = static_cast<size_t>(a.shape[1]);
  std::vector<float> ra(cols), rb(cols);
  std::vector<uint8_t> ba(cols * dtype_size(*da)), bb(cols * dtype_size(*db));
  for (int64_t r = 0; r < a.shape[0]; ++r) {
    std::memcpy(ba.data(), a.data + static_cast<size_t>(r) * ba.size(), ba.size());  // may be misaligned
    std::memcpy(bb.data(), b.data + static_cast<size_t>(r) * bb.size(), bb.size());
    convert_to_f32(ba.data(), *da, ra.data(), cols);
    convert_to_f32(bb.data(), *db, rb.data(), cols);
    if (ra != rb) return false;
  }
  return true;
}

}  // namespace

std::vector<ExpectedTensor> qwen2_expected_tensors(const HfConfig& c) {
  const int64_t d = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), ff = c.intermediate_size;
  std::vector<ExpectedTensor> out;
  out.reserve(4 + 12 * static_cast<size_t>(c.num_hidden_layers));
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, d}});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.push_back({p + "input_layernorm.weight", {d}});
    out.push_back({p + "self_attn.q_proj.weight", {q, d}});
    if (c.qkv_bias) out.push_back({p + "self_attn.q_proj.bias", {q}});
    out.push_back({p + "self_attn.k_proj.weight", {kv, d}});
    if (c.qkv_bias) out.push_back({p + "self_attn.k_proj.bias", {kv}});
    out.push_back({p + "self_attn.v_proj.weight", {kv, d}});
    if (c.qkv_bias) out.push_back({p + "self_attn.v_proj.bias", {kv}});
    out.push_back({p + "self_attn.o_proj.weight", {d, q}});
    if (c.qk_norm) {
      out.push_back({p + "self_attn.q_norm.weight", {c.head_dim}});
      out.push_back({p + "self_attn.k_norm.weight", {c.head_dim}});
    }
    out.push_back({p + "post_attention_layernorm.weight", {d}});
    out.push_back({p + "mlp.gate_proj.weight", {ff, d}});
    out.push_back({p + "mlp.up_proj.weight", {ff, d}});
    out.push_back({p + "mlp.down_proj.weight", {d, ff}});
  }
  out.push_back({"model.norm.weight", {d}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, d}});
  return out;
}

Qwen2WeightReport validate_qwen2_weights(const HfConfig& cfg, const WeightStore& weights) {
  constexpr size_t kMaxListed = 10;
  const std::vector<ExpectedTensor> expected = qwen2_expected_tensors(cfg);
  std::vector<std::string> problems;
  std::vector<std::string> missing;
  std::set<std::string> known;

  for (const ExpectedTensor& e : expected) {
    known.insert(e.name);
    const WeightInfo* w = weights.find(e.name);
    if (!w) {
      missing.push_back(e.name);
      continue;
    }
    if (w->shape != e.shape)
      problems.push_back(w->file + ": tensor \"" + e.name + "\" has shape " + shape_str(w->shape) +
                         " but config.json implies " + shape_str(e.shape));
    if (!allowed_dtype(w->dtype))
      problems.push_back(w->file + ": tensor \"" + e.name + "\" has dtype " + st_dtype_name(w->dtype) +
                         " (allowed: F32, F16, BF16)");
  }

  Qwen2WeightReport report;
  report.expected = expected.size();
  if (cfg.tie_word_embeddings) {
    // Some tied checkpoints still store lm_head.weight (a copy of the embedding); tied models
    // never read it, so it is neither checked nor counted as a plugin parameter.
    known.insert("lm_head.weight");
    report.lm_head_ignored = weights.contains("lm_head.weight");
  }
  for (const auto& [name, w] : weights.all())
    if (!known.count(name)) report.extra_names.push_back(name);
  report.extra = report.extra_names.size();

  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < kMaxListed; ++i) list += (i ? ", " : "") + missing[i];
    if (missing.size() > kMaxListed) list += ", ... (" + std::to_string(missing.size() - kMaxListed) + " more)";
    problems.insert(problems.begin(), std::to_string(missing.size()) + " missing tensor(s): " + list +
                                          " (searched: " + weights.files_searched() + ")");
  }
  if (!problems.empty()) {
    std::string msg = "weights do not match " + cfg.source + " (" + std::to_string(problems.size()) +
                      " problem(s)):";
    for (size_t i = 0; i < problems.size() && i < kMaxListed; ++i) msg += "\n  " + problems[i];
    if (problems.size() > kMaxListed)
      msg += "\n  ... and " + std::to_string(problems.size() - kMaxListed) + " more";
    fail(msg);
  }
  return report;
}

std::string reconcile_tied_head(HfConfig& cfg, WeightStore& weights) {
  if (!cfg.tie_word_embeddings) return "";
  const WeightInfo* head = weights.find("lm_head.weight");
  const WeightInfo* embed = weights.find("model.embed_tokens.weight");
  if (head && !embed) {
    weights.rename("lm_head.weight", "model.embed_tokens.weight");
    return "";
  }
  if (!head || !embed || head->shape != embed->shape || same_values(*head, *embed)) return "";
  cfg.tie_word_embeddings = false;
  cfg.raw["tie_word_embeddings"] = false;
  return cfg.source + " says tie_word_embeddings, but " + head->file +
         " stores lm_head.weight with values other than model.embed_tokens.weight: running untied with the stored "
         "head, as transformers does (set tie_word_embeddings to false in the config to silence this)";
}

}  // namespace rt
