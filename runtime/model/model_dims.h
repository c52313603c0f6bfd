// HfConfig -> ModelDims, the numbers the SDK hands to plugins.
#pragma once

#include "loader/hf_config.h"
#include "rt/sdk/attention_backend.h"

namespace rt {

inline ModelDims dims_from_config(const HfConfig& c) {
  ModelDims d;
  d.hidden = c.hidden_size;
  d.n_layers = c.num_hidden_layers;
  d.n_heads = c.num_attention_heads;
  d.n_kv_heads = c.num_key_value_heads;
  d.head_dim = c.head_dim;
  d.intermediate = c.intermediate_size;
  d.vocab = c.vocab_size;
  d.max_positions = c.max_position_embeddings;
  d.rope_theta = c.rope_theta;
  d.rms_eps = static_cast<float>(c.rms_norm_eps);
  d.qk_norm = c.qk_norm;
  d.qkv_bias = c.qkv_bias;
  return d;
}

}  // namespace rt
