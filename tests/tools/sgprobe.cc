// sgprobe: small, deterministic traffic generator for the namespace tests.
//
//   sgprobe tcp-connect ADDR PORT [TIMEOUT_MS]   exit 0 connected, 2 refused (reached), 3 timed out
//   sgprobe udp-send ADDR PORT COUNT [INTERVAL_MS] [SRC_PORT] [SRC_ADDR]
//   sgprobe frag ADDR                            a lone non-first IPv4 fragment (raw socket)
//   sgprobe syn ADDR PORT COUNT [INTERVAL_MS]    TCP connects without waiting (SYN floods in miniature)
//   sgprobe udp-spray ADDR FIRST_PORT COUNT      one datagram to each of COUNT ports: COUNT new flows at once
//   sgprobe udp-echo PORT SECONDS [ADDR]         answers every datagram (to ADDR, or any) for SECONDS
#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

namespace {

bool make_addr(const char* text, int port, sockaddr_storage& ss, socklen_t& len) {
  std::memset(&ss, 0, sizeof ss);
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, text, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    len = sizeof *v4;
    return true;
  }
  if (inet_pton(AF_INET6, text, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    len = sizeof *v6;
    return true;
  }
  return false;
}

int tcp_connect(const char* addr, int port, int timeout_ms) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (!make_addr(addr, port, ss, len)) return 64;
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0) return 0;
  if (errno != EINPROGRESS) return errno == ECONNREFUSED ? 2 : 4;
  pollfd p{fd, POLLOUT, 0};
  if (poll(&p, 1, timeout_ms) <= 0) return 3;
  int err = 0;
  socklen_t el = sizeof err;
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
  close(fd);
  if (err == 0) return 0;
  if (err == ECONNREFUSED) return 2;
  return 4;
}

int udp_send(const char* addr, int port, int count, int interval_ms, int src_port, const char* src_addr) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (!make_addr(addr, port, ss, len)) return 64;
  int fd = socket(ss.ss_family, SOCK_DGRAM, 0);
  if (src_port > 0 || src_addr != nullptr) {
    // From a given port (and address): to send on an existing flow's tuple.
    sockaddr_storage from{};
    socklen_t flen = 0;
    if (!make_addr(src_addr != nullptr ? src_addr : (ss.ss_family == AF_INET ? "0.0.0.0" : "::"), src_port, from,
                   flen)) {
      return 64;
    }
    int one = 1;
    setsockopt(fd, SOL_IP, IP_FREEBIND, &one, sizeof one);
    if (bind(fd, reinterpret_cast<sockaddr*>(&from), flen) != 0) return 4;
  }
  for (int i = 0; i < count; ++i) {
    char msg[32];
    int n = std::snprintf(msg, sizeof msg, "sgprobe %d", i);
    sendto(fd, msg, static_cast<size_t>(n), 0, reinterpret_cast<sockaddr*>(&ss), len);
    if (interval_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
  }
  close(fd);
  return 0;
}

// Sends every datagram back to where it came from, so a UDP flow becomes
// established in conntrack (replies seen).
int udp_echo(int port, int seconds, const char* addr) {
  // On ADDR when given: answers then come from the address asked (a host
  // with several addresses would otherwise pick the source by route).
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (addr == nullptr) addr = "::";
  if (!make_addr(addr, port, ss, len)) return 64;
  int fd = socket(ss.ss_family, SOCK_DGRAM, 0);
  int off = 0;
  if (ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) return 4;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < until) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    char buf[2048];
    sockaddr_storage from{};
    socklen_t flen = sizeof from;
    const ssize_t n = recvfrom(fd, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &flen);
    if (n > 0) sendto(fd, buf, static_cast<size_t>(n), 0, reinterpret_cast<sockaddr*>(&from), flen);
  }
  close(fd);
  return 0;
}

