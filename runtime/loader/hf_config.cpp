#include "loader/hf_config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "loader/json_util.h"
#include "rt/sdk/error.h"

namespace rt {

using nlohmann::json;

namespace {

// Dimensions beyond this are corrupt files, and would overflow 32-bit kernel indexing.
constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();

class Fields {
 public:
  Fields(const json& j, const std::string& what) : j_(j), what_(what) {}

  // nullptr when absent or null (transformers treats null as "use the default").
  const json* find(const char* key) const {
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  [[noreturn]] void wrong_type(const char* key, const char* expected, const json& v) const {
    fail(what_, ": field \"", key, "\" must be ", expected, ", found ", json_type_name(v), " ",
         json_brief(v));
  }
  [[noreturn]] void missing(const char* key) const {
    fail(what_, ": missing required field \"", key, "\"");
  }

  std::optional<int64_t> opt_int(const char* key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!json_is_integer(*v)) wrong_type(key, "an integer", *v);
    if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(kMaxDim))
      fail(what_, ": field \"", key, "\" = ", v->get<uint64_t>(), " is implausibly large");
    return v->get<int64_t>();
  }
  int64_t req_int(const char* key) const {
    auto v = opt_int(key);
    if (!v) missing(key);
    return *v;
  }
  std::optional<double> opt_num(const char* key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_number()) wrong_type(key, "a number", *v);
    return v->get<double>();
  }
  double req_num(const char* key) const {
    auto v = opt_num(key);
    if (!v) missing(key);
    return *v;
  }
  bool opt_bool(const char* key, bool def) const {
    const json* v = find(key);
    if (!v) return def;
    if (!v->is_boolean()) wrong_type(key, "true or false", *v);
    return v->get<bool>();
  }
  std::optional<std::string> opt_str(const char* key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) wrong_type(key, "a string", *v);
    return v->get<std::string>();
  }
  const std::string& what() const { return what_; }

 private:
  const json& j_;
  const std::string& what_;
};

void check_positive(const std::string& what, const char* key, int64_t v) {
  if (v <= 0) fail(what, ": field \"", key, "\" must be positive, found ", v);
  if (v > kMaxDim) fail(what, ": field \"", key, "\" = ", v, " is implausibly large");
}

void check_positive_finite(const std::string& what, const char* key, double v) {
  if (!(v > 0) || !std::isfinite(v)) fail(what, ": field \"", key, "\" must be a positive number, found ", v);
}

// RoPE variants other than the plain one change the math (yarn, linear, dynamic, llama3...);
// running them as plain RoPE would silently produce wrong logits.
void check_rope_kind(const std::string& what, const char* field, const json& rope) {
  if (!rope.is_object()) fail(what, ": field \"", field, "\" must be an object, found ", json_type_name(rope));
  std::string kind = "default";
  for (const char* key : {"rope_type", "type"}) {
    auto it = rope.find(key);
    if (it == rope.end() || it->is_null()) continue;
    if (!it->is_string())
      fail(what, ": field \"", field, ".", key, "\" must be a string, found ", json_type_name(*it));
    kind = it->get<std::string>();
    break;
  }
  if (kind != "default")
    fail(what, ": ", field, " type \"", kind, "\" is not supported (only default RoPE is implemented)");
  if (auto it = rope.find("partial_rotary_factor"); it != rope.end() && !it->is_null()) {
    if (!it->is_number() || it->get<double>() != 1.0)
      fail(what, ": ", field, ".partial_rotary_factor = ", json_brief(*it),
           " is not supported (only full rotary embedding)");
  }
}

