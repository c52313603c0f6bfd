// `runtime`: the command-line entry point. Every failure ends here as one "error: ..." line on
// stderr and a non-zero exit; nothing escapes as an uncaught exception.
#include <iostream>
#include <new>

#include "cli/commands.h"
#include "cli/plugin_settings.h"
#include "rt/sdk/error.h"
#include "rt/sdk/plugin.h"

int main(int argc, char** argv) {
  CLI::App app{
      "runtime: a Qwen2.5 transformer runtime with pluggable attention backends (full_causal, swa, L2A).\n"
      "Run `runtime <command> --help` for each command's options and an example."};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("runtime 0.1.0, plugin ABI ") + std::to_string(rt::kPluginAbiVersion));
  rt::register_logits(app);
  rt::register_generate(app);
  rt::register_tokenize(app);
  rt::register_plugins(app);
  rt::register_profile(app);
  rt::register_train(app);
  rt::register_sparsity(app);
  rt::register_eval(app);
  rt::register_prune(app);
  rt::register_convert(app);
  rt::register_launch(app);
  // Every command with both --window and --set (train included): the two may not disagree. Checked
  // once the command's options are parsed, before it runs.
  for (CLI::App* sub : app.get_subcommands({})) {
    CLI::Option* window = sub->get_option_no_throw("--window");
    CLI::Option* set = sub->get_option_no_throw("--set");
    if (window == nullptr || set == nullptr) continue;
    sub->parse_complete_callback([window, set] {
      if (window->count() == 0 || set->count() == 0) return;
      rt::check_window_conflict(window->as<int64_t>(), set->as<std::vector<std::string>>());
    });
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "error: " << e.what() << " (see --help)\n";  // one line, like every other error
    return 2;
  } catch (const rt::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const std::bad_alloc&) {
    std::cerr << "error: out of memory\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
