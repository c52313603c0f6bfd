// Loads compute backends other than the CPU from their modules (sdk/include/rt/sdk/backend_module.h):
// librt_backend_<device>.so, searched in $RUNTIME_BACKEND_PATH (colon-separated directories), then
// in <executable dir>/backends. A module that is missing, fails to load, lacks the entry symbol or
// speaks another ABI is refused with the file and the reason. Modules stay loaded until the process
// exits (the Ops they create, and errors they throw, refer to their code).
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "rt/sdk/ops.h"

namespace rt {

// The directories searched for `device`'s module, in order.
std::vector<std::filesystem::path> backend_module_dirs();

// The first of backend_module_dirs() holding `file`, as a path; empty when none does. searched: the
// directories looked at, comma-separated, for the caller's message.
std::filesystem::path find_backend_module(const std::string& file, std::string* searched);

// Creates the Ops of `device` ("cuda") from its module; throws rt::Error naming the flag
// (`--device <device>`), the file or the directories searched, and the reason.
std::unique_ptr<Ops> load_backend_ops(const std::string& device, int device_index = 0);

}  // namespace rt
