// runtime plugins: what the search path holds, and what was refused and why.
#include <iomanip>
#include <iostream>

#include "cli/commands.h"
#include "plugin_host/plugin_registry.h"

namespace rt {

static const char* kv_policy_name(KvPolicy p) {
  switch (p) {
    case KvPolicy::Full: return "full";
    case KvPolicy::RingBuffer: return "ring";
    case KvPolicy::None: return "none";
    case KvPolicy::Custom: return "custom";
  }
  return "?";
}

void register_plugins(CLI::App& app) {
  auto extra = std::make_shared<std::vector<std::string>>();
  CLI::App* cmd = app.add_subcommand("plugins", "List the attention and router plugins found, with versions and capabilities");
  cmd->footer("\nSearch order: --plugin paths, $RUNTIME_PLUGIN_PATH (colon-separated), the executable's directory.");
  cmd->add_option("--plugin", *extra, "Extra plugin file or directory (repeatable)");
  cmd->callback([extra] {
    PluginRegistry reg;
    reg.discover(*extra);
    std::cout << std::left << std::setw(14) << "name" << std::setw(9) << "version" << std::setw(11) << "devices"
              << std::setw(9) << "backward" << std::setw(8) << "decode" << std::setw(8) << "kv"
              << "description\n";
    for (const auto& p : reg.plugins()) {
      if (p.kind != PluginKind::Attention) continue;
      std::string dev = std::string(p.caps.cpu ? "cpu" : "") + (p.caps.cpu && p.caps.cuda ? "," : "") +
                        (p.caps.cuda ? "cuda" : "");
      std::cout << std::setw(14) << p.name << std::setw(9) << p.version << std::setw(11) << dev << std::setw(9)
                << (p.caps.backward ? "yes" : "no") << std::setw(8) << (p.caps.decode ? "yes" : "no")
                << std::setw(8) << kv_policy_name(p.caps.kv) << p.description << "\n";
      std::cout << "              " << p.path.string() << "\n";
    }
    bool header = false;
    for (const auto& p : reg.plugins()) {
      if (p.kind != PluginKind::Router) continue;
      if (!header) std::cout << "\nrouters (for routed backends: --set router=NAME)\n";
      header = true;
      std::cout << "  " << std::setw(16) << p.name << std::setw(9) << p.version << p.description << "\n"
                << "  " << std::setw(16) << "" << p.path.string() << "\n";
    }
    for (const auto& r : reg.refused()) std::cout << "refused " << r.path.string() << ": " << r.reason << "\n";
    std::cout << "searched:";
    for (const auto& s : reg.searched()) std::cout << " " << s.string();
    std::cout << "\n";
  });
}

}  // namespace rt
