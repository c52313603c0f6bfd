// `--set key=value` plugin options, optionally scoped to one backend of the run:
//
//   --set sparsity=0.8              every backend of the run gets sparsity=0.8
//   --set l2a_dense.sparsity=0.8    only l2a_dense does (and it beats an unscoped sparsity)
//
// so that an A/B run (`profile --attention full_causal,l2a_dense`) can give one backend options the
// others do not take. Plugin option keys never contain a dot, so the word before the first dot of
// a key is a scope, except for the train command's config sections `train.` and `attention.`
// (`--set train.lr=3e-4 --set attention.window=512`), which pass through unscoped. A scope must
// name a backend of the run; anything else (a typo, a plugin the run does not use) is an error
// naming the argument, the scope and the run's backends.
//
// Every command resolves --set through these functions (open_model_session; cmd_train for the
// split between its config and the plugin); this file has no other dependency so that tests can
// link it alone.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "rt/sdk/options.h"

namespace rt {

struct SetOption {
  std::string arg;    // as given: "l2a_dense.sparsity=0.8"
  std::string scope;  // "l2a_dense"; empty when unscoped
  std::string key;    // "sparsity"; unscoped: the whole left-hand side ("sparsity", "train.lr")
  std::string value;  // "0.8"
};

// Splits each "key=value" (error for a missing '=' or an empty key or scoped key). Syntax only:
// scopes are not checked here.
std::vector<SetOption> parse_set_options(const std::vector<std::string>& set);

// Fails, naming the argument, its scope and `run_backends`, for a scope that is not one of
// `run_backends`. `known_plugins` (the attention plugins the registry found; may be empty) only
// sharpens the message for a scope that names no plugin at all.
void check_set_scopes(const std::vector<SetOption>& set, const std::vector<std::string>& run_backends,
                      const std::vector<std::string>& known_plugins = {});

// The options `backend` gets: every unscoped option, then the ones scoped to `backend` (so a
// scoped option overrides the unscoped one with the same key, whatever their order on the command
// line). Options scoped to other backends are left out.
Options set_options_for(const std::vector<SetOption>& set, const std::string& backend);

// parse_set_options + check_set_scopes + set_options_for: the --set options of one backend of a
// run. This is what every command uses (through open_model_session).
Options backend_set_options(const std::vector<std::string>& set, const std::string& backend,
                            const std::vector<std::string>& run_backends,
                            const std::vector<std::string>& known_plugins = {});

// --window W and a --set that gives the window too (window=V, attention.window=V or
// BACKEND.window=V) with another value: an error naming both, instead of --window silently winning.
// The same value given twice is fine. `window` <= 0 means --window was not given.
void check_window_conflict(int64_t window, const std::vector<std::string>& set);

}  // namespace rt
