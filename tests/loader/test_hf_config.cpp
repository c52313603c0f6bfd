// config.json parsing: both transformers layouts, defaults, the shipped presets, and one test
// per kind of bad input.
#include "loader/hf_config.h"
#include "loader_test_util.h"

namespace rt::test {
namespace {

const std::string kWhat = "cfg/config.json";

std::string cfg_error(const std::string& text) {
  return error_of([&] { parse_hf_config_text(text, kWhat); });
}

// A complete transformers-4 style config with `key` replaced by `value` (or removed if empty).
std::string with(const std::string& key, const std::string& value) {
  nlohmann::json j = nlohmann::json::parse(TinyQwen2{}.config_json());
  if (value.empty())
    j.erase(key);
  else
    j[key] = nlohmann::json::parse(value);
  return j.dump();
}

TEST(HfConfig, Transformers4Style) {
  TinyQwen2 m;
  auto c = parse_hf_config_text(m.config_json(", \"torch_dtype\": \"bfloat16\", \"eos_token_id\": 3"), kWhat);
  EXPECT_EQ(c.model_type, "qwen2");
  EXPECT_EQ(c.hidden_size, 8);
  EXPECT_EQ(c.intermediate_size, 12);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 2);
  EXPECT_EQ(c.vocab_size, 16);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.eos_token_id, 3);
  EXPECT_FALSE(c.bos_token_id.has_value());
  EXPECT_EQ(c.layer_types, (std::vector<std::string>{"full_attention", "full_attention"}));
  EXPECT_EQ(c.source, kWhat);
  EXPECT_EQ(c.raw["rope_theta"].get<double>(), 1e6);
}

TEST(HfConfig, Transformers5Style) {
  // What transformers 5 save_pretrained writes for a Qwen2Config.
  const std::string text = R"({
    "attention_dropout": 0.0, "bos_token_id": null, "eos_token_id": null, "hidden_act": "silu",
    "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128,
    "layer_types": ["full_attention", "full_attention"], "max_position_embeddings": 32768,
    "max_window_layers": 28, "model_type": "qwen2", "num_attention_heads": 4,
    "num_hidden_layers": 2, "num_key_value_heads": 2, "pad_token_id": null, "rms_norm_eps": 1e-06,
    "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
    "sliding_window": null, "tie_word_embeddings": true, "transformers_version": "5.23.0",
    "use_cache": true, "use_sliding_window": false, "vocab_size": 100, "dtype": "float32"})";
  auto c = parse_hf_config_text(text, kWhat);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, "float32");
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_FALSE(c.eos_token_id.has_value());
  EXPECT_EQ(c.sliding_window, 0);
}

TEST(HfConfig, Defaults) {
  auto c = parse_hf_config_text(with("rope_theta", ""), kWhat);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  c = parse_hf_config_text(with("num_key_value_heads", ""), kWhat);
  EXPECT_EQ(c.num_key_value_heads, c.num_attention_heads);
  c = parse_hf_config_text(with("tie_word_embeddings", ""), kWhat);
  EXPECT_FALSE(c.tie_word_embeddings);  // Qwen2Config's default
  c = parse_hf_config_text(with("head_dim", "6"), kWhat);
  EXPECT_EQ(c.head_dim, 6);
  EXPECT_EQ(c.q_dim(), 24);
  c = parse_hf_config_text(with("eos_token_id", "[7, 9]"), kWhat);
  EXPECT_EQ(c.eos_token_id, 7);
  c = parse_hf_config_text(with("rope_scaling", "null"), kWhat);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  // An end-of-text id past the vocabulary (a tiny model keeping the real model's ids), as
  // transformers accepts it: it is simply never generated.
  c = parse_hf_config_text(with("hidden_act", "\"swish\""), kWhat);  // transformers' name for silu too
  EXPECT_EQ(c.hidden_act, "silu");
  c = parse_hf_config_text(with("eos_token_id", "151643"), kWhat);
  EXPECT_EQ(c.eos_token_id, 151643);
}

