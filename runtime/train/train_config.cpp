#include "train/train_config.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <variant>

#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include "rt/sdk/error.h"
#include "train/text_util.h"

namespace rt {

const char* regime_name(TrainRegime r) {
  switch (r) {
    case TrainRegime::RouterOnly: return "router_only";
    case TrainRegime::Attention: return "attention";
    case TrainRegime::Full: return "full";
  }
  return "?";
}

const char* collapse_action_name(CollapseAction a) {
  return a == CollapseAction::Stop ? "stop" : "warn";
}

namespace {

// A [train] value after its type check, before its range check.
using Value = std::variant<int64_t, double, bool, std::string>;
enum class Kind { Int, Real, Bool, Str };

struct Field {
  const char* name;
  Kind kind;
};

// Every [train] key and its type; the order is the order of to_json().
constexpr Field kFields[] = {
    {"regime", Kind::Str},         {"seq_len", Kind::Int},          {"batch_size", Kind::Int},
    {"micro_batch", Kind::Int},    {"lr", Kind::Real},              {"warmup_steps", Kind::Int},
    {"min_lr_ratio", Kind::Real},  {"weight_decay", Kind::Real},    {"beta1", Kind::Real},
    {"beta2", Kind::Real},         {"eps", Kind::Real},             {"clip_norm", Kind::Real},
    {"seed", Kind::Int},           {"shuffle", Kind::Bool},         {"recompute", Kind::Bool},
    {"checkpoint_every", Kind::Int}, {"checkpoint_minutes", Kind::Real}, {"keep_checkpoints", Kind::Int},
    {"log_every", Kind::Int},      {"eval_every", Kind::Int},       {"val_sequences", Kind::Int},
    {"collapse_loss", Kind::Real},
    {"collapse_sparsity", Kind::Real}, {"collapse_patience", Kind::Int},
    {"collapse_action", Kind::Str}, {"max_nonfinite_steps", Kind::Int}, {"zero_stage", Kind::Int},
};

const Field* find_field(std::string_view key) {
  for (const Field& f : kFields)
    if (key == f.name) return &f;
  return nullptr;
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::Int: return "an integer";
    case Kind::Real: return "a number";
    case Kind::Bool: return "a boolean";
    case Kind::Str: return "a string";
  }
  return "?";
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
      diag = up;
    }
  }
  return row[b.size()];
}

// "(did you mean \"lr\"?)" for a near miss, else the list of valid keys.
std::string unknown_key_hint(std::string_view key) {
  const Field* best = nullptr;
  size_t best_d = 3;
  for (const Field& f : kFields) {
    const size_t d = edit_distance(key, f.name);
    if (d < best_d) best_d = d, best = &f;
  }
  if (best) return std::string("did you mean \"") + best->name + "\"?";
  std::string all = "valid keys:";
  for (const Field& f : kFields) all += std::string(" ") + f.name;
  return all;
}

std::string toml_type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::table: return "table";
    case toml::node_type::array: return "array";
    case toml::node_type::string: return "string";
    case toml::node_type::integer: return "integer";
    case toml::node_type::floating_point: return "floating-point number";
    case toml::node_type::boolean: return "boolean";
    case toml::node_type::date: return "date";
    case toml::node_type::time: return "time";
    case toml::node_type::date_time: return "date-time";
    default: return "nothing";
  }
}

// "cfg.toml:3:6: train.lr": where a value was written, for messages.
std::string where(const std::string& what, const toml::node& n, const std::string& key) {
  const auto& pos = n.source().begin;
  if (pos.line == 0) return what + ": " + key;
  return detail::concat(what, ":", pos.line, ":", pos.column, ": ", key);
}

// The TOML value as the [train] field's type. Integers are accepted where numbers are expected
// (lr = 1 is a number), never the other way round (seq_len = 1024.0 is a mistake worth naming).
Value toml_value(const toml::node& n, Kind kind, const std::string& origin) {
  auto bad = [&]() -> Value {
    fail(origin, ": expected ", kind_name(kind), ", found ", toml_type_name(n));
  };
  switch (kind) {
    case Kind::Int:
      if (auto v = n.value_exact<int64_t>()) return *v;
      return bad();
    case Kind::Real:
      if (n.is_integer()) return static_cast<double>(*n.value_exact<int64_t>());
      if (auto v = n.value_exact<double>()) return *v;
      return bad();
    case Kind::Bool:
      if (auto v = n.value_exact<bool>()) return *v;
      return bad();
    case Kind::Str:
      if (auto v = n.value_exact<std::string>()) return *v;
      return bad();
  }
  return bad();
}

