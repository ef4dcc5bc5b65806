// surrogated.toml: where the daemon keeps its state, which hypervisor it
// drives, which addresses it hands out and which VM templates exist.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

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
  // May name per-VM values in braces, filled in when the VM starts:
  // {vm} {ipv4} {gateway4} {ipv6} {gateway6} {mac} (see expand_cmdline).
  std::string cmdline;
  std::string disk;
  int cpu_quota_percent = 0;  // 0: no cputune limit
};

// The per-VM values a template's cmdline may name, e.g. "ip={ipv4}".
inline const std::vector<std::string>& cmdline_placeholders() {
  static const std::vector<std::string> names = {"vm", "ipv4", "gateway4", "ipv6", "gateway6", "mac"};
  return names;
}
// Replaces each {name} in `cmdline` by values[name] (a value may be empty,
// e.g. {ipv6} without an IPv6 pool). A name that is not in `values` or an
// unclosed brace is an error: a typo must not boot a guest without its
// address.
Result<std::string> expand_cmdline(std::string_view cmdline, const std::map<std::string, std::string>& values);

// [api]: the HTTPS API for remote clients (docs/api.md). Off unless `listen`
// is set. Clients authenticate with a TLS certificate issued by one of
// client_ca_files; its key is the client's identity.
struct ApiConfig {
  std::string listen;  // "127.0.0.1:8443", "[::1]:8443"; empty: off
  std::string cert;    // server certificate chain (PEM)
  std::string key;     // its private key (PEM)
  std::vector<std::string> client_ca_files;
  int max_body_kb = 64;          // larger bodies: 413
  int requests_per_second = 10;  // token bucket per client fingerprint
  int burst = 20;                //   ...and its depth
  int max_vms_per_client = 4;    // running VMs an API client may hold; 0: no limit
  int max_vms_trusted = 0;       // running VMs of each level, all clients together,
  int max_vms_semi_trusted = 0;  //   above which API allocations are refused; 0: no limit
  int max_vms_untrusted = 0;
  int threads = 32;            // HTTP worker threads (one per open connection)
  int io_timeout_s = 10;       // read/write/keep-alive timeouts of a connection
  int request_timeout_s = 60;  // how long a request may wait for the daemon
};

// [web]: the owner's web page and /metrics (docs/web.md). Off unless
// `listen` is set; plain HTTP, so it belongs on loopback.
struct WebConfig {
  std::string listen;      // "127.0.0.1:8080"; empty: off
  std::string token_file;  // default: next to the control socket, "web-token"
  bool allow_non_loopback = false;
};

// "127.0.0.1:8443" or "[::1]:8443" -> host and port.
Result<std::pair<std::string, int>> parse_listen(std::string_view text);

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

  // Authcerts: the CAs the owner trusts to certify node addresses, their
  // CRLs, and how strictly revocation is checked ("when-present": CAs with a
  // configured CRL are checked; "require-all": every CA needs a current CRL).
  std::vector<std::string> pki_ca_files;
  std::vector<std::string> pki_crl_files;
  std::string pki_crl_mode = "when-present";

  // Flow log: its own SQLite database, batched commits, retention.
  std::string flowlog_path;  // default: <state_dir>/flows.db
  std::int64_t flowlog_retention_s = 90LL * 86400;
  std::int64_t flowlog_max_bytes = 10LL << 30;
  int flowlog_batch_ms = 1000;
  int flowlog_drops_per_second = 10;
  int flowlog_netlink_buffer_kb = 16384;  // conntrack/nflog socket buffers

  // Traffic shaping (docs/shaping.md): an HTB tree on each egress device and
  // on each VM's tap. No devices listed: every non-VM interface that carries
  // a route when the daemon starts.
  bool shaping_enabled = true;
  std::vector<std::string> shaping_egress_devices;
  int shaping_tc_major = 0x53;

  std::map<std::string, VmTemplate> templates;
  std::string default_template = "small";

  ApiConfig api;
  WebConfig web;
};

// Parses a config; every problem is reported as "file:line:col: message".
Result<DaemonConfig> parse_daemon_config(std::string_view text, const std::string& filename);
Result<DaemonConfig> load_daemon_config(const std::string& path);

}  // namespace sg