// l2a_qwen3: every layer is an L2A layer in the paper layout, with a sliding window of
// `sliding_window` keys (whatever use_sliding_window says: that switch is the base model's) and the
// router z = sigmoid_linear(input_layernorm_global(x1)), routed iff z >= sigmoid_temp *
// logit(sigmoid_threshold) -- exactly the linear_sigmoid router with tau = sigmoid_temp. The runtime's
// L2A backends read their options from the "l2a" section, which is derived here (or, when the file
// has one, as in a model this runtime exported, checked against these fields).
void parse_official_l2a(const Fields& f, HfConfig& c) {
  const std::string& what = f.what();
  HfConfig::OfficialL2a o;
  o.sliding_window = f.opt_int("sliding_window").value_or(4095);
  if (o.sliding_window <= 0)
    fail(what, ": field \"sliding_window\" (the L2A local window) must be positive, found ", o.sliding_window);
  o.sigmoid_temp = f.opt_num("sigmoid_temp").value_or(1.0);
  check_positive_finite(what, "sigmoid_temp", o.sigmoid_temp);
  o.sigmoid_threshold = f.opt_num("sigmoid_threshold").value_or(0.5);
  if (!(o.sigmoid_threshold > 0 && o.sigmoid_threshold < 1))
    fail(what, ": field \"sigmoid_threshold\" must be in (0, 1), found ", o.sigmoid_threshold);
  const std::string input = f.opt_str("sig_input_type").value_or("hidden_linearproj");
  if (input != "hidden_linearproj")
    fail(what, ": sig_input_type \"", input,
         "\" is not supported (supported: \"hidden_linearproj\", the learned linear router sigmoid_linear)");
  if (!f.opt_bool("sigmoid_linear", true))
    fail(what, ": sigmoid_linear = false (a router without weights, on the mean of the hidden state) is not "
               "supported; this runtime runs the learned linear router (sigmoid_linear = true)");
  c.official_l2a = o;

  nlohmann::json derived = {{"layout", "paper"},
                            {"window", o.sliding_window},
                            {"tau", o.sigmoid_temp},
                            {"threshold", o.sigmoid_threshold},
                            {"router", "linear_sigmoid"}};
  auto it = c.raw.find("l2a");
  if (it == c.raw.end() || it->is_null()) {
    c.raw["l2a"] = derived;
    return;
  }
  if (!it->is_object()) fail(what, ": field \"l2a\" must be an object, found ", json_type_name(*it));
  // A section this runtime wrote next to the official fields: both must describe the same model.
  for (const auto& [key, value] : derived.items()) {
    auto mine = it->find(key);
    if (mine == it->end() || mine->is_null()) {
      (*it)[key] = value;
      continue;
    }
    const bool same = value.is_number() ? mine->is_number() && mine->get<double>() == value.get<double>()
                                        : *mine == value;
    if (!same)
      fail(what, ": l2a.", key, " = ", json_brief(*mine), " contradicts the official field it mirrors (",
           key == "window" ? "sliding_window" : key == "tau" ? "sigmoid_temp" : key == "threshold" ? "sigmoid_threshold"
                                                                                                 : "model_type l2a_qwen3",
           " gives ", json_brief(value), ")");
  }
}

}  // namespace

