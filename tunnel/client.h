// The client's end of a VM's tunnel (`surrogatectl tunnel client`): the GRE
// endpoint towards the host, routes for the VM's addresses into it, and
// masquerading of the VM's traffic out of the client's own uplink, so what
// the VM reaches sees the client's address. Also the same setup as `ip` and
// `nft` commands for clients that prefer their own tools.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/net.h"
#include "netpolicy/ruleset.h"
#include "tunnel/endpoint.h"

namespace sg::tunnel {

struct ClientSetup {
  std::string vm;                       // "sg3"
  IpAddress host;                       // the host's end (outer destination)
  std::optional<IpAddress> local;       // the client's outer address; empty: the kernel picks
  std::vector<IpAddress> vm_addresses;  // inner: the VM's own addresses
  std::optional<std::uint32_t> key;
  int mtu = 0;            // 0: 1500 less the GRE overhead
  std::string uplink;     // masquerade out of this interface only; empty: any but the tunnel
  std::string device;     // empty: "sgc-" + vm
  std::string nft_table;  // empty: "surrogate_tunnel_" + vm

  [[nodiscard]] std::string device_name() const { return device.empty() ? "sgc-" + vm : device; }
  [[nodiscard]] std::string table_name() const { return nft_table.empty() ? "surrogate_tunnel_" + vm : nft_table; }
};

[[nodiscard]] TunnelConfig client_endpoint_config(const ClientSetup& s);
// Forward filter (only the VM's own sources, only out of the uplink) and
// the masquerade, as one inet table.
[[nodiscard]] netpolicy::Ruleset client_ruleset(const ClientSetup& s);
// Shell commands for a kernel-GRE client end (ip, sysctl, nft).
[[nodiscard]] std::string client_commands(const ClientSetup& s);

// The running client end: endpoint, routes, sysctls, nftables table.
// Destroying it removes the table and the device (the routes go with it).
class ClientTunnel {
 public:
  static Result<std::unique_ptr<ClientTunnel>> open(const ClientSetup& s, EndpointKind kind);
  ~ClientTunnel();
  ClientTunnel(const ClientTunnel&) = delete;
  ClientTunnel& operator=(const ClientTunnel&) = delete;
  [[nodiscard]] const Endpoint& endpoint() const { return *endpoint_; }

 private:
  ClientTunnel(ClientSetup s, std::unique_ptr<Endpoint> e) : setup_(std::move(s)), endpoint_(std::move(e)) {}
  ClientSetup setup_;
  std::unique_ptr<Endpoint> endpoint_;
  bool table_installed_ = false;
};

}  // namespace sg::tunnel
