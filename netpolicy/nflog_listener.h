// Dropped packets reported by the rules through nfnetlink_log (libmnl), so
// every drop of every VM reaches the flow log with VM, reason and addresses.
//
// Contract with the nftables compiler: every drop rule logs to one nflog
// group with the prefix "sg? <reason> " ("sg? reserved "): the rules are
// shared by all VMs, so the VM is the input interface, whose name is
// "sg<id>" (for "inbound" drops, the output interface). A prefix naming the
// VM ("sg3 reserved ") is honoured as well.
//
// The listener asks for the first 128 bytes of each packet (enough for the
// IPv4/IPv6 header, a few extension headers and the transport ports) and for
// the instance sequence number (NFULNL_CFG_F_SEQ), so lost messages are
// counted exactly: a jump in NFULA_SEQ or ENOBUFS on the socket yields a `gap`
// event saying how many drops were not seen (when known).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/net.h"
#include "common/raii/nftnl.h"  // sg::nft::MnlSocket, the project's one mnl_socket owner
#include "common/result.h"

struct nlmsghdr;

namespace sg::netpolicy {

struct DropEvent {
  enum class Kind : std::uint8_t { drop, gap } kind = Kind::drop;
  std::int64_t time_ns = 0;  // unix ns: the packet's timestamp when the kernel gives one, else when read
  std::string vm;            // "sg7"; empty when neither the prefix nor the input interface names a VM
  std::int64_t vm_id = 0;    // 7 for "sg7"; 0 when unknown
  std::string reason;        // "reserved", "spoof-ip", ...
  std::string prefix;        // the raw log prefix
  std::string indev;         // input interface name, when known
  std::string outdev;
  std::uint16_t hw_protocol = 0;  // ETH_P_* of the packet
  Family family = Family::v4;
  bool has_addresses = false;  // false for non-IP payloads (ARP without IPv4, truncated packets)
  IpAddress src;
  IpAddress dst;
  std::uint8_t proto = 0;  // IPPROTO_*; 0 for ARP
  bool has_ports = false;  // false for non-first fragments and protocols without ports
  std::uint16_t sport = 0;
  std::uint16_t dport = 0;
  bool has_icmp = false;
  std::uint8_t icmp_type = 0;
  std::uint8_t icmp_code = 0;
  std::uint32_t length = 0;  // length of the whole IP packet (from its header), not of the copied part
  // gap only: what was lost and how many drops, when known (0 = unknown).
  std::string detail;
  std::uint64_t lost = 0;
};

// "sg3 reserved " -> {"sg3", "reserved"}. nullopt when the prefix has not that shape.
struct LogPrefix {
  std::string vm;  // "sg3" or "sg?"
  std::string reason;
};
std::optional<LogPrefix> parse_log_prefix(std::string_view prefix);
// 7 for "sg7"; 0 for anything else ("sg?", "eth0", "sg07x").
std::int64_t vm_id_from_name(std::string_view name);
// Whose drop a shared rule's ("sg? <reason> ") is: the VM whose tap the
// packet came in on, or for `inbound` (a VM's inbound policy) the one it
// was going to, as the per-VM drop counters count it. Empty: no VM's.
std::string drop_vm_device(std::string_view reason, const std::string& indev, const std::string& outdev);
// Fills family, addresses, proto, ports, ICMP and length of `ev` from the start
// of an IPv4, IPv6 or ARP packet (ethertype hw_protocol, or guessed from the
// version nibble when 0). Exposed for unit tests.
void parse_packet_headers(std::span<const std::uint8_t> packet, std::uint16_t hw_protocol, DropEvent& ev);

class NflogListener {
 public:
  struct Options {
    std::uint16_t group = 1;
    std::uint32_t copy_range = 128;  // bytes of each packet copied to us
    int receive_buffer_bytes = 8 * 1024 * 1024;
    // How long the kernel may hold drops to batch them, in 1/100 s.
    std::uint32_t flush_timeout_cs = 10;
  };

  // Binds the group in the calling thread's network namespace. Fails if
  // another process (ulogd, another daemon) holds the group.
  static Result<NflogListener> open(const Options& options);
  static Result<NflogListener> open() { return open(Options{}); }

  [[nodiscard]] int fd() const;
  // Everything queued now; never blocks.
  std::vector<DropEvent> read_events();
  [[nodiscard]] std::uint64_t overruns() const { return overruns_; }
  // Drops known to be lost (sequence jumps) since open().
  [[nodiscard]] std::uint64_t lost() const { return lost_; }
  Status set_receive_buffer(int bytes);

 private:
  NflogListener(nft::MnlSocket sock, std::uint16_t group) : sock_(std::move(sock)), group_(group) {}
  std::optional<DropEvent> handle(const nlmsghdr* nlh, std::int64_t now_ns, std::vector<DropEvent>& out);
  std::string ifname(std::uint32_t ifindex) const;

  nft::MnlSocket sock_;
  std::uint16_t group_;
  std::optional<std::uint32_t> next_seq_;
  std::uint64_t overruns_ = 0;
  std::uint64_t lost_ = 0;
};

}  // namespace sg::netpolicy
