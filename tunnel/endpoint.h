// One end of a GRE tunnel: an interface whose packets travel GRE-encapsulated
// (RFC 2784) to a fixed remote address. Two implementations with the same
// wire format, so either end may use either:
//   - kernel: an ip_gre / ip6gre link made through libnl-route;
//   - userspace: a TUN device plus a raw IPPROTO_GRE socket, served by a
//     thread of its own (never the daemon's event loop), for kernels built
//     without GRE (docs/tunnel.md has its throughput limits).
// probe_kernel_gre() decides, once, at start, by trying.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/net.h"
#include "common/result.h"

namespace sg::tunnel {

enum class EndpointKind : std::uint8_t { kernel, userspace };
[[nodiscard]] const char* to_string(EndpointKind k);

struct TunnelConfig {
  std::string device;              // interface name, at most 15 characters
  std::optional<IpAddress> local;  // outer source; empty: the kernel picks it
  IpAddress remote;                // outer destination: the other end
  std::optional<std::uint32_t> key;
  int mtu = 0;  // inner MTU; 0: 1500 less the GRE overhead
  // Inner packets from the wire are written to the device only when this
  // end owns their destination (host end: the VM's addresses) or, with
  // check_source, when they come from these addresses (client end: the VM's).
  std::vector<IpAddress> inner_peers;
  bool check_source = false;
  // SO_PRIORITY of the outer packets (userspace): the tc class they are
  // shaped in on the egress device. 0: none.
  std::uint32_t socket_priority = 0;
};

// The effective MTU of a config (mtu, or 1500 less the overhead).
[[nodiscard]] int effective_mtu(const TunnelConfig& c);

struct EndpointStats {
  std::uint64_t tx_packets = 0, tx_bytes = 0;  // into the tunnel
  std::uint64_t rx_packets = 0, rx_bytes = 0;  // out of the tunnel
  std::uint64_t rx_dropped = 0;                // malformed, wrong key, not for this end
  std::uint64_t tx_errors = 0;                 // the socket refused
};

class Endpoint {
 public:
  virtual ~Endpoint() = default;
  [[nodiscard]] virtual EndpointKind kind() const = 0;
  [[nodiscard]] virtual const TunnelConfig& config() const = 0;
  [[nodiscard]] virtual EndpointStats stats() const = 0;
};

// Creates the TUN device (up, with the MTU) and the raw socket, and starts
// the forwarding thread. Destroying the endpoint stops the thread and the
// device disappears with its descriptor.
Result<std::unique_ptr<Endpoint>> open_userspace(const TunnelConfig& c);
// Creates an ip_gre (IPv4 remote) or ip6gre (IPv6 remote) link, up, with the
// MTU; a stale link of the same name is replaced. Destroying the endpoint
// deletes the link.
Result<std::unique_ptr<Endpoint>> open_kernel(const TunnelConfig& c);
Result<std::unique_ptr<Endpoint>> open_endpoint(EndpointKind kind, const TunnelConfig& c);

struct Probe {
  EndpointKind kind = EndpointKind::userspace;
  std::string reason;  // "kernel has no ip_gre (Operation not supported)"
};
// Tries to create a throwaway ip_gre link in the current network namespace
// and deletes it again: the kernel endpoint when that works.
[[nodiscard]] Probe probe_kernel_gre();

// Deletes a link by name if it exists (stale kernel tunnel after a crash).
Status delete_link_if_present(const std::string& name);

}  // namespace sg::tunnel
