// The kernel GRE endpoint (ip_gre / ip6gre through libnl-route) and the
// probe that decides between it and the userspace one.
#include <arpa/inet.h>
#include <net/if.h>
#include <netlink/route/link/ip6gre.h>
#include <netlink/route/link/ipgre.h>
#include <unistd.h>

#include <cstring>

#include "common/log.h"
#include "tunnel/endpoint.h"
#include "tunnel/netlink_util.h"

namespace sg::tunnel {

Result<nl::Socket> route_socket() {
  nl::Socket sock(nl_socket_alloc());
  if (!sock) return make_error("out of memory for a netlink socket");
  if (int err = nl_connect(sock.get(), NETLINK_ROUTE); err < 0) return nl_error("connecting to rtnetlink", err);
  return sock;
}

Error nl_error(const std::string& what, int nl_err) { return make_error(what + ": " + nl_geterror(nl_err)); }

namespace {

// GRE_KEY of linux/if_tunnel.h (which clashes with net/if.h): the K bit, as
// the kernel wants IFLA_GRE_[IO]FLAGS, in network byte order.
std::uint16_t gre_key_flag() { return htons(0x2000); }

class KernelEndpoint final : public Endpoint {
 public:
  explicit KernelEndpoint(TunnelConfig c) : c_(std::move(c)) {}
  ~KernelEndpoint() override {
    if (auto st = delete_link_if_present(c_.device); !st)
      log::error("tunnel " + c_.device + ": " + st.error().describe());
  }
  KernelEndpoint(const KernelEndpoint&) = delete;
  KernelEndpoint& operator=(const KernelEndpoint&) = delete;
  [[nodiscard]] EndpointKind kind() const override { return EndpointKind::kernel; }
  [[nodiscard]] const TunnelConfig& config() const override { return c_; }
  [[nodiscard]] EndpointStats stats() const override {
    EndpointStats s;
    auto sock = route_socket();
    if (!sock) return s;
    rtnl_link* raw = nullptr;
    if (rtnl_link_get_kernel(sock->get(), 0, c_.device.c_str(), &raw) < 0) return s;
    nl::Link link(raw);
    s.tx_packets = rtnl_link_get_stat(link.get(), RTNL_LINK_TX_PACKETS);
    s.tx_bytes = rtnl_link_get_stat(link.get(), RTNL_LINK_TX_BYTES);
    s.rx_packets = rtnl_link_get_stat(link.get(), RTNL_LINK_RX_PACKETS);
    s.rx_bytes = rtnl_link_get_stat(link.get(), RTNL_LINK_RX_BYTES);
    s.rx_dropped = rtnl_link_get_stat(link.get(), RTNL_LINK_RX_DROPPED);
    s.tx_errors = rtnl_link_get_stat(link.get(), RTNL_LINK_TX_ERRORS);
    return s;
  }