// The --set text as the field's type: the whole string must parse.
Value text_value(std::string_view s, Kind kind, const std::string& origin) {
  auto bad = [&]() -> Value {
    fail(origin, ": expected ", kind_name(kind), ", found \"", std::string(s), "\"");
  };
  switch (kind) {
    case Kind::Int: {
      int64_t v = 0;
      auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
      if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return bad();
      return v;
    }
    case Kind::Real: {
      double v = 0;
      auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
      if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return bad();
      return v;
    }
    case Kind::Bool:
      if (s == "true") return true;
      if (s == "false") return false;
      fail(origin, ": expected true or false, found \"", std::string(s), "\"");
    case Kind::Str:
      if (s.size() >= 2 && s.front() == '"' && s.back() == '"') s = s.substr(1, s.size() - 2);
      return std::string(s);
  }
  return bad();
}

// Parsed [train] values and where each came from; range checks run once all are known.
struct Pending {
  std::map<std::string, Value> values;
  std::map<std::string, std::string> origins;
};

std::string attention_value_string(const toml::node& n, const std::string& origin) {
  if (auto v = n.value_exact<std::string>()) return *v;
  if (auto v = n.value_exact<bool>()) return *v ? "true" : "false";
  if (auto v = n.value_exact<int64_t>()) return std::to_string(*v);
  if (auto v = n.value_exact<double>()) return format_double(*v);
  fail(origin, ": expected a string, number or boolean (plugin options are scalars), found ",
       toml_type_name(n));
}

