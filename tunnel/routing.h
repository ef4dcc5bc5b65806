// Policy routing of a tunnel through libnl-route: packets carrying the VM's
// tunnel mark look up a table of their own, whose only route is the tunnel
// device. Also the client end's host routes and the sysctls a tunnel needs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/net.h"
#include "common/result.h"

namespace sg::tunnel {

struct PolicyRoute {
  std::string device;          // "sgt3"
  std::uint32_t fwmark = 0;    // exact mark (mask 0xffffffff)
  std::uint32_t table = 0;     // the VM's own routing table
  std::uint32_t priority = 0;  // of the ip rule: before "main" (32766)
  bool v4 = true, v6 = true;
};

// `ip rule add fwmark M lookup T priority P` and `ip route add default dev D
// table T`, for each family; and no reverse-path filtering on the device
// (replies come from anywhere; needs net.ipv4.conf.all.rp_filter = 0).
// Replaces an identical rule left behind.
Status install_policy_route(const PolicyRoute& r);
// Removes rules then routes; what is already gone is no error.
Status remove_policy_route(const PolicyRoute& r);

struct InstalledRule {
  int family = 0;  // AF_INET / AF_INET6
  std::uint32_t fwmark = 0, table = 0;
};
// Rules at this priority (the daemon's own; reconciliation removes strays).
Result<std::vector<InstalledRule>> rules_at(std::uint32_t priority);
Status remove_rule(const InstalledRule& rule, std::uint32_t priority);

// Client end: `ip route add ADDR/32 dev D` (or /128) for each address.
Status add_host_routes(const std::string& device, const std::vector<IpAddress>& addresses);

// Writes a /proc/sys value, e.g. ("net/ipv4/conf/sgt3/rp_filter", "2").
Status write_sysctl(const std::string& key, const std::string& value);
[[nodiscard]] std::string read_sysctl(const std::string& key);

}  // namespace sg::tunnel