HfConfig parse_hf_config_text(const std::string& text, const std::string& what) {
  HfConfig c;
  c.source = what;
  c.raw = parse_json_strict(text, what);
  if (!c.raw.is_object()) fail(what, ": config must be a JSON object, found ", json_type_name(c.raw));
  const Fields f(c.raw, what);

  auto model_type = f.opt_str("model_type");
  if (!model_type) fail(what, ": missing required field \"model_type\" (supported: \"qwen2\", \"qwen3\", \"l2a_qwen3\")");
  if (*model_type != "qwen2" && *model_type != "qwen3" && *model_type != "l2a_qwen3")
    fail(what, ": model_type \"", *model_type,
         "\" is not supported (supported: \"qwen2\" for Qwen2 and Qwen2.5, \"qwen3\", and \"l2a_qwen3\" for the "
         "official L2A release)");
  c.model_type = *model_type;
  const bool qwen3 = c.model_type != "qwen2";
  c.qk_norm = qwen3;
  // Qwen2 always has q/k/v biases (its config has no switch); Qwen3's attention_bias also puts a
  // bias on o_proj, which this runtime's o_proj (bias-free, as in Qwen2) does not have.
  if (qwen3) {
    c.qkv_bias = f.opt_bool("attention_bias", false);
    if (c.qkv_bias)
      fail(what, ": attention_bias = true is not supported for model_type \"", c.model_type,
           "\" (it adds biases to q/k/v and o_proj; released Qwen3 models have none)");
  }

  c.hidden_size = f.req_int("hidden_size");
  c.intermediate_size = f.req_int("intermediate_size");
  c.num_hidden_layers = f.req_int("num_hidden_layers");
  c.num_attention_heads = f.req_int("num_attention_heads");
  c.vocab_size = f.req_int("vocab_size");
  c.rms_norm_eps = f.req_num("rms_norm_eps");
  // transformers' Qwen2Config would default a missing num_key_value_heads to 32; real Qwen2
  // files always carry it, and plain multi-head attention is the meaningful default. A mismatch
  // would surface anyway as a k_proj shape error in weight validation.
  c.num_key_value_heads = f.opt_int("num_key_value_heads").value_or(c.num_attention_heads);
  c.max_position_embeddings = f.opt_int("max_position_embeddings").value_or(32768);
  using Named = std::pair<const char*, int64_t>;
  for (auto [key, v] : std::initializer_list<Named>{{"hidden_size", c.hidden_size},
                                                    {"intermediate_size", c.intermediate_size},
                                                    {"num_hidden_layers", c.num_hidden_layers},
                                                    {"num_attention_heads", c.num_attention_heads},
                                                    {"num_key_value_heads", c.num_key_value_heads},
                                                    {"vocab_size", c.vocab_size},
                                                    {"max_position_embeddings", c.max_position_embeddings}})
    check_positive(what, key, v);
  check_positive_finite(what, "rms_norm_eps", c.rms_norm_eps);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    fail(what, ": num_attention_heads (", c.num_attention_heads,
         ") must be divisible by num_key_value_heads (", c.num_key_value_heads, ")");
  if (auto hd = f.opt_int("head_dim")) {
    check_positive(what, "head_dim", *hd);
    c.head_dim = *hd;
  } else if (qwen3) {
    c.head_dim = 128;  // Qwen3Config's default: not hidden_size / num_attention_heads
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      fail(what, ": hidden_size (", c.hidden_size, ") is not divisible by num_attention_heads (",
           c.num_attention_heads, ") and no head_dim is given");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0) fail(what, ": head_dim ", c.head_dim, " must be even for RoPE");

  c.hidden_act = f.opt_str("hidden_act").value_or("silu");
  if (c.hidden_act == "swish") c.hidden_act = "silu";  // transformers' ACT2FN: the same function
  if (c.hidden_act != "silu")
    fail(what, ": hidden_act \"", c.hidden_act, "\" is not supported (Qwen2's MLP uses \"silu\", also named \"swish\")");

  // RoPE: transformers-5 "rope_parameters", transformers-4 top-level "rope_theta" and "rope_scaling".
  // transformers 5 reads the RoPE dict from rope_scaling when that is a non-empty object (in place of
  // rope_parameters), its rope_theta defaulting to the top-level one, then 10000. A theta stated twice
  // must agree, and a rope_parameters.rope_theta that transformers would skip is refused: the theta
  // used must be the one transformers uses.
  auto dict_theta = [&](const char* field, const json& rope) -> std::optional<double> {
    check_rope_kind(what, field, rope);
    auto it = rope.find("rope_theta");
    if (it == rope.end() || it->is_null()) return std::nullopt;
    if (!it->is_number())
      fail(what, ": field \"", field, ".rope_theta\" must be a number, found ", json_type_name(*it), " ",
           json_brief(*it));
    return it->get<double>();
  };
  const std::optional<double> theta_top = f.opt_num("rope_theta");
  std::optional<double> theta_params, theta_scaling;
  const json* rp = f.find("rope_parameters");
  const json* rs = f.find("rope_scaling");
  if (rp) theta_params = dict_theta("rope_parameters", *rp);
  if (rs) theta_scaling = dict_theta("rope_scaling", *rs);
  const bool scaling_used = rs && !rs->empty();  // what transformers 5 reads in place of rope_parameters
  const std::pair<const char*, std::optional<double>> stated[] = {
      {"rope_theta", theta_top}, {"rope_parameters.rope_theta", theta_params}, {"rope_scaling.rope_theta", theta_scaling}};
  for (size_t i = 0; i < std::size(stated); ++i)
    for (size_t j = i + 1; j < std::size(stated); ++j)
      if (stated[i].second && stated[j].second && *stated[i].second != *stated[j].second)
        fail(what, ": ", stated[i].first, " (", *stated[i].second, ") and ", stated[j].first, " (", *stated[j].second,
             ") disagree");
  if (scaling_used && theta_params && !theta_scaling && !theta_top)
    fail(what, ": rope_parameters.rope_theta (", *theta_params, ") would be ignored: transformers reads RoPE from "
         "the non-empty rope_scaling, which has no rope_theta (it would use 10000); move rope_theta into "
         "rope_scaling or remove rope_scaling");
  c.rope_theta = theta_scaling ? *theta_scaling : theta_params ? *theta_params : theta_top.value_or(10000.0);
  check_positive_finite(what, "rope_theta", c.rope_theta);

  c.tie_word_embeddings = f.opt_bool("tie_word_embeddings", false);
  c.use_sliding_window = f.opt_bool("use_sliding_window", false);
  c.max_window_layers = f.opt_int("max_window_layers").value_or(28);
  if (c.max_window_layers < 0)
    fail(what, ": field \"max_window_layers\" must be >= 0, found ", c.max_window_layers);
  // Absent means Qwen2Config's default 4096; null means no window.
  std::optional<int64_t> window = f.opt_int("sliding_window");
  if (!window && !c.raw.contains("sliding_window")) window = 4096;
  if (c.use_sliding_window && window) {
    check_positive(what, "sliding_window", *window);
    c.sliding_window = *window;
  }

  if (const json* lt = f.find("layer_types")) {
    if (!lt->is_array()) f.wrong_type("layer_types", "an array of strings", *lt);
    if (static_cast<int64_t>(lt->size()) != c.num_hidden_layers)
      fail(what, ": layer_types has ", lt->size(), " entries but num_hidden_layers is ", c.num_hidden_layers);
    for (size_t i = 0; i < lt->size(); ++i) {
      const json& v = (*lt)[i];
      if (!v.is_string()) fail(what, ": layer_types[", i, "] must be a string, found ", json_type_name(v));
      const std::string& s = v.get_ref<const std::string&>();
      if (s != "full_attention" && s != "sliding_attention")
        fail(what, ": layer_types[", i, "] = \"", s,
             "\" is not supported (expected \"full_attention\" or \"sliding_attention\")");
      if (s == "sliding_attention" && c.sliding_window == 0)
        fail(what, ": layer_types[", i, "] is \"sliding_attention\" but no sliding_window is in effect");
      c.layer_types.push_back(s);
    }
  } else {
    for (int64_t i = 0; i < c.num_hidden_layers; ++i)
      c.layer_types.push_back(c.sliding_window > 0 && i >= c.max_window_layers ? "sliding_attention"
                                                                              : "full_attention");
  }

  if (c.model_type == "l2a_qwen3") parse_official_l2a(f, c);

  // transformers 5 writes "dtype"; transformers 4 wrote "torch_dtype".
  c.torch_dtype = f.opt_str("dtype").value_or(f.opt_str("torch_dtype").value_or(""));

  c.bos_token_id = f.opt_int("bos_token_id");
  if (const json* eos = f.find("eos_token_id")) {
    if (eos->is_array()) {
      for (size_t i = 0; i < eos->size(); ++i) {
        const json& v = (*eos)[i];
        if (!json_is_integer(v))
          fail(what, ": eos_token_id[", i, "] must be an integer, found ", json_type_name(v));
        if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(kMaxDim))
          fail(what, ": eos_token_id[", i, "] = ", v.get<uint64_t>(), " is not a token id");
      }
      if (!eos->empty()) c.eos_token_id = (*eos)[0].get<int64_t>();
    } else {
      c.eos_token_id = f.opt_int("eos_token_id");
    }
  }
  // An id past the vocabulary is allowed, as transformers allows it (tiny test models often keep the
  // real model's ids): the model can never emit it, so generation simply never stops on it.
  using NamedId = std::pair<const char*, std::optional<int64_t>>;
  for (auto [key, id] : std::initializer_list<NamedId>{{"bos_token_id", c.bos_token_id},
                                                       {"eos_token_id", c.eos_token_id}})
    if (id && (*id < 0 || *id > kMaxDim))
      fail(what, ": ", key, " ", *id, " is not a token id (expected 0 <= id <= ", kMaxDim, ")");
  return c;
}

HfConfig parse_hf_config(const std::filesystem::path& config_json) {
  const std::string what = config_json.string();
  std::error_code ec;
  if (!std::filesystem::exists(config_json, ec)) fail("config file ", what, " does not exist");
  if (std::filesystem::is_directory(config_json, ec))
    fail("config file ", what, " is a directory (expected config.json)");
  if (!std::filesystem::is_regular_file(config_json, ec))  // a FIFO would block the read for ever
    fail("config file ", what, " is not a regular file (a FIFO, socket or device)");
  std::ifstream in(config_json, std::ios::binary);
  if (!in) fail("cannot read config file ", what);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail("error reading config file ", what);
  return parse_hf_config_text(ss.str(), what);
}

}  // namespace rt
