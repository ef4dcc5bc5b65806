// Conntrack NEW/DESTROY events (ctnetlink over libmnl) of flows the rules
// marked with a VM id, so that every flow of every VM reaches the flow log
// with its byte and packet counters.
//
// Contract with the nftables compiler: every new flow of a VM gets
// `ct mark set <VM id>`; bit 31 of the mark flags SYN-only probe connections,
// so the VM id is mark & 0x7fffffff. Flows whose mark is 0 are not a VM's and
// are ignored.
//
// Loss: the kernel drops events when the socket's receive queue is full and
// reports ENOBUFS on the next read. read_events() counts that and returns a
// `gap` event; the caller then calls dump_table() (a separate socket, so the
// event socket keeps its place) and hands the open flows to
// FlowLog::record_resync(), which records which flows were open and closes the
// rows whose DESTROY event was lost. The socket also sets
// NETLINK_BROADCAST_ERROR, which makes conntrack retry DESTROY events that
// could not be delivered (the "reliable events" mechanism conntrackd uses), so
// overruns cost NEW events far more often than flow ends.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/net.h"
#include "common/raii/nftnl.h"  // sg::nft::MnlSocket, the project's one mnl_socket owner
#include "common/result.h"

struct nlmsghdr;

namespace sg::netpolicy {

inline constexpr std::uint32_t kSynProbeMarkBit = 0x80000000U;
// Bit 30: a "plain" flow (not to the client, not through a hole), which the
// rules pass on a short path once established (netpolicy/compile.h).
inline constexpr std::uint32_t kVmIdMarkMask = 0x3fffffffU;

struct FlowEvent {
  enum class Kind : std::uint8_t {
    start,  // IPCTNL_MSG_CT_NEW with NLM_F_CREATE: the flow was confirmed
    end,    // IPCTNL_MSG_CT_DELETE: the flow ended; counters are final
    open,   // from dump_table(): the flow is open now
    gap,    // events were lost (ENOBUFS); detail says where. Call dump_table().
  } kind = Kind::start;

  std::uint32_t ct_id = 0;  // CTA_ID; unique among the flows open at one time, may be reused later
  std::uint32_t mark = 0;
  std::int64_t vm_id = 0;  // mark & kVmIdMarkMask
  bool syn_probe = false;  // mark & kSynProbeMarkBit

  Family family = Family::v4;
  std::uint8_t proto = 0;  // IPPROTO_*
  IpAddress src;           // original direction (as the VM sent it)
  IpAddress dst;
  std::uint16_t sport = 0;  // 0 for protocols without ports
  std::uint16_t dport = 0;
  bool has_ports = false;
  // ICMP / ICMPv6 only (has_icmp): type and code of the packet that opened the flow.
  bool has_icmp = false;
  std::uint8_t icmp_type = 0;
  std::uint8_t icmp_code = 0;
  std::uint16_t icmp_id = 0;
  // Reply direction; differs from dst/src only when NAT rewrote the flow.
  IpAddress reply_src;
  IpAddress reply_dst;
  std::uint16_t reply_sport = 0;
  std::uint16_t reply_dport = 0;

  // CTA_COUNTERS_ORIG / _REPLY; zero unless nf_conntrack_acct was on when the flow started.
  std::uint64_t orig_packets = 0;
  std::uint64_t orig_bytes = 0;
  std::uint64_t reply_packets = 0;
  std::uint64_t reply_bytes = 0;
  // CTA_TIMESTAMP (unix ns, CLOCK_REALTIME); 0 unless nf_conntrack_timestamp was on when the flow started.
  std::int64_t start_ns = 0;
  std::int64_t stop_ns = 0;
  // Unix ns when this process read the event: the fallback for missing timestamps.
  std::int64_t observed_ns = 0;

  std::string detail;  // gap only
};

const char* to_string(FlowEvent::Kind kind);

// Parses one ctnetlink message (event or dump reply). nullopt for messages
// that are not conntrack entries or carry no tuple. Exposed for unit tests.
std::optional<FlowEvent> parse_conntrack_message(const nlmsghdr* nlh, std::int64_t observed_ns);

class ConntrackListener {
 public:
  struct Options {
    // Receive buffer asked for with SO_RCVBUFFORCE (falls back to SO_RCVBUF,
    // which net.core.rmem_max caps). Large, because a SYN flood makes a NEW
    // event per packet.
    int receive_buffer_bytes = 16 * 1024 * 1024;
    // Write 1 to nf_conntrack_acct and nf_conntrack_timestamp of the current
    // namespace. Without them flows have no byte counts or kernel timestamps.
    bool enable_accounting = true;
    // When enabling them fails: true = open() fails; false = open() succeeds
    // and warnings() says what is missing.
    bool require_accounting = true;
  };

  // Subscribes in the calling thread's network namespace (sockets keep the
  // namespace they were created in, so later reads may happen anywhere).
  static Result<ConntrackListener> open(const Options& options);
  static Result<ConntrackListener> open() { return open(Options{}); }

  [[nodiscard]] int fd() const;
  // Everything queued now; never blocks. Events of flows with mark 0 are
  // dropped. An overrun yields one `gap` event in place of the lost ones.
  std::vector<FlowEvent> read_events();
  // Every marked flow open now (kind `open`), from a dump on a second socket
  // opened with the first (so it is in the same namespace whatever thread calls).
  Result<std::vector<FlowEvent>> dump_table();

  // Overruns (ENOBUFS) since open().
  [[nodiscard]] std::uint64_t overruns() const { return overruns_; }
  // What could not be enabled (accounting, timestamps), one line each.
  [[nodiscard]] const std::vector<std::string>& warnings() const { return warnings_; }
  // Changes the receive buffer (tests shrink it to force an overrun).
  Status set_receive_buffer(int bytes);

 private:
  ConntrackListener(nft::MnlSocket events, nft::MnlSocket dump) : sock_(std::move(events)), dump_(std::move(dump)) {}

  nft::MnlSocket sock_;  // subscribed to NEW and DESTROY
  nft::MnlSocket dump_;  // request/response only, never subscribed
  std::uint32_t dump_seq_ = 0;
  std::uint64_t overruns_ = 0;
  std::vector<std::string> warnings_;
};

}  // namespace sg::netpolicy
