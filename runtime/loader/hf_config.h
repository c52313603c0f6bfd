// Hugging Face config.json for the Qwen2 family: Qwen2 / Qwen2.5 ("qwen2"), Qwen3 ("qwen3": QK-norm,
// no qkv bias, head_dim from the file) and the official L2A release on Qwen3 ("l2a_qwen3",
// awslabs/hybrid-model-factory). Reads both the transformers-4 layout (top-level "rope_theta",
// "torch_dtype") and the transformers-5 layout ("rope_parameters": {"rope_theta", "rope_type"},
// "dtype", "layer_types").
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace rt {

struct HfConfig {
  std::string model_type;  // "qwen2", "qwen3" or "l2a_qwen3"
  bool qk_norm = false;    // Qwen3: self_attn.q_norm / k_norm over head_dim before RoPE
  bool qkv_bias = true;    // Qwen2: q/k/v projections have biases; Qwen3: attention_bias (false)
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // defaults to num_attention_heads
  int64_t head_dim = 0;             // defaults to hidden_size / num_attention_heads (Qwen3: 128)
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 32768;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;  // Qwen2Config's default
  bool use_sliding_window = false;
  // Effective window, as transformers computes it: the file's "sliding_window" when
  // use_sliding_window is true, else 0 (= none; Qwen2.5 files carry a window they do not use).
  int64_t sliding_window = 0;
  int64_t max_window_layers = 28;
  // One entry per layer, "full_attention" or "sliding_attention": from the file, or derived as
  // transformers does (sliding from layer max_window_layers on when a window is in effect).
  std::vector<std::string> layer_types;
  std::string hidden_act = "silu";
  std::string torch_dtype;  // "bfloat16", "float32", ... ("torch_dtype" or "dtype"); "" if absent
  std::optional<int64_t> bos_token_id, eos_token_id;  // eos: first entry when the file has a list
  // l2a_qwen3 (the official release): its router settings, and the L2A section the runtime's own
  // L2A backends read ("l2a": layout paper, window, tau, threshold), which parsing adds to raw.
  struct OfficialL2a {
    int64_t sliding_window = 0;  // the local window W (keys including the query)
    double sigmoid_temp = 1.0;   // tau
    double sigmoid_threshold = 0.5;
  };
  std::optional<OfficialL2a> official_l2a;
  nlohmann::json raw;  // the whole file, for sections other parts read (e.g. "l2a")
  std::string source;  // where it came from (file path), for error messages downstream

  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
};

// Reads and validates `config_json`. Every error names the file and the field at fault.
HfConfig parse_hf_config(const std::filesystem::path& config_json);
// Same from text; `what` names the source in errors.
HfConfig parse_hf_config_text(const std::string& text, const std::string& what);

}  // namespace rt