// transformers 5 reads the RoPE dict from a non-empty rope_scaling in place of rope_parameters,
// its theta defaulting to the top-level rope_theta: the theta used is the one transformers uses.
TEST(HfConfig, RopeThetaPrecedence) {
  auto only = [](const std::string& extra) {
    nlohmann::json j = nlohmann::json::parse(TinyQwen2{}.config_json());
    j.erase("rope_theta");
    j.erase("rope_parameters");
    j.erase("rope_scaling");
    const nlohmann::json add = nlohmann::json::parse(extra);
    for (const auto& [k, v] : add.items()) j[k] = v;
    return j.dump();
  };
  EXPECT_DOUBLE_EQ(parse_hf_config_text(only(R"({"rope_scaling": {"rope_type": "default", "rope_theta": 5e6}})"),
                                        kWhat).rope_theta, 5e6);
  EXPECT_DOUBLE_EQ(parse_hf_config_text(only(R"({"rope_scaling": {"type": "default"}, "rope_theta": 3e5})"),
                                        kWhat).rope_theta, 3e5);
  EXPECT_DOUBLE_EQ(parse_hf_config_text(only(R"({"rope_scaling": {}, "rope_parameters": {"rope_theta": 2e5}})"),
                                        kWhat).rope_theta, 2e5);  // an empty rope_scaling is not used
  EXPECT_DOUBLE_EQ(parse_hf_config_text(only(R"({"rope_scaling": {"rope_type": "default"}})"), kWhat).rope_theta,
                   1e4);
  EXPECT_HAS(cfg_error(only(R"({"rope_theta": 5e6, "rope_scaling": {"rope_type": "default", "rope_theta": 1e4}})")),
             "rope_theta (5e+06) and rope_scaling.rope_theta (10000) disagree");
  EXPECT_HAS(cfg_error(only(R"({"rope_parameters": {"rope_theta": 5e6}, "rope_scaling": {"rope_theta": 1e4}})")),
             "rope_parameters.rope_theta (5e+06) and rope_scaling.rope_theta (10000) disagree");
  EXPECT_HAS(cfg_error(only(R"({"rope_parameters": {"rope_theta": 5e6}, "rope_scaling": {"rope_type": "default"}})")),
             "rope_parameters.rope_theta (5e+06) would be ignored");
}

TEST(HfConfig, SlidingWindowLayerTypes) {
  nlohmann::json j = nlohmann::json::parse(TinyQwen2{}.config_json());
  j["use_sliding_window"] = true;
  j["sliding_window"] = 4;
  j["max_window_layers"] = 1;
  auto c = parse_hf_config_text(j.dump(), kWhat);
  EXPECT_EQ(c.sliding_window, 4);
  EXPECT_EQ(c.layer_types, (std::vector<std::string>{"full_attention", "sliding_attention"}));
  // A window the file does not enable is not in effect (as in transformers).
  j["use_sliding_window"] = false;
  c = parse_hf_config_text(j.dump(), kWhat);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.layer_types, (std::vector<std::string>{"full_attention", "full_attention"}));
  j["layer_types"] = {"full_attention"};
  EXPECT_HAS(error_of([&] { parse_hf_config_text(j.dump(), kWhat); }), "layer_types has 1 entries");
  j["layer_types"] = {"full_attention", "linear_attention"};
  EXPECT_HAS(error_of([&] { parse_hf_config_text(j.dump(), kWhat); }), "\"linear_attention\" is not supported");
}

TEST(HfConfig, MissingFile) {
  TempDir dir;
  auto msg = error_of([&] { parse_hf_config(dir / "config.json"); });
  EXPECT_HAS(msg, (dir / "config.json").string());
  EXPECT_HAS(msg, "does not exist");
}

TEST(HfConfig, GarbageFile) {
  TempDir dir;
  write_file(dir / "config.json", std::string("{\"hidden_size\": 8,\n \"oops\" }"));
  auto msg = error_of([&] { parse_hf_config(dir / "config.json"); });
  EXPECT_HAS(msg, (dir / "config.json").string());
  EXPECT_HAS(msg, "invalid JSON");
  EXPECT_HAS(msg, "line 2");
  write_file(dir / "config.json", std::string("\x7f" "ELF\x02\x01", 6));
  msg = error_of([&] { parse_hf_config(dir / "config.json"); });
  EXPECT_HAS(msg, "invalid JSON");
  EXPECT_HAS(cfg_error("[1, 2]"), "must be a JSON object");
  EXPECT_HAS(cfg_error(R"({"hidden_size": 8, "hidden_size": 9})"), "duplicate key \"hidden_size\"");
}

