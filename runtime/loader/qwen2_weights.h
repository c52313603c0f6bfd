// The tensors a Qwen2 checkpoint must hold (Hugging Face names and shapes, derived from
// config.json), and the check that a WeightStore matches them before the model touches any byte.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "loader/hf_config.h"
#include "loader/weight_store.h"

namespace rt {

struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
};

// In model order: embed_tokens; per layer input_layernorm, q/k/v (weight, and bias for Qwen2), o_proj,
// q_norm/k_norm (Qwen3), post_attention_layernorm, gate/up/down; model.norm; lm_head unless
// tie_word_embeddings.
std::vector<ExpectedTensor> qwen2_expected_tensors(const HfConfig& cfg);

struct Qwen2WeightReport {
  size_t expected = 0;                   // tensors checked
  size_t extra = 0;                      // tensors the base model does not use
  std::vector<std::string> extra_names;  // their names (sorted), e.g. plugin parameters
  bool lm_head_ignored = false;          // tied model whose file still has lm_head.weight
};

// Every expected tensor must be present with exactly the shape the config implies and dtype
// F32, F16 or BF16. All problems are collected and reported in one rt::Error (first ones
// listed), each naming the tensor, the file, expected and found. Extra tensors are not an error
// (plugins add parameters); they are counted in the report.
Qwen2WeightReport validate_qwen2_weights(const HfConfig& cfg, const WeightStore& weights);

// Ties the output head to the embedding as transformers' from_pretrained does when the config says
// tie_word_embeddings: a checkpoint that stores only lm_head.weight has it read as the embedding
// too; one that stores both with different values is run untied (cfg.tie_word_embeddings and its
// raw JSON set to false), the stored head used. Returns a warning for the user in that case, else
// an empty string. Call before validate_qwen2_weights.
std::string reconcile_tied_head(HfConfig& cfg, WeightStore& weights);

}  // namespace rt
