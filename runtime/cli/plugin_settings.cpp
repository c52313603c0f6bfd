#include "cli/plugin_settings.h"

#include <algorithm>
#include <exception>

#include "rt/sdk/error.h"

namespace rt {

namespace {

// Words before a dot that are not backend scopes: the sections of `runtime train`'s config.
bool is_config_section(const std::string& word) { return word == "train" || word == "attention"; }

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

bool contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

}  // namespace

std::vector<SetOption> parse_set_options(const std::vector<std::string>& set) {
  std::vector<SetOption> out;
  out.reserve(set.size());
  for (const std::string& arg : set) {
    const size_t eq = arg.find('=');
    RT_CHECK(eq != std::string::npos && eq > 0, "--set: expected key=value or backend.key=value (e.g. ",
             "sparsity=0.8 or l2a_dense.sparsity=0.8), found '", arg, "'");
    SetOption o;
    o.arg = arg;
    o.key = arg.substr(0, eq);
    o.value = arg.substr(eq + 1);
    if (const size_t dot = o.key.find('.'); dot != std::string::npos && !is_config_section(o.key.substr(0, dot))) {
      o.scope = o.key.substr(0, dot);
      o.key = o.key.substr(dot + 1);
      RT_CHECK(!o.scope.empty() && !o.key.empty(), "--set ", arg,
               ": expected backend.key=value (e.g. l2a_dense.sparsity=0.8)");
    }
    out.push_back(std::move(o));
  }
  return out;
}

void check_set_scopes(const std::vector<SetOption>& set, const std::vector<std::string>& run_backends,
                      const std::vector<std::string>& known_plugins) {
  for (const SetOption& o : set) {
    if (o.scope.empty() || contains(run_backends, o.scope)) continue;
    std::string hint;
    if (!known_plugins.empty() && !contains(known_plugins, o.scope))
      hint = "; no attention plugin has that name (found: " + join(known_plugins) + ")";
    fail("--set ", o.arg, ": '", o.scope, "' is not one of the backends of this run (", join(run_backends), ")",
         hint, "; scope an option with one of them, or leave the scope out to give it to every backend");
  }
}

Options set_options_for(const std::vector<SetOption>& set, const std::string& backend) {
  Options opts;
  for (const SetOption& o : set)
    if (o.scope.empty()) opts.set(o.key, o.value);
  for (const SetOption& o : set)
    if (o.scope == backend) opts.set(o.key, o.value);
  return opts;
}

void check_window_conflict(int64_t window, const std::vector<std::string>& set) {
  if (window <= 0) return;
  for (const SetOption& o : parse_set_options(set)) {
    if (o.key != "window" && o.key != "attention.window") continue;
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(o.value, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used > 0 && used == o.value.size() && v == window) continue;
    fail("--window ", window, " and --set ", o.arg, " give different windows; give the window once (--window ",
         window, " alone, or only the --set)");
  }
}

Options backend_set_options(const std::vector<std::string>& set, const std::string& backend,
                            const std::vector<std::string>& run_backends,
                            const std::vector<std::string>& known_plugins) {
  const std::vector<SetOption> parsed = parse_set_options(set);
  check_set_scopes(parsed, run_backends, known_plugins);
  return set_options_for(parsed, backend);
}

}  // namespace rt
