// Helpers for the loader tests: raw safetensors images (for malformed files) and tiny Qwen2
// checkpoints (temp dirs and error-message assertions: test_util.h). No Python needed at test time.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "loader/safetensors_writer.h"
#include "rt/sdk/error.h"
#include "test_util.h"

namespace rt::test {

namespace fs = std::filesystem;

// [u64 LE length][header][data_bytes bytes of a counting pattern]. `length` overrides the
// prefix (to lie about the header size).
inline std::vector<uint8_t> raw_safetensors(const std::string& header, size_t data_bytes,
                                            std::optional<uint64_t> length = std::nullopt) {
  const uint64_t n = length.value_or(header.size());
  std::vector<uint8_t> out(8 + header.size() + data_bytes);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  std::memcpy(out.data() + 8, header.data(), header.size());
  for (size_t i = 0; i < data_bytes; ++i) out[8 + header.size() + i] = static_cast<uint8_t>(i);
  return out;
}

// Deterministic pseudo-random values, never constant.
inline std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::vector<float> v(n);
  uint32_t s = seed * 2654435761u + 1;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<float>(static_cast<int32_t>(s >> 8) - (1 << 23)) / static_cast<float>(1 << 23);
  }
  return v;
}

struct TinyQwen2 {
  int64_t hidden = 8, intermediate = 12, layers = 2, heads = 4, kv_heads = 2, vocab = 16;
  bool tied = false;

  std::string config_json(const std::string& extra = "") const {
    return std::string("{\"model_type\": \"qwen2\", \"hidden_size\": ") + std::to_string(hidden) +
           ", \"intermediate_size\": " + std::to_string(intermediate) +
           ", \"num_hidden_layers\": " + std::to_string(layers) +
           ", \"num_attention_heads\": " + std::to_string(heads) +
           ", \"num_key_value_heads\": " + std::to_string(kv_heads) +
           ", \"vocab_size\": " + std::to_string(vocab) + ", \"rms_norm_eps\": 1e-6" +
           ", \"rope_theta\": 1000000.0, \"tie_word_embeddings\": " + (tied ? "true" : "false") +
           extra + "}";
  }
};

// Float32 tensors with deterministic contents, for writing valid files.
struct TensorSet {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<std::vector<uint8_t>> data;
  std::vector<StDType> dtypes;

  void add(const std::string& name, std::vector<int64_t> shape, StDType dtype = StDType::F32) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<uint8_t> bytes(static_cast<size_t>(n) * st_dtype_bits(dtype) / 8);
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7 + names.size());
    names.push_back(name);
    shapes.push_back(std::move(shape));
    data.push_back(std::move(bytes));
    dtypes.push_back(dtype);
  }
  // Adds tensor `name` as a copy of tensor `of` (same dtype, shape and bytes).
  void add_copy(const std::string& name, const std::string& of) {
    for (size_t i = 0; i < names.size(); ++i)
      if (names[i] == of) {
        names.push_back(name);
        shapes.push_back(shapes[i]);
        data.push_back(data[i]);
        dtypes.push_back(dtypes[i]);
        return;
      }
    throw std::runtime_error("TensorSet::add_copy: no " + of);
  }
  void remove(const std::string& name) {
    for (size_t i = 0; i < names.size(); ++i)
      if (names[i] == name) {
        names.erase(names.begin() + i);
        shapes.erase(shapes.begin() + i);
        data.erase(data.begin() + i);
        dtypes.erase(dtypes.begin() + i);
        return;
      }
    throw std::runtime_error("TensorSet::remove: no " + name);
  }
  std::vector<StWriteTensor> view(const std::function<bool(const std::string&)>& keep = {}) const {
    std::vector<StWriteTensor> out;
    for (size_t i = 0; i < names.size(); ++i)
      if (!keep || keep(names[i]))
        out.push_back({names[i], dtypes[i], shapes[i], data[i].data(), data[i].size()});
    return out;
  }
  void save(const fs::path& p, const std::function<bool(const std::string&)>& keep = {}) const {
    fs::create_directories(p.parent_path());
    save_safetensors(p, view(keep));
  }
};

// The tensors of TinyQwen2 `m`, all in `dtype`.
inline TensorSet qwen2_tensors(const TinyQwen2& m, StDType dtype = StDType::BF16) {
  TensorSet s;
  const int64_t hd = m.hidden / m.heads, q = m.heads * hd, kv = m.kv_heads * hd;
  s.add("model.embed_tokens.weight", {m.vocab, m.hidden}, dtype);
  for (int64_t i = 0; i < m.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    s.add(p + "input_layernorm.weight", {m.hidden}, dtype);
    s.add(p + "self_attn.q_proj.weight", {q, m.hidden}, dtype);
    s.add(p + "self_attn.q_proj.bias", {q}, dtype);
    s.add(p + "self_attn.k_proj.weight", {kv, m.hidden}, dtype);
    s.add(p + "self_attn.k_proj.bias", {kv}, dtype);
    s.add(p + "self_attn.v_proj.weight", {kv, m.hidden}, dtype);
    s.add(p + "self_attn.v_proj.bias", {kv}, dtype);
    s.add(p + "self_attn.o_proj.weight", {m.hidden, q}, dtype);
    s.add(p + "post_attention_layernorm.weight", {m.hidden}, dtype);
    s.add(p + "mlp.gate_proj.weight", {m.intermediate, m.hidden}, dtype);
    s.add(p + "mlp.up_proj.weight", {m.intermediate, m.hidden}, dtype);
    s.add(p + "mlp.down_proj.weight", {m.hidden, m.intermediate}, dtype);
  }
  s.add("model.norm.weight", {m.hidden}, dtype);
  if (!m.tied) s.add("lm_head.weight", {m.vocab, m.hidden}, dtype);
  return s;
}

}  // namespace rt::test
