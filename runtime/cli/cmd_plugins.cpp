// runtime plugins: what the search path holds, and what was refused and why.
#include <iostream>

#include "cli/commands.h"
#include "common/text_table.h"
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
    // Columns as wide as their widest cell: a long plugin name widens its column.
    using Col = TextTable::Column;
    constexpr auto L = TextTable::Align::Left;
    TextTable attn({Col{"name", L}, Col{"version", L}, Col{"devices", L}, Col{"backward", L}, Col{"decode", L},
                    Col{"kv", L}, Col{"description", L}});
    for (const auto& p : reg.plugins()) {
      if (p.kind != PluginKind::Attention) continue;
      std::string dev = std::string(p.caps.cpu ? "cpu" : "") + (p.caps.cpu && p.caps.cuda ? "," : "") +
                        (p.caps.cuda ? "cuda" : "");
      attn.add_row({p.name, p.version, dev, p.caps.backward ? "yes" : "no", p.caps.decode ? "yes" : "no",
                    kv_policy_name(p.caps.kv), p.description});
      attn.add_row({"", "", "", "", "", "", p.path.string()});
    }
    std::cout << attn.str();
    TextTable routers({Col{"name", L}, Col{"version", L}, Col{"description", L}});
    for (const auto& p : reg.plugins()) {
      if (p.kind != PluginKind::Router) continue;
      routers.add_row({p.name, p.version, p.description});
      routers.add_row({"", "", p.path.string()});
    }
    if (routers.rows() > 0) std::cout << "\nrouters (for routed backends: --set router=NAME)\n" << routers.str();
    for (const auto& r : reg.refused()) std::cout << "refused " << r.path.string() << ": " << r.reason << "\n";
    std::cout << "searched:";
    for (const auto& s : reg.searched()) std::cout << " " << s.string();
    std::cout << "\n";
  });
}

}  // namespace rt