bool is_bare_key(std::string_view k) {
  if (k.empty()) return false;
  return std::all_of(k.begin(), k.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

void apply_override(const std::string& arg, Pending& p, std::map<std::string, std::string>& attention,
                    std::map<std::string, std::string>& attention_origins) {
  const std::string origin0 = "--set \"" + arg + "\"";
  const size_t eq = arg.find('=');
  if (eq == std::string::npos)
    fail(origin0, ": expected key=value (e.g. train.lr=3e-4 or attention.window=512), found no '='");
  const std::string lhs = arg.substr(0, eq), value = arg.substr(eq + 1);
  std::string section, key;
  if (const size_t dot = lhs.find('.'); dot != std::string::npos) {
    section = lhs.substr(0, dot);
    key = lhs.substr(dot + 1);
    if (section != "train" && section != "attention")
      fail(origin0, ": unknown section \"", section, "\" (expected train or attention)");
  } else {
    key = lhs;
    section = find_field(key) ? "train" : "attention";
  }
  if (!is_bare_key(key))
    fail(origin0, ": expected a key of letters, digits, '_' or '-', found \"", key, "\"");
  const std::string origin = origin0 + " (" + section + "." + key + ")";
  if (section == "attention") {
    attention[key] = std::get<std::string>(text_value(value, Kind::Str, origin));
    attention_origins[key] = origin;
    return;
  }
  const Field* f = find_field(key);
  if (!f) fail(origin0, ": unknown key train.", key, " (", unknown_key_hint(key), ")");
  p.values[key] = text_value(value, f->kind, origin);
  p.origins[key] = origin;
}

// Range checks and assignment, with each value's origin in the message.
void finish(const Pending& p, TrainConfig& c) {
  auto origin = [&](const char* key) {
    auto it = p.origins.find(key);
    return it != p.origins.end() ? it->second : std::string("train.") + key + " (default)";
  };
  auto get_int = [&](const char* key, int64_t& out, int64_t min) {
    if (auto it = p.values.find(key); it != p.values.end()) out = std::get<int64_t>(it->second);
    if (out < min) fail(origin(key), ": expected an integer >= ", min, ", found ", out);
  };
  auto get_real = [&](const char* key, double& out, double lo, bool lo_open, double hi, bool hi_open) {
    if (auto it = p.values.find(key); it != p.values.end()) out = std::get<double>(it->second);
    const bool ok = std::isfinite(out) && (lo_open ? out > lo : out >= lo) &&
                    (hi_open ? out < hi : out <= hi);
    if (ok) return;
    std::string range;
    if (std::isinf(hi))
      range = std::string(lo_open ? "> " : ">= ") + format_double(lo);
    else
      range = std::string("in ") + (lo_open ? "(" : "[") + format_double(lo) + ", " + format_double(hi) +
              (hi_open ? ")" : "]");
    fail(origin(key), ": expected a finite number ", range, ", found ", format_double(out));
  };
  auto get_bool = [&](const char* key, bool& out) {
    if (auto it = p.values.find(key); it != p.values.end()) out = std::get<bool>(it->second);
  };
  auto get_str = [&](const char* key) -> std::optional<std::string> {
    if (auto it = p.values.find(key); it != p.values.end()) return std::get<std::string>(it->second);
    return std::nullopt;
  };
  constexpr double kInf = std::numeric_limits<double>::infinity();

  if (auto s = get_str("regime")) {
    if (*s == "router_only") c.regime = TrainRegime::RouterOnly;
    else if (*s == "attention") c.regime = TrainRegime::Attention;
    else if (*s == "full") c.regime = TrainRegime::Full;
    else fail(origin("regime"), ": expected \"router_only\", \"attention\" or \"full\", found \"", *s, "\"");
  }
  if (auto s = get_str("collapse_action")) {
    if (*s == "stop") c.collapse_action = CollapseAction::Stop;
    else if (*s == "warn") c.collapse_action = CollapseAction::Warn;
    else fail(origin("collapse_action"), ": expected \"stop\" or \"warn\", found \"", *s, "\"");
  }
  get_int("seq_len", c.seq_len, 2);
  get_int("batch_size", c.batch_size, 1);
  get_int("micro_batch", c.micro_batch, 1);
  if (c.batch_size % c.micro_batch != 0)
    fail(origin("batch_size"), ": expected a multiple of train.micro_batch = ", c.micro_batch,
         " (", origin("micro_batch"), "), found ", c.batch_size);
  get_real("lr", c.lr, 0, true, kInf, false);
  get_int("warmup_steps", c.warmup_steps, 0);
  get_real("min_lr_ratio", c.min_lr_ratio, 0, false, 1, false);
  get_real("weight_decay", c.weight_decay, 0, false, kInf, false);
  get_real("beta1", c.beta1, 0, false, 1, true);
  get_real("beta2", c.beta2, 0, false, 1, true);
  get_real("eps", c.eps, 0, true, kInf, false);
  get_real("clip_norm", c.clip_norm, 0, false, kInf, false);
  int64_t seed = 0;
  get_int("seed", seed, 0);
  c.seed = static_cast<uint64_t>(seed);
  get_bool("shuffle", c.shuffle);
  get_bool("recompute", c.recompute);
  get_int("checkpoint_every", c.checkpoint_every, 0);
  get_real("checkpoint_minutes", c.checkpoint_minutes, 0, false, kInf, false);
  get_int("keep_checkpoints", c.keep_checkpoints, 0);
  get_int("log_every", c.log_every, 0);
  if (p.values.count("eval_every")) {
    int64_t every = 0;
    get_int("eval_every", every, 0);
    c.eval_every = every;
  }
  get_int("val_sequences", c.val_sequences, 1);
  get_real("collapse_loss", c.collapse_loss, 0, false, kInf, false);
  get_real("collapse_sparsity", c.collapse_sparsity, 0, false, 1, false);
  get_int("collapse_patience", c.collapse_patience, 1);
  get_int("max_nonfinite_steps", c.max_nonfinite_steps, 1);
  get_int("zero_stage", c.zero_stage, 0);
  if (c.zero_stage > 1)
    fail(origin("zero_stage"), ": expected 0 (optimizer state on every rank) or 1 (sharded over the ranks), found ",
         c.zero_stage);
}

}  // namespace

TrainConfig parse_train_config(std::string_view toml_text, const std::string& what,
                               const std::vector<std::string>& set_overrides) {
  toml::table root;
  try {
    root = toml::parse(toml_text, what);
  } catch (const toml::parse_error& e) {
    const auto& pos = e.source().begin;
    fail(what, ":", pos.line, ":", pos.column, ": invalid TOML: ", e.description());
  }

  TrainConfig c;
  c.source = what;
  Pending p;
  std::map<std::string, std::string> attention_origins;
  for (const auto& [k, node] : root) {
    const std::string key(k.str());
    if (key != "train" && key != "attention")
      fail(where(what, node, key), ": unknown top-level key (expected the tables [train] and [attention])");
    const toml::table* t = node.as_table();
    if (!t) fail(where(what, node, key), ": expected a table, found ", toml_type_name(node));
    for (const auto& [k2, v] : *t) {
      const std::string sub(k2.str());
      const std::string origin = where(what, v, key + "." + sub);
      if (key == "attention") {
        c.attention[sub] = attention_value_string(v, origin);
        attention_origins[sub] = origin;
        continue;
      }
      const Field* f = find_field(sub);
      if (!f) fail(origin, ": unknown key (", unknown_key_hint(sub), ")");
      p.values[sub] = toml_value(v, f->kind, origin);
      p.origins[sub] = origin;
    }
  }
  for (const std::string& arg : set_overrides) apply_override(arg, p, c.attention, attention_origins);
  finish(p, c);
  return c;
}

TrainConfig load_train_config(const std::filesystem::path& toml_file,
                              const std::vector<std::string>& set_overrides) {
  std::error_code ec;
  if (std::filesystem::is_directory(toml_file, ec))
    fail(toml_file.string(), ": is a directory (expected a TOML config file)");
  if (std::filesystem::exists(toml_file, ec) && !std::filesystem::is_regular_file(toml_file, ec))
    fail(toml_file.string(), ": is not a regular file (a FIFO, socket or device)");
  std::ifstream in(toml_file, std::ios::binary);
  if (!in) fail(toml_file.string(), ": cannot open the config file");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail(toml_file.string(), ": error reading the config file");
  return parse_train_config(ss.str(), toml_file.string(), set_overrides);
}

namespace {

// The [train] keys that do not change what is computed: left out of config_hash() so that a
// resume may change them.
constexpr const char* kUnhashed[] = {"checkpoint_every", "checkpoint_minutes", "keep_checkpoints", "log_every",
                                     "eval_every",       "val_sequences",      "recompute",        "collapse_loss",
                                     "collapse_sparsity", "collapse_patience", "collapse_action",  "max_nonfinite_steps",
                                     "zero_stage"};

}  // namespace

std::string TrainConfig::to_json() const {
  nlohmann::ordered_json t;
  t["regime"] = regime_name(regime);
  t["seq_len"] = seq_len;
  t["batch_size"] = batch_size;
  t["micro_batch"] = micro_batch;
  t["lr"] = lr;
  t["warmup_steps"] = warmup_steps;
  t["min_lr_ratio"] = min_lr_ratio;
  t["weight_decay"] = weight_decay;
  t["beta1"] = beta1;
  t["beta2"] = beta2;
  t["eps"] = eps;
  t["clip_norm"] = clip_norm;
  t["seed"] = seed;
  t["shuffle"] = shuffle;
  t["recompute"] = recompute;
  t["checkpoint_every"] = checkpoint_every;
  t["checkpoint_minutes"] = checkpoint_minutes;
  t["keep_checkpoints"] = keep_checkpoints;
  t["log_every"] = log_every;
  if (eval_every)
    t["eval_every"] = *eval_every;
  else
    t["eval_every"] = nullptr;  // unset: checkpoint_every when there is validation data
  t["val_sequences"] = val_sequences;
  t["collapse_loss"] = collapse_loss;
  t["collapse_sparsity"] = collapse_sparsity;
  t["collapse_patience"] = collapse_patience;
  t["collapse_action"] = collapse_action_name(collapse_action);
  t["max_nonfinite_steps"] = max_nonfinite_steps;
  t["zero_stage"] = zero_stage;
  nlohmann::ordered_json j;
  j["train"] = std::move(t);
  j["attention"] = nlohmann::ordered_json::object();
  for (const auto& [k, v] : attention) j["attention"][k] = v;  // std::map: sorted
  return j.dump();
}

std::string TrainConfig::config_hash() const {
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(to_json());
  for (const char* k : kUnhashed) j["train"].erase(k);
  return fnv1a64_hex(j.dump());
}

}  // namespace rt