// One datagram to each of COUNT ports from FIRST on, as fast as possible:
// COUNT new flows within milliseconds.
int udp_spray(const char* addr, int first, int count) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (!make_addr(addr, first, ss, len)) return 64;
  int fd = socket(ss.ss_family, SOCK_DGRAM, 0);
  for (int i = 0; i < count; ++i) {
    auto port = htons(static_cast<uint16_t>(first + i));
    if (ss.ss_family == AF_INET) {
      reinterpret_cast<sockaddr_in*>(&ss)->sin_port = port;
    } else {
      reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port = port;
    }
    sendto(fd, "x", 1, 0, reinterpret_cast<sockaddr*>(&ss), len);
  }
  close(fd);
  return 0;
}

int syn_burst(const char* addr, int port, int count, int interval_ms) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (!make_addr(addr, port, ss, len)) return 64;
  for (int i = 0; i < count; ++i) {
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    (void)connect(fd, reinterpret_cast<sockaddr*>(&ss), len);  // non-blocking: the SYN is what counts
    std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
    close(fd);
  }
  return 0;
}

int lone_fragment(const char* addr) {
  int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
  if (fd < 0) return 4;
  unsigned char pkt[28] = {};
  auto* ip = reinterpret_cast<iphdr*>(pkt);
  ip->ihl = 5;
  ip->version = 4;
  ip->tot_len = htons(sizeof pkt);
  ip->id = htons(0x5347);
  ip->frag_off = htons(185);  // offset 1480 bytes, no "more fragments": the tail of a datagram
  ip->ttl = 64;
  ip->protocol = IPPROTO_UDP;
  sockaddr_in dst{};
  dst.sin_family = AF_INET;
  if (inet_pton(AF_INET, addr, &dst.sin_addr) != 1) return 64;
  ip->daddr = dst.sin_addr.s_addr;
  ssize_t n = sendto(fd, pkt, sizeof pkt, 0, reinterpret_cast<sockaddr*>(&dst), sizeof dst);
  close(fd);
  return n == static_cast<ssize_t>(sizeof pkt) ? 0 : 4;
}

// An unsolicited neighbour advertisement for TARGET to all nodes on eth0.
int neighbour_advert(const char* target) {
  int fd = socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6);
  if (fd < 0) return 4;
  int hops = 255;  // ND messages must arrive with hop limit 255
  setsockopt(fd, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, &hops, sizeof hops);
  setsockopt(fd, IPPROTO_IPV6, IPV6_UNICAST_HOPS, &hops, sizeof hops);
  unsigned char msg[24] = {};
  msg[0] = 136;   // neighbour advertisement
  msg[4] = 0x20;  // override flag
  if (inet_pton(AF_INET6, target, msg + 8) != 1) return 64;
  sockaddr_in6 dst{};
  dst.sin6_family = AF_INET6;
  inet_pton(AF_INET6, "ff02::1", &dst.sin6_addr);
  dst.sin6_scope_id = if_nametoindex("eth0");
  ssize_t n = sendto(fd, msg, sizeof msg, 0, reinterpret_cast<sockaddr*>(&dst), sizeof dst);
  close(fd);
  return n == static_cast<ssize_t>(sizeof msg) ? 0 : 4;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    (void)std::fprintf(stderr, "usage: sgprobe tcp-connect|udp-send|frag|syn ADDR ...\n");
    return 64;
  }
  std::string mode = argv[1];
  auto arg = [&](int i, int def) { return argc > i ? std::atoi(argv[i]) : def; };
  if (mode == "tcp-connect") return tcp_connect(argv[2], arg(3, 80), arg(4, 1500));
  if (mode == "udp-send")
    return udp_send(argv[2], arg(3, 9), arg(4, 1), arg(5, 0), arg(6, 0), argc > 7 ? argv[7] : nullptr);
  if (mode == "udp-echo") return udp_echo(std::atoi(argv[2]), arg(3, 10), argc > 4 ? argv[4] : nullptr);
  if (mode == "udp-spray") return udp_spray(argv[2], arg(3, 10000), arg(4, 1000));
  if (mode == "syn") return syn_burst(argv[2], arg(3, 80), arg(4, 10), arg(5, 10));
  if (mode == "frag") return lone_fragment(argv[2]);
  if (mode == "na") return neighbour_advert(argv[2]);
  (void)std::fprintf(stderr, "sgprobe: unknown mode %s\n", mode.c_str());
  return 64;
}