TEST(HfConfig, MissingRequiredField) {
  for (const char* key : {"hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "vocab_size", "rms_norm_eps"}) {
    auto msg = cfg_error(with(key, ""));
    EXPECT_HAS(msg, kWhat);
    EXPECT_HAS(msg, std::string("missing required field \"") + key + "\"");
  }
  EXPECT_HAS(cfg_error(with("hidden_size", "null")), "missing required field \"hidden_size\"");
}

TEST(HfConfig, WrongFieldType) {
  auto msg = cfg_error(with("hidden_size", "\"896\""));
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "field \"hidden_size\" must be an integer, found string \"896\"");
  EXPECT_HAS(cfg_error(with("num_hidden_layers", "2.5")), "must be an integer, found number 2.5");
  EXPECT_HAS(cfg_error(with("rms_norm_eps", "\"1e-6\"")), "\"rms_norm_eps\" must be a number");
  EXPECT_HAS(cfg_error(with("tie_word_embeddings", "1")), "\"tie_word_embeddings\" must be true or false");
  EXPECT_HAS(cfg_error(with("torch_dtype", "16")), "\"torch_dtype\" must be a string");
  EXPECT_HAS(cfg_error(with("eos_token_id", "[\"x\"]")), "eos_token_id[0] must be an integer");
  EXPECT_HAS(cfg_error(with("rope_parameters", "{\"rope_theta\": \"big\"}")),
             "rope_parameters.rope_theta\" must be a number");
}

TEST(HfConfig, BadValues) {
  EXPECT_HAS(cfg_error(with("hidden_size", "0")), "\"hidden_size\" must be positive, found 0");
  EXPECT_HAS(cfg_error(with("vocab_size", "-5")), "\"vocab_size\" must be positive");
  EXPECT_HAS(cfg_error(with("num_key_value_heads", "3")), "must be divisible by num_key_value_heads (3)");
  {
    nlohmann::json j = nlohmann::json::parse(TinyQwen2{}.config_json());
    j["num_attention_heads"] = 3;
    j["num_key_value_heads"] = 3;
    EXPECT_HAS(cfg_error(j.dump()), "hidden_size (8) is not divisible by num_attention_heads (3)");
  }
  EXPECT_HAS(cfg_error(with("rms_norm_eps", "0")), "\"rms_norm_eps\" must be a positive number");
  EXPECT_HAS(cfg_error(with("hidden_size", "99999999999")), "implausibly large");
  EXPECT_HAS(cfg_error(with("eos_token_id", "-1")), "eos_token_id -1 is not a token id");
  EXPECT_HAS(cfg_error(with("bos_token_id", "-3")), "bos_token_id -3 is not a token id");
  EXPECT_HAS(cfg_error(with("hidden_act", "\"gelu\"")), "hidden_act \"gelu\" is not supported");
  EXPECT_HAS(cfg_error(with("rope_parameters", R"({"rope_theta": 5.0, "rope_type": "default"})")),
             "disagree");
}

TEST(HfConfig, UnsupportedModelType) {
  auto msg = cfg_error(with("model_type", "\"llama\""));
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "model_type \"llama\" is not supported");
  EXPECT_HAS(msg, "\"qwen2\"");
  EXPECT_HAS(cfg_error(with("model_type", "")), "missing required field \"model_type\"");
}

TEST(HfConfig, RopeScalingNotSupported) {
  auto msg = cfg_error(with("rope_scaling", R"({"type": "yarn", "factor": 4.0})"));
  EXPECT_HAS(msg, kWhat);
  EXPECT_HAS(msg, "rope_scaling type \"yarn\" is not supported");
  msg = cfg_error(with("rope_parameters", R"({"rope_theta": 1e6, "rope_type": "llama3"})"));
  EXPECT_HAS(msg, "rope_parameters type \"llama3\" is not supported");
}

TEST(HfConfig, TiedAndUntied) {
  TinyQwen2 m;
  m.tied = true;
  EXPECT_TRUE(parse_hf_config_text(m.config_json(), kWhat).tie_word_embeddings);
  m.tied = false;
  EXPECT_FALSE(parse_hf_config_text(m.config_json(), kWhat).tie_word_embeddings);
}

