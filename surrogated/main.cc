// surrogated: the host daemon.
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iostream>

#include "common/log.h"
#include "common/main_guard.h"
#include "surrogated/config.h"
#include "surrogated/daemon.h"

namespace {
int run_main(int argc, char** argv) {
  CLI::App app{"surrogated: rents VMs to clients and keeps the host from becoming an attack platform"};
  std::string config_path = "/etc/surrogated/surrogated.toml";
  bool check_only = false;
  app.add_option("-c,--config", config_path, "path of surrogated.toml");
  app.add_flag("--check-config", check_only, "validate the configuration and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  auto cfg = sg::load_daemon_config(config_path);
  if (!cfg) {
    std::cerr << cfg.error().describe() << "\n";
    return 2;
  }
  if (check_only) {
    std::cout << config_path << ": OK\n";
    return 0;
  }
  static const std::pair<const char*, sg::log::Level> levels[] = {{"debug", sg::log::Level::debug},
                                                                  {"info", sg::log::Level::info},
                                                                  {"notice", sg::log::Level::notice},
                                                                  {"warning", sg::log::Level::warning},
                                                                  {"error", sg::log::Level::error}};
  for (const auto& [word, level] : levels) {
    if (cfg->log_level == word) sg::log::set_min_level(level);
  }
  auto daemon = sg::Daemon::create(std::move(*cfg));
  if (!daemon) {
    sg::log::error("cannot start: " + daemon.error().describe());
    return 1;
  }
  return (*daemon)->run();
}
}  // namespace

int main(int argc, char** argv) {
  return sg::guarded_main("surrogated", [&] { return run_main(argc, argv); });
}
