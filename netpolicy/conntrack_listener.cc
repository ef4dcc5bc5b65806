#include "netpolicy/conntrack_listener.h"

#include <endian.h>
#include <fcntl.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <cstring>

#include "common/raii/fd.h"
#include "netpolicy/netlink_drain.h"

namespace sg::netpolicy {

namespace {

constexpr const char* kSysctlDir = "/proc/sys/net/netfilter/";

// Attributes of one nesting level, indexed by type; types beyond the table are ignored.
template <std::size_t N>
using Attrs = std::array<const nlattr*, N>;

template <std::size_t N>
int collect_attr(const nlattr* a, void* data) {
  auto* out = static_cast<Attrs<N>*>(data);
  const auto type = mnl_attr_get_type(a);
  if (mnl_attr_type_valid(a, static_cast<std::uint16_t>(N - 1)) > 0 && type < N) (*out)[type] = a;
  return MNL_CB_OK;
}

template <std::size_t N>
Attrs<N> parse_nested(const nlattr* nest) {
  Attrs<N> out{};
  if (nest != nullptr) mnl_attr_parse_nested(nest, collect_attr<N>, &out);
  return out;
}

std::uint8_t get_u8(const nlattr* a) {
  return a != nullptr && mnl_attr_validate(a, MNL_TYPE_U8) >= 0 ? mnl_attr_get_u8(a) : 0;
}
std::uint16_t get_be16(const nlattr* a) {
  return a != nullptr && mnl_attr_validate(a, MNL_TYPE_U16) >= 0 ? be16toh(mnl_attr_get_u16(a)) : 0;
}
std::uint32_t get_be32(const nlattr* a) {
  return a != nullptr && mnl_attr_validate(a, MNL_TYPE_U32) >= 0 ? be32toh(mnl_attr_get_u32(a)) : 0;
}
std::uint64_t get_be64(const nlattr* a) {
  return a != nullptr && mnl_attr_validate(a, MNL_TYPE_U64) >= 0 ? be64toh(mnl_attr_get_u64(a)) : 0;
}

bool get_address(const nlattr* a, Family family, IpAddress& out) {
  if (a == nullptr) return false;
  const std::size_t len = family == Family::v4 ? 4 : 16;
  if (mnl_attr_get_payload_len(a) < len) return false;
  out.family = family;
  out.bytes.fill(0);
  std::memcpy(out.bytes.data(), mnl_attr_get_payload(a), len);
  return true;
}

struct Tuple {
  bool ok = false;
  Family family = Family::v4;
  IpAddress src, dst;
  std::uint8_t proto = 0;
  std::uint16_t sport = 0, dport = 0;
  bool has_ports = false;
  bool has_icmp = false;
  std::uint8_t icmp_type = 0, icmp_code = 0;
  std::uint16_t icmp_id = 0;
};

Tuple parse_tuple(const nlattr* nest) {
  Tuple t;
  const auto tuple = parse_nested<CTA_TUPLE_MAX + 1>(nest);
  const auto ip = parse_nested<CTA_IP_MAX + 1>(tuple[CTA_TUPLE_IP]);
  if (ip[CTA_IP_V4_SRC] != nullptr) {
    t.family = Family::v4;
    t.ok = get_address(ip[CTA_IP_V4_SRC], Family::v4, t.src) && get_address(ip[CTA_IP_V4_DST], Family::v4, t.dst);
  } else if (ip[CTA_IP_V6_SRC] != nullptr) {
    t.family = Family::v6;
    t.ok = get_address(ip[CTA_IP_V6_SRC], Family::v6, t.src) && get_address(ip[CTA_IP_V6_DST], Family::v6, t.dst);
  }
  const auto proto = parse_nested<CTA_PROTO_MAX + 1>(tuple[CTA_TUPLE_PROTO]);
  t.proto = get_u8(proto[CTA_PROTO_NUM]);
  if (proto[CTA_PROTO_SRC_PORT] != nullptr || proto[CTA_PROTO_DST_PORT] != nullptr) {
    t.has_ports = true;
    t.sport = get_be16(proto[CTA_PROTO_SRC_PORT]);
    t.dport = get_be16(proto[CTA_PROTO_DST_PORT]);
  }
  if (proto[CTA_PROTO_ICMP_TYPE] != nullptr) {
    t.has_icmp = true;
    t.icmp_type = get_u8(proto[CTA_PROTO_ICMP_TYPE]);
    t.icmp_code = get_u8(proto[CTA_PROTO_ICMP_CODE]);
    t.icmp_id = get_be16(proto[CTA_PROTO_ICMP_ID]);
  } else if (proto[CTA_PROTO_ICMPV6_TYPE] != nullptr) {
    t.has_icmp = true;
    t.icmp_type = get_u8(proto[CTA_PROTO_ICMPV6_TYPE]);
    t.icmp_code = get_u8(proto[CTA_PROTO_ICMPV6_CODE]);
    t.icmp_id = get_be16(proto[CTA_PROTO_ICMPV6_ID]);
  }
  return t;
}

void parse_counters(const nlattr* nest, std::uint64_t& packets, std::uint64_t& bytes) {
  const auto c = parse_nested<CTA_COUNTERS_MAX + 1>(nest);
  packets =
      c[CTA_COUNTERS_PACKETS] != nullptr ? get_be64(c[CTA_COUNTERS_PACKETS]) : get_be32(c[CTA_COUNTERS32_PACKETS]);
  bytes = c[CTA_COUNTERS_BYTES] != nullptr ? get_be64(c[CTA_COUNTERS_BYTES]) : get_be32(c[CTA_COUNTERS32_BYTES]);
}

// Reads a 0/1 sysctl of this namespace and sets it to 1; "" on success, else why not.
std::string enable_sysctl(const std::string& name) {
  const std::string path = kSysctlDir + name;
  Fd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd.valid()) {
    // Read-only access is enough when someone already turned it on.
    Fd ro(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    char c = 0;
    if (ro.valid() && ::read(ro.get(), &c, 1) == 1 && c == '1') return "";
    const int err = errno;
    return "cannot enable " + path + " (" + std::strerror(err) +
           "): run surrogated as root with CAP_NET_ADMIN, or set net.netfilter." + name +
           "=1 in the daemon's network namespace (sysctl.d)";
  }
  if (::write(fd.get(), "1\n", 2) != 2) {
    const int err = errno;
    return "cannot write 1 to " + path + " (" + std::strerror(err) + "): set net.netfilter." + name +
           "=1 in the daemon's network namespace";
  }
  return "";
}

}  // namespace

const char* to_string(FlowEvent::Kind kind) {
  switch (kind) {
    case FlowEvent::Kind::start: return "start";
    case FlowEvent::Kind::end: return "end";
    case FlowEvent::Kind::open: return "open";
    case FlowEvent::Kind::gap: return "gap";
  }
  return "?";
}

std::optional<FlowEvent> parse_conntrack_message(const nlmsghdr* nlh, std::int64_t observed_ns) {
  if (nlh->nlmsg_len < NLMSG_LENGTH(sizeof(nfgenmsg))) return std::nullopt;
  if (NFNL_SUBSYS_ID(nlh->nlmsg_type) != NFNL_SUBSYS_CTNETLINK) return std::nullopt;
  FlowEvent ev;
  switch (NFNL_MSG_TYPE(nlh->nlmsg_type)) {
    case IPCTNL_MSG_CT_NEW:
      // Events with NLM_F_CREATE are new flows; without it, dump replies and updates.
      ev.kind = (nlh->nlmsg_flags & NLM_F_CREATE) != 0 ? FlowEvent::Kind::start : FlowEvent::Kind::open;
      break;
    case IPCTNL_MSG_CT_DELETE: ev.kind = FlowEvent::Kind::end; break;
    default: return std::nullopt;
  }
  Attrs<CTA_MAX + 1> attrs{};
  if (mnl_attr_parse(nlh, sizeof(nfgenmsg), collect_attr<CTA_MAX + 1>, &attrs) < 0) return std::nullopt;
  const Tuple orig = parse_tuple(attrs[CTA_TUPLE_ORIG]);
  if (!orig.ok) return std::nullopt;
  const Tuple reply = parse_tuple(attrs[CTA_TUPLE_REPLY]);
  ev.family = orig.family;
  ev.proto = orig.proto;
  ev.src = orig.src;
  ev.dst = orig.dst;
  ev.sport = orig.sport;
  ev.dport = orig.dport;
  ev.has_ports = orig.has_ports;
  ev.has_icmp = orig.has_icmp;
  ev.icmp_type = orig.icmp_type;
  ev.icmp_code = orig.icmp_code;
  ev.icmp_id = orig.icmp_id;
  if (reply.ok) {
    ev.reply_src = reply.src;
    ev.reply_dst = reply.dst;
    ev.reply_sport = reply.sport;
    ev.reply_dport = reply.dport;
  }
  ev.mark = get_be32(attrs[CTA_MARK]);
  ev.vm_id = ev.mark & kVmIdMarkMask;
  ev.syn_probe = (ev.mark & kSynProbeMarkBit) != 0;
  ev.ct_id = get_be32(attrs[CTA_ID]);
  parse_counters(attrs[CTA_COUNTERS_ORIG], ev.orig_packets, ev.orig_bytes);
  parse_counters(attrs[CTA_COUNTERS_REPLY], ev.reply_packets, ev.reply_bytes);
  const auto ts = parse_nested<CTA_TIMESTAMP_MAX + 1>(attrs[CTA_TIMESTAMP]);
  ev.start_ns = static_cast<std::int64_t>(get_be64(ts[CTA_TIMESTAMP_START]));
  ev.stop_ns = static_cast<std::int64_t>(get_be64(ts[CTA_TIMESTAMP_STOP]));
  ev.observed_ns = observed_ns;
  return ev;
}

Result<ConntrackListener> ConntrackListener::open(const Options& options) {
  auto events = open_netfilter_socket("conntrack events");
  if (!events) return events.error();
  for (int group : {NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY}) {
    if (mnl_socket_setsockopt(events->get(), NETLINK_ADD_MEMBERSHIP, &group, sizeof group) < 0) {
      return make_sys_error(
          "subscribing to conntrack events (needs CAP_NET_ADMIN and the nf_conntrack_netlink module: "
          "modprobe nf_conntrack_netlink)");
    }
  }
  // Ask the kernel to tell conntrack when an event could not be delivered,
  // so DESTROY events are retried instead of lost (best effort: old kernels lack it).
  int one = 1;
  mnl_socket_setsockopt(events->get(), NETLINK_BROADCAST_ERROR, &one, sizeof one);
  auto dump = open_netfilter_socket("conntrack table dumps");
  if (!dump) return dump.error();

  ConntrackListener listener(std::move(*events), std::move(*dump));
  if (auto st = listener.set_receive_buffer(options.receive_buffer_bytes); !st) return st.error();
  if (options.enable_accounting) {
    for (const char* name : {"nf_conntrack_acct", "nf_conntrack_timestamp"}) {
      std::string why = enable_sysctl(name);
      if (why.empty()) continue;
      if (options.require_accounting) {
        return make_error("conntrack listener: " + why + " (without it flows are logged without byte counts)");
      }
      listener.warnings_.push_back(std::move(why));
    }
  }
  return listener;
}

Status ConntrackListener::set_receive_buffer(int bytes) {
  const int fd = mnl_socket_get_fd(sock_.get());
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof bytes) == 0) return {};
  // Without CAP_NET_ADMIN the kernel caps SO_RCVBUF at net.core.rmem_max.
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes) == 0) {
    int got = 0;
    socklen_t len = sizeof got;
    getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &got, &len);
    if (got < bytes) {
      warnings_.push_back("conntrack event socket got a receive buffer of " + std::to_string(got) + " bytes, not " +
                          std::to_string(bytes) + ": raise net.core.rmem_max or grant CAP_NET_ADMIN");
    }
    return {};
  }
  return make_sys_error("setting the receive buffer of the conntrack event socket");
}

