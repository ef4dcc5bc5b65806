// The userspace GRE endpoint: a TUN device and a raw IPPROTO_GRE socket,
// joined by one thread per tunnel that moves packets both ways.
#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

// After net/if.h, so that it skips its own copy of struct ifreq.
#include <linux/if_tun.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <thread>

#include "common/log.h"
#include "common/raii/fd.h"
#include "tunnel/endpoint.h"
#include "tunnel/gre.h"

namespace sg::tunnel {
namespace {

// Packets handled per wake-up and direction before polling again, so one
// busy direction cannot starve the other.
constexpr int kBatch = 64;
constexpr std::size_t kBuffer = 65536 + 64;
constexpr int kSocketBuffer = 4 * 1024 * 1024;

Result<Fd> open_tun(const std::string& name) {
  if (name.empty() || name.size() >= IFNAMSIZ)
    return make_error("device name '" + name + "' must be 1 to 15 characters");
  Fd fd(::open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK));
  if (!fd.valid()) return make_sys_error("cannot open /dev/net/tun (is the tun module available?)");
  ifreq ifr{};
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
  std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
  if (::ioctl(fd.get(), TUNSETIFF, &ifr) != 0) {
    return make_sys_error("cannot create TUN device " + name + " (an interface of that name may exist already)");
  }
  return fd;
}

Status set_mtu_up(const std::string& name, int mtu) {
  Fd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s.valid()) return make_sys_error("socket for interface ioctls");
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
  ifr.ifr_mtu = mtu;
  if (::ioctl(s.get(), SIOCSIFMTU, &ifr) != 0)
    return make_sys_error("setting MTU " + std::to_string(mtu) + " on " + name);
  if (::ioctl(s.get(), SIOCGIFFLAGS, &ifr) != 0) return make_sys_error("reading flags of " + name);
  ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
  if (::ioctl(s.get(), SIOCSIFFLAGS, &ifr) != 0) return make_sys_error("bringing " + name + " up");
  return {};
}

socklen_t to_sockaddr(const IpAddress& a, sockaddr_storage& ss) {
  std::memset(&ss, 0, sizeof ss);
  if (a.family == Family::v4) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    std::memcpy(&sin->sin_addr, a.bytes.data(), 4);
    return sizeof(sockaddr_in);
  }
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
  sin6->sin6_family = AF_INET6;
  std::memcpy(&sin6->sin6_addr, a.bytes.data(), 16);
  return sizeof(sockaddr_in6);
}