 private:
  TunnelConfig c_;
};

// The link object for a config: ip_gre for an IPv4 remote, ip6gre for IPv6.
Result<nl::Link> gre_link(const TunnelConfig& c) {
  const bool v4 = c.remote.family == Family::v4;
  nl::Link link(v4 ? rtnl_link_ipgre_alloc() : rtnl_link_ip6gre_alloc());
  if (!link) return make_error("out of memory for a GRE link");
  rtnl_link_set_name(link.get(), c.device.c_str());
  if (v4) {
    std::uint32_t remote = 0, local = 0;
    std::memcpy(&remote, c.remote.bytes.data(), 4);
    if (c.local) std::memcpy(&local, c.local->bytes.data(), 4);
    rtnl_link_ipgre_set_remote(link.get(), remote);
    rtnl_link_ipgre_set_local(link.get(), local);
    rtnl_link_ipgre_set_ttl(link.get(), 64);
    if (c.key) {
      rtnl_link_ipgre_set_iflags(link.get(), gre_key_flag());
      rtnl_link_ipgre_set_oflags(link.get(), gre_key_flag());
      rtnl_link_ipgre_set_ikey(link.get(), htonl(*c.key));
      rtnl_link_ipgre_set_okey(link.get(), htonl(*c.key));
    }
  } else {
    in6_addr remote{}, local{};
    std::memcpy(&remote, c.remote.bytes.data(), 16);
    if (c.local) std::memcpy(&local, c.local->bytes.data(), 16);
    rtnl_link_ip6gre_set_remote(link.get(), &remote);
    rtnl_link_ip6gre_set_local(link.get(), &local);
    rtnl_link_ip6gre_set_ttl(link.get(), 64);
    if (c.key) {
      rtnl_link_ip6gre_set_iflags(link.get(), gre_key_flag());
      rtnl_link_ip6gre_set_oflags(link.get(), gre_key_flag());
      rtnl_link_ip6gre_set_ikey(link.get(), htonl(*c.key));
      rtnl_link_ip6gre_set_okey(link.get(), htonl(*c.key));
    }
  }
  rtnl_link_set_mtu(link.get(), static_cast<unsigned>(effective_mtu(c)));
  rtnl_link_set_flags(link.get(), IFF_UP);
  return link;
}

}  // namespace

Status delete_link_if_present(const std::string& name) {
  if (::if_nametoindex(name.c_str()) == 0) return {};
  auto sock = route_socket();
  if (!sock) return sock.error();
  nl::Link link(rtnl_link_alloc());
  rtnl_link_set_name(link.get(), name.c_str());
  if (int err = rtnl_link_delete(sock->get(), link.get()); err < 0 && err != -NLE_NODEV && err != -NLE_OBJ_NOTFOUND) {
    return nl_error("deleting link " + name, err);
  }
  return {};
}

Result<std::unique_ptr<Endpoint>> open_kernel(const TunnelConfig& c) {
  if (c.device.empty() || c.device.size() >= IFNAMSIZ) {
    return make_error("device name '" + c.device + "' must be 1 to 15 characters");
  }
  if (c.local && c.local->family != c.remote.family) {
    return make_error("local " + c.local->to_string() + " and remote " + c.remote.to_string() +
                      " are of different families");
  }
  // A link left by a daemon that crashed: rebuilt from the state store.
  if (auto st = delete_link_if_present(c.device); !st) return st.error();
  auto sock = route_socket();
  if (!sock) return sock.error();
  auto link = gre_link(c);
  if (!link) return link.error();
  if (int err = rtnl_link_add(sock->get(), link->get(), NLM_F_CREATE | NLM_F_EXCL); err < 0) {
    return nl_error(
        std::string("creating ") + (c.remote.family == Family::v4 ? "ip_gre" : "ip6gre") + " link " + c.device, err);
  }
  return std::unique_ptr<Endpoint>(new KernelEndpoint(c));
}

Probe probe_kernel_gre() {
  Probe p;
  auto sock = route_socket();
  if (!sock) {
    p.reason = "cannot ask the kernel (" + sock.error().message + ")";
    return p;
  }
  // A throwaway link to a documentation address; it never carries traffic.
  TunnelConfig c;
  c.device = "sgprobe" + std::to_string(::getpid() % 100000);
  c.remote = *IpAddress::parse("203.0.113.254");
  auto link = gre_link(c);
  if (!link) {
    p.reason = link.error().message;
    return p;
  }
  rtnl_link_unset_flags(link->get(), IFF_UP);
  int err = rtnl_link_add(sock->get(), link->get(), NLM_F_CREATE | NLM_F_EXCL);
  if (err < 0) {
    p.reason = std::string("kernel has no ip_gre (") + nl_geterror(err) + ")";
    return p;
  }
  if (auto st = delete_link_if_present(c.device); !st) log::error("GRE probe: " + st.error().describe());
  p.kind = EndpointKind::kernel;
  p.reason = "kernel has ip_gre";
  return p;
}

}  // namespace sg::tunnel
