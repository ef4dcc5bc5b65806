// surrogated.toml: where the daemon keeps its state, which hypervisor it
// drives, which addresses it hands out and which VM templates exist.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "common/net.h"
#include "common/result.h"

namespace sg {

struct VmTemplate {
  std::string name;
  int vcpus = 1;
  int memory_mib = 256;
  std::int64_t max_lifetime_s = 24 * 3600;
  std::int64_t default_lifetime_s = 3600;
  // Real guests (qemu/xen): direct kernel boot or a disk image.
  std::string kernel;
  std::string initrd;
  std::string cmdline;
  std::string disk;
  int cpu_quota_percent = 0;  // 0: no cputune limit
};

struct DaemonConfig {
  std::string source;  // file the config was read from, for messages
  std::string state_dir = "/var/lib/surrogated";
  std::string socket_path = "/run/surrogated/control.sock";
  std::string admin_group = "surrogate-admin";
  std::string trust_policy = "/etc/surrogated/trust-policy.toml";
  std::string log_level = "info";

  std::string libvirt_uri = "test:///default";
  // Only with test:// URIs: give each simulated guest a network namespace
  // joined to the host by a veth named like its tap, as a real tap would be.
  bool simulate_guest_network = false;
  std::string domain_prefix = "surrogate-";
  // Simulated guests' namespaces are named <prefix><vm>, e.g. guest-sg3.
  std::string guest_netns_prefix = "guest-";

  std::optional<Prefix> pool_v4;  // carved into /30s: .1 gateway, .2 guest
  std::optional<Prefix> pool_v6;  // carved into /64s: ::1 gateway, ::2 guest
  int max_vms = 64;

  // nftables: the daemon's table (in families inet and arp) and the nflog
  // group every drop is logged to.
  std::string nft_table = "surrogated";
  int nflog_group = 1;

  std::map<std::string, VmTemplate> templates;
  std::string default_template = "small";
};

// Parses a config; every problem is reported as "file:line:col: message".
Result<DaemonConfig> parse_daemon_config(std::string_view text, const std::string& filename);
Result<DaemonConfig> load_daemon_config(const std::string& path);

}  // namespace sg