Result<Fd> open_gre_socket(const TunnelConfig& c) {
  const bool v4 = c.remote.family == Family::v4;
  if (c.local && c.local->family != c.remote.family) {
    return make_error("local " + c.local->to_string() + " and remote " + c.remote.to_string() +
                      " are of different families");
  }
  Fd s(::socket(v4 ? AF_INET : AF_INET6, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_GRE));
  if (!s.valid()) return make_sys_error("cannot open a raw GRE socket (needs CAP_NET_RAW)");
  int big = kSocketBuffer;
  // FORCE variants exceed rmem_max as root; the plain ones are the fallback.
  if (::setsockopt(s.get(), SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big) != 0) {
    (void)::setsockopt(s.get(), SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  }
  if (::setsockopt(s.get(), SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big) != 0) {
    (void)::setsockopt(s.get(), SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  }
  // The inner MTU already leaves room for the headers; should the path be
  // narrower, fragmenting the outer packet beats dropping it.
  static_assert(IP_PMTUDISC_DONT == IPV6_PMTUDISC_DONT);
  int dont = IP_PMTUDISC_DONT;
  (void)::setsockopt(s.get(), v4 ? IPPROTO_IP : IPPROTO_IPV6, v4 ? IP_MTU_DISCOVER : IPV6_MTU_DISCOVER, &dont,
                     sizeof dont);
  if (c.socket_priority != 0) {
    int prio = static_cast<int>(c.socket_priority);
    if (::setsockopt(s.get(), SOL_SOCKET, SO_PRIORITY, &prio, sizeof prio) != 0) {
      return make_sys_error("setting SO_PRIORITY on the GRE socket");
    }
  }
  sockaddr_storage ss{};
  if (c.local) {
    socklen_t len = to_sockaddr(*c.local, ss);
    if (::bind(s.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
      return make_sys_error("cannot use local address " + c.local->to_string() + " (is it configured here?)");
    }
  }
  // Connected: the kernel hands this socket only GRE from the remote end.
  socklen_t len = to_sockaddr(c.remote, ss);
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    return make_sys_error("cannot reach " + c.remote.to_string() + " (no route?)");
  }
  return s;
}

class UserspaceEndpoint final : public Endpoint {
 public:
  UserspaceEndpoint(TunnelConfig c, Fd tun, Fd sock, Fd stop)
      : c_(std::move(c)), tun_(std::move(tun)), sock_(std::move(sock)), stop_(std::move(stop)) {
    thread_ = std::thread([this] { run(); });
  }
  ~UserspaceEndpoint() override {
    std::uint64_t one = 1;
    if (::write(stop_.get(), &one, sizeof one) < 0) log::error("tunnel " + c_.device + ": cannot signal its thread");
    if (thread_.joinable()) thread_.join();
  }
  UserspaceEndpoint(const UserspaceEndpoint&) = delete;
  UserspaceEndpoint& operator=(const UserspaceEndpoint&) = delete;

  [[nodiscard]] EndpointKind kind() const override { return EndpointKind::userspace; }
  [[nodiscard]] const TunnelConfig& config() const override { return c_; }
  [[nodiscard]] EndpointStats stats() const override {
    EndpointStats s;
    s.tx_packets = tx_packets_.load(std::memory_order_relaxed);
    s.tx_bytes = tx_bytes_.load(std::memory_order_relaxed);
    s.rx_packets = rx_packets_.load(std::memory_order_relaxed);
    s.rx_bytes = rx_bytes_.load(std::memory_order_relaxed);
    s.rx_dropped = rx_dropped_.load(std::memory_order_relaxed);
    s.tx_errors = tx_errors_.load(std::memory_order_relaxed);
    return s;
  }

 private:
  void run() {
    std::vector<std::uint8_t> buf(kBuffer);
    for (;;) {
      std::array<pollfd, 3> fds{{{tun_.get(), POLLIN, 0}, {sock_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}}};
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        log::error(make_sys_error("tunnel " + c_.device + ": poll failed; the tunnel stops").describe());
        return;
      }
      if (fds[2].revents != 0) return;
      if (fds[0].revents != 0) from_device(buf);
      if (fds[1].revents != 0) from_wire(buf);
    }
  }

  // Inner packets the kernel routed into the device: encapsulate and send.
  void from_device(std::vector<std::uint8_t>& buf) {
    constexpr std::size_t kRoom = 16;  // the largest header we write
    for (int i = 0; i < kBatch; ++i) {
      ssize_t n = ::read(tun_.get(), buf.data() + kRoom, buf.size() - kRoom);
      if (n <= 0) return;
      std::span<const std::uint8_t> inner(buf.data() + kRoom, static_cast<std::size_t>(n));
      auto proto = protocol_of(inner);
      if (!proto) continue;
      GreHeader h;
      h.protocol = *proto;
      h.key = c_.key;
      std::array<std::uint8_t, kRoom> hdr{};
      std::size_t hl = encode_header(h, inner, hdr.data());
      std::memcpy(buf.data() + kRoom - hl, hdr.data(), hl);
      if (::send(sock_.get(), buf.data() + kRoom - hl, hl + inner.size(), 0) < 0) {
        tx_errors_.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      tx_packets_.fetch_add(1, std::memory_order_relaxed);
      tx_bytes_.fetch_add(inner.size(), std::memory_order_relaxed);
    }
  }

  // GRE from the remote end: check, decapsulate, hand to the kernel.
  void from_wire(std::vector<std::uint8_t>& buf) {
    for (int i = 0; i < kBatch; ++i) {
      ssize_t n = ::recv(sock_.get(), buf.data(), buf.size(), 0);
      if (n <= 0) return;
      std::span<const std::uint8_t> pkt(buf.data(), static_cast<std::size_t>(n));
      if (!accept(pkt)) rx_dropped_.fetch_add(1, std::memory_order_relaxed);
    }
  }

  bool accept(std::span<const std::uint8_t> pkt) {
    if (c_.remote.family == Family::v4) {
      auto gre = strip_ipv4(pkt);
      if (!gre) return false;
      pkt = *gre;
    }
    auto d = decode(pkt);
    if (!d || d->header.key != c_.key) return false;
    auto inner = inspect_inner(d->header.protocol, d->payload);
    if (!inner) return false;
    const IpAddress& who = c_.check_source ? inner->source : inner->destination;
    if (!c_.inner_peers.empty() &&
        std::find(c_.inner_peers.begin(), c_.inner_peers.end(), who) == c_.inner_peers.end()) {
      return false;
    }
    if (::write(tun_.get(), d->payload.data(), d->payload.size()) < 0) return false;
    rx_packets_.fetch_add(1, std::memory_order_relaxed);
    rx_bytes_.fetch_add(d->payload.size(), std::memory_order_relaxed);
    return true;
  }

  TunnelConfig c_;
  Fd tun_, sock_, stop_;
  std::thread thread_;
  std::atomic<std::uint64_t> tx_packets_{0}, tx_bytes_{0}, rx_packets_{0}, rx_bytes_{0}, rx_dropped_{0}, tx_errors_{0};
};

}  // namespace

const char* to_string(EndpointKind k) { return k == EndpointKind::kernel ? "kernel" : "userspace"; }

int effective_mtu(const TunnelConfig& c) { return c.mtu > 0 ? c.mtu : tunnel_mtu(c.remote.family, c.key.has_value()); }

Result<std::unique_ptr<Endpoint>> open_userspace(const TunnelConfig& c) {
  auto sock = open_gre_socket(c);
  if (!sock) return sock.error();
  auto tun = open_tun(c.device);
  if (!tun) return tun.error();
  if (auto st = set_mtu_up(c.device, effective_mtu(c)); !st) return st.error();
  Fd stop(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop.valid()) return make_sys_error("eventfd for the tunnel thread");
  return std::unique_ptr<Endpoint>(new UserspaceEndpoint(c, std::move(*tun), std::move(*sock), std::move(stop)));
}

Result<std::unique_ptr<Endpoint>> open_endpoint(EndpointKind kind, const TunnelConfig& c) {
  return kind == EndpointKind::kernel ? open_kernel(c) : open_userspace(c);
}

}  // namespace sg::tunnel
