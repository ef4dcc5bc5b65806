// surrogatectl tunnel ...: GRE tunnels from a VM back to its client
// (docs/tunnel.md). Wired into ctl_main.cc like the log commands.
#pragma once

#include <optional>

#include "surrogated/ctl_common.h"

namespace sg::ctl {

struct TunnelCommands;
TunnelCommands* add_tunnel_commands(CLI::App& app);
// Runs whichever tunnel command was parsed; nullopt when none was.
std::optional<int> run_tunnel_commands(TunnelCommands* cmds, const Globals& g);

}  // namespace sg::ctl
