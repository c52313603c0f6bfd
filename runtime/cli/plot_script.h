// Runs one of the plotting scripts in tools/ (matplotlib) for a command's --png: the script prints
// its own one-line reason on failure (a missing matplotlib says how to install it); the error here
// names the flag and the report that was written anyway.
#pragma once

#include <string>

namespace rt {

// python3 tools/<script> <input> <png>
void run_plot_script(const std::string& script, const std::string& input, const std::string& png);

}  // namespace rt