// The shipped presets are the real Hugging Face config.json files of Qwen2.5.
TEST(HfConfig, Presets) {
  struct Want {
    const char* name;
    int64_t hidden, inter, layers, heads, kv, max_pos, head_dim;
  };
  for (const Want& w : {Want{"qwen2.5-0.5b", 896, 4864, 24, 14, 2, 32768, 64},
                        Want{"qwen2.5-1.5b", 1536, 8960, 28, 12, 2, 131072, 128},
                        Want{"qwen2.5-3b", 2048, 11008, 36, 16, 2, 32768, 128}}) {
    SCOPED_TRACE(w.name);
    auto c = parse_hf_config(fs::path(RT_SOURCE_DIR) / "configs" / "models" / (std::string(w.name) + ".json"));
    EXPECT_EQ(c.hidden_size, w.hidden);
    EXPECT_EQ(c.intermediate_size, w.inter);
    EXPECT_EQ(c.num_hidden_layers, w.layers);
    EXPECT_EQ(c.num_attention_heads, w.heads);
    EXPECT_EQ(c.num_key_value_heads, w.kv);
    EXPECT_EQ(c.max_position_embeddings, w.max_pos);
    EXPECT_EQ(c.head_dim, w.head_dim);
    EXPECT_EQ(c.vocab_size, 151936);
    EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
    EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
    EXPECT_TRUE(c.tie_word_embeddings);
    EXPECT_FALSE(c.use_sliding_window);
    EXPECT_EQ(c.sliding_window, 0);
    EXPECT_EQ(c.torch_dtype, "bfloat16");
    EXPECT_EQ(c.bos_token_id, 151643);
    EXPECT_EQ(c.eos_token_id, 151643);
  }
}

// The Qwen3 presets (the 8B is the base of the official L2A release): QK-norm, no qkv bias, and a
// head_dim of 128 that is not hidden / heads for 0.6B and 4B.
TEST(HfConfig, Qwen3Presets) {
  struct Want {
    const char* name;
    int64_t hidden, inter, layers, heads;
    bool tied;
  };
  for (const Want& w : {Want{"qwen3-0.6b", 1024, 3072, 28, 16, true}, Want{"qwen3-1.7b", 2048, 6144, 28, 16, true},
                        Want{"qwen3-4b", 2560, 9728, 36, 32, true}, Want{"qwen3-8b", 4096, 12288, 36, 32, false}}) {
    SCOPED_TRACE(w.name);
    auto c = parse_hf_config(fs::path(RT_SOURCE_DIR) / "configs" / "models" / (std::string(w.name) + ".json"));
    EXPECT_EQ(c.model_type, "qwen3");
    EXPECT_TRUE(c.qk_norm);
    EXPECT_FALSE(c.qkv_bias);
    EXPECT_EQ(c.hidden_size, w.hidden);
    EXPECT_EQ(c.intermediate_size, w.inter);
    EXPECT_EQ(c.num_hidden_layers, w.layers);
    EXPECT_EQ(c.num_attention_heads, w.heads);
    EXPECT_EQ(c.num_key_value_heads, 8);
    EXPECT_EQ(c.head_dim, 128);
    EXPECT_EQ(c.q_dim(), w.heads * 128);
    EXPECT_EQ(c.max_position_embeddings, 40960);
    EXPECT_EQ(c.tie_word_embeddings, w.tied);
    EXPECT_EQ(c.sliding_window, 0);
    EXPECT_EQ(c.eos_token_id, 151645);
  }
}

TEST(HfConfig, Qwen3Fields) {
  const std::string base = R"({"model_type": "qwen3", "hidden_size": 48, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
    "rms_norm_eps": 1e-6)";
  // Qwen3Config's head_dim default is 128, not hidden / heads (= 12 here).
  HfConfig c = parse_hf_config_text(base + "}", kWhat);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(parse_hf_config_text(base + R"(, "head_dim": 16})", kWhat).head_dim, 16);
  EXPECT_FALSE(parse_hf_config_text(base + R"(, "attention_bias": false})", kWhat).qkv_bias);
  EXPECT_HAS(cfg_error(base + R"(, "attention_bias": true})"), "attention_bias = true is not supported");
  // Qwen2 keeps its biases and has no QK-norm.
  TinyQwen2 m;
  HfConfig q2 = parse_hf_config_text(m.config_json(), kWhat);
  EXPECT_FALSE(q2.qk_norm);
  EXPECT_TRUE(q2.qkv_bias);
  EXPECT_HAS(cfg_error(R"({"model_type": "llama"})"), "supported: \"qwen2\"");
}

}  // namespace
}  // namespace rt::test
