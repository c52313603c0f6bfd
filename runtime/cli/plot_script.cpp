#include "cli/plot_script.h"

#include <sys/wait.h>

#include <cstdlib>
#include <iostream>

#include "rt/sdk/error.h"

namespace rt {
namespace {

std::string shell_quote(const std::string& text) {
  std::string q = "'";
  for (char c : text) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

}  // namespace

void run_plot_script(const std::string& script, const std::string& input, const std::string& png) {
  const std::string path = std::string(RT_SOURCE_TOOLS_DIR) + "/" + script;
  const std::string cmdline = "python3 " + shell_quote(path) + " " + shell_quote(input) + " " + shell_quote(png);
  std::cout.flush();
  const int status = std::system(cmdline.c_str());
  RT_CHECK(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "--png ", png, ": ", path, " failed (",
           WIFEXITED(status) ? "exit code " + std::to_string(WEXITSTATUS(status)) : std::string("killed"),
           "; its message is above); the report is in ", input);
}

}  // namespace rt
