// String key/value options handed to a plugin (from --window, the TOML config, --set k=v).
// Typed getters fail with a message naming the key and the bad value.
#pragma once

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "rt/sdk/error.h"

namespace rt {

class Options {
 public:
  void set(const std::string& key, const std::string& value) { kv_[key] = value; }
  bool has(const std::string& key) const { return kv_.count(key) != 0; }
  const std::map<std::string, std::string>& all() const { return kv_; }

  std::string get_string(const std::string& key, const std::string& def) const {
    auto it = kv_.find(key);
    return it == kv_.end() ? def : it->second;
  }
  int64_t get_int(const std::string& key, int64_t def) const {
    auto it = kv_.find(key);
    if (it == kv_.end()) return def;
    try {
      size_t used = 0;
      long long v = std::stoll(it->second, &used);
      if (used == it->second.size()) return v;
    } catch (const std::exception&) {
    }
    fail("option '", key, "': expected an integer, found '", it->second, "'");
  }
  double get_double(const std::string& key, double def) const {
    auto it = kv_.find(key);
    if (it == kv_.end()) return def;
    try {
      size_t used = 0;
      double v = std::stod(it->second, &used);
      if (used == it->second.size()) return v;
    } catch (const std::exception&) {
    }
    fail("option '", key, "': expected a number, found '", it->second, "'");
  }
  bool get_bool(const std::string& key, bool def) const {
    auto it = kv_.find(key);
    if (it == kv_.end()) return def;
    const std::string& v = it->second;
    if (v == "1" || v == "true" || v == "on" || v == "yes") return true;
    if (v == "0" || v == "false" || v == "off" || v == "no") return false;
    fail("option '", key, "': expected true or false, found '", v, "'");
  }

 private:
  std::map<std::string, std::string> kv_;
};

// Layer indices as an option or flag gives them: "0,5,7" (--set, --layers) or "[0, 5, 7]" (a JSON
// array, as config.json records it); "" and "[]" are none. Sorted. Refused with an rt::Error that
// starts with `what`: an entry that is not an integer, a negative or repeated index, and (when
// n_layers >= 0) one past the model's layers.
inline std::vector<int> parse_layer_indices(const std::string& text, const std::string& what, int64_t n_layers = -1) {
  auto trim = [](std::string t) {
    while (!t.empty() && std::isspace(static_cast<unsigned char>(t.front()))) t.erase(t.begin());
    while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
    return t;
  };
  std::string s = trim(text);
  if (!s.empty() && s.front() == '[') {
    RT_CHECK(s.back() == ']', what, ": unterminated list '", text, "'");
    s = trim(s.substr(1, s.size() - 2));
  }
  const std::string range = n_layers >= 0 ? " (the model has " + std::to_string(n_layers) + " layers: 0.." +
                                                std::to_string(n_layers - 1) + ")"
                                          : "";
  std::vector<int> out;
  if (s.empty()) return out;
  for (size_t start = 0; start <= s.size();) {
    size_t end = s.find(',', start);
    if (end == std::string::npos) end = s.size();
    const std::string item = trim(s.substr(start, end - start));
    char* stop = nullptr;
    errno = 0;
    const long long v = item.empty() ? 0 : std::strtoll(item.c_str(), &stop, 10);
    RT_CHECK(!item.empty() && *stop == '\0' && errno == 0 && v <= INT32_MAX && v >= INT32_MIN, what, ": '", item,
             "' is not a layer index (expected 0-based indices separated by commas, e.g. 0,5,7; found '", text, "')",
             range);
    RT_CHECK(v >= 0, what, ": layer ", v, " is negative (layers are 0-based)", range);
    RT_CHECK(n_layers < 0 || v < n_layers, what, ": layer ", v, " is out of range", range);
    RT_CHECK(std::find(out.begin(), out.end(), static_cast<int>(v)) == out.end(), what, ": layer ", v,
             " is listed twice in '", text, "'");
    out.push_back(static_cast<int>(v));
    start = end + 1;
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace rt