int ConntrackListener::fd() const { return mnl_socket_get_fd(sock_.get()); }

std::vector<FlowEvent> ConntrackListener::read_events() {
  std::vector<FlowEvent> out;
  drain_netlink(
      fd(), MNL_SOCKET_BUFFER_SIZE * 4,
      [&](std::int64_t now, bool first) {
        ++overruns_;
        if (!first) return;
        // One gap per call is enough: the resync covers every loss before it.
        FlowEvent gap;
        gap.kind = FlowEvent::Kind::gap;
        gap.observed_ns = now;
        gap.detail = "ENOBUFS on conntrack event socket: the kernel dropped flow events";
        out.push_back(std::move(gap));
      },
      [&](const nlmsghdr* nlh, std::int64_t now) {
        auto ev = parse_conntrack_message(nlh, now);
        if (ev && ev->mark != 0 && ev->kind != FlowEvent::Kind::open) out.push_back(std::move(*ev));
      });
  return out;
}

Result<std::vector<FlowEvent>> ConntrackListener::dump_table() {
  std::vector<char> req;
  nlmsghdr* nlh = put_nfnl_request(req, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET, NLM_F_DUMP,
                                   AF_UNSPEC,  // both IPv4 and IPv6 flows
                                   ++dump_seq_);
  std::vector<FlowEvent> flows;
  bool interrupted = false;
  const std::int64_t now = wall_ns();
  auto st = nfnl_exchange(dump_.get(), nlh, "the conntrack dump (retry the resync)", [&](const nlmsghdr* m) {
    if ((m->nlmsg_flags & NLM_F_DUMP_INTR) != 0) {
      interrupted = true;
      errno = EINTR;
      return MNL_CB_ERROR;
    }
    auto ev = parse_conntrack_message(m, now);
    if (ev && ev->mark != 0) {
      ev->kind = FlowEvent::Kind::open;
      flows.push_back(std::move(*ev));
    }
    return MNL_CB_OK;
  });
  if (interrupted) return make_error("the conntrack dump was interrupted by table changes (retry the resync)");
  if (!st) return st.error();
  return flows;
}

}  // namespace sg::netpolicy
