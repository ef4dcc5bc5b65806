// Shared by surrogatectl's command files: global flags, key loading, the
// call to the daemon and the one-line error style.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "certs/identity.h"

namespace sg::ctl {

struct Globals {
  std::string socket = "/run/surrogated/control.sock";
  std::string key_file;
  bool json = false;
  // --remote https://host:8443: the HTTPS API instead of the socket, with
  // --cert (client certificate for --key) and --cacert (the API's CA).
  std::string remote;
  std::string cert_file;
  std::string cacert_file;
};

// Prints "surrogatectl: MESSAGE" on stderr and returns code.
int fail(const std::string& message, int code = 1);
// Loads the client's key when --key (or SURROGATE_KEY) names one.
std::optional<certs::KeyPair> load_key(const Globals& g, bool required, int& rc);
// Calls the daemon; prints the error and returns nullopt on failure (rc: 3
// unreachable, 4 not found, 1 other refusals).
std::optional<nlohmann::json> call(const Globals& g, const std::string& op, const nlohmann::json& args,
                                   const certs::KeyPair* key, int& rc);

// The authcert, pki, flow-log, block and audit commands (ctl_log_cmds.cc).
struct LogCommands;
LogCommands* add_log_commands(CLI::App& app);
// Runs whichever of them was parsed; nullopt when none was.
std::optional<int> run_log_commands(LogCommands* cmds, const Globals& g);

}  // namespace sg::ctl
