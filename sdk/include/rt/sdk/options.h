// String key/value options handed to a plugin (from --window, the TOML config, --set k=v).
// Typed getters fail with a message naming the key and the bad value.
#pragma once

#include <cstdint>
#include <map>
#include <string>

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

}  // namespace rt
