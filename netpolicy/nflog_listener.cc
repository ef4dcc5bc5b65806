#include "netpolicy/nflog_listener.h"

#include <endian.h>
#include <linux/if_ether.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_log.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>

#include <array>
#include <charconv>
#include <cstring>

#include "netpolicy/netlink_drain.h"

namespace sg::netpolicy {

namespace {

using Attrs = std::array<const nlattr*, NFULA_MAX + 1>;

std::uint32_t get_be32(const nlattr* a) {
  return a != nullptr && mnl_attr_validate(a, MNL_TYPE_U32) >= 0 ? be32toh(mnl_attr_get_u32(a)) : 0;
}

std::uint16_t load_be16(const std::uint8_t* p) { return static_cast<std::uint16_t>((p[0] << 8) | p[1]); }

bool is_port_protocol(std::uint8_t proto) {
  return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_UDPLITE || proto == IPPROTO_SCTP ||
         proto == IPPROTO_DCCP;
}

// Ports or ICMP type/code from the start of the transport header, if copied.
void parse_transport(std::span<const std::uint8_t> l4, DropEvent& ev) {
  if (is_port_protocol(ev.proto) && l4.size() >= 4) {
    ev.has_ports = true;
    ev.sport = load_be16(l4.data());
    ev.dport = load_be16(l4.data() + 2);
  } else if ((ev.proto == IPPROTO_ICMP || ev.proto == IPPROTO_ICMPV6) && l4.size() >= 2) {
    ev.has_icmp = true;
    ev.icmp_type = l4[0];
    ev.icmp_code = l4[1];
  }
}

void parse_ipv4(std::span<const std::uint8_t> p, DropEvent& ev) {
  if (p.size() < 20) return;
  const std::size_t ihl = static_cast<std::size_t>(p[0] & 0x0f) * 4;
  if (ihl < 20) return;
  ev.family = Family::v4;
  ev.has_addresses = true;
  ev.src = IpAddress{Family::v4, {}};
  ev.dst = IpAddress{Family::v4, {}};
  std::memcpy(ev.src.bytes.data(), p.data() + 12, 4);
  std::memcpy(ev.dst.bytes.data(), p.data() + 16, 4);
  ev.length = load_be16(p.data() + 2);
  ev.proto = p[9];
  const bool later_fragment = (load_be16(p.data() + 6) & 0x1fff) != 0;  // carries no transport header
  if (!later_fragment && p.size() > ihl) parse_transport(p.subspan(ihl), ev);
}

void parse_ipv6(std::span<const std::uint8_t> p, DropEvent& ev) {
  if (p.size() < 40) return;
  ev.family = Family::v6;
  ev.has_addresses = true;
  ev.src = IpAddress{Family::v6, {}};
  ev.dst = IpAddress{Family::v6, {}};
  std::memcpy(ev.src.bytes.data(), p.data() + 8, 16);
  std::memcpy(ev.dst.bytes.data(), p.data() + 24, 16);
  ev.length = 40U + load_be16(p.data() + 4);
  std::uint8_t next = p[6];
  std::size_t off = 40;
  // Walk the extension headers that fit in the copied bytes; the protocol is
  // the first header that is not one of them.
  for (int hops = 0; hops < 8; ++hops) {
    if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS) {
      if (p.size() < off + 2) break;
      const std::uint8_t following = p[off];
      off += (static_cast<std::size_t>(p[off + 1]) + 1) * 8;
      next = following;
    } else if (next == IPPROTO_FRAGMENT) {
      if (p.size() < off + 8) break;
      const std::uint8_t following = p[off];
      const bool later_fragment = (load_be16(p.data() + off + 2) & 0xfff8) != 0;
      off += 8;
      next = following;
      if (later_fragment) {
        ev.proto = next;
        return;
      }
    } else if (next == IPPROTO_AH) {
      if (p.size() < off + 2) break;
      const std::uint8_t following = p[off];
      off += (static_cast<std::size_t>(p[off + 1]) + 2) * 4;
      next = following;
    } else {
      break;
    }
  }
  ev.proto = next;
  if (p.size() > off) parse_transport(p.subspan(off), ev);
}

void parse_arp(std::span<const std::uint8_t> p, DropEvent& ev) {
  // Ethernet/IPv4 ARP: htype 1, ptype 0x0800, hlen 6, plen 4.
  if (p.size() < 28 || load_be16(p.data()) != 1 || load_be16(p.data() + 2) != ETH_P_IP || p[4] != 6 || p[5] != 4) {
    return;
  }
  ev.family = Family::v4;
  ev.has_addresses = true;
  ev.src = IpAddress{Family::v4, {}};
  ev.dst = IpAddress{Family::v4, {}};
  std::memcpy(ev.src.bytes.data(), p.data() + 14, 4);  // sender protocol address: the claim
  std::memcpy(ev.dst.bytes.data(), p.data() + 24, 4);  // target protocol address
  ev.length = 28;
}

}  // namespace

std::optional<LogPrefix> parse_log_prefix(std::string_view prefix) {
  while (!prefix.empty() && prefix.back() == ' ') prefix.remove_suffix(1);
  const auto space = prefix.find(' ');
  if (space == std::string_view::npos || space == 0) return std::nullopt;
  LogPrefix out{std::string(prefix.substr(0, space)), std::string(prefix.substr(space + 1))};
  if (out.vm.rfind("sg", 0) != 0 || out.reason.empty() || out.reason.find(' ') != std::string::npos) {
    return std::nullopt;
  }
  return out;
}

std::int64_t vm_id_from_name(std::string_view name) {
  if (name.size() < 3 || name.substr(0, 2) != "sg") return 0;
  std::int64_t id = 0;
  const char* first = name.data() + 2;
  const char* last = name.data() + name.size();
  auto [ptr, ec] = std::from_chars(first, last, id);
  if (ec != std::errc() || ptr != last || *first == '0' || id <= 0) return 0;
  return id;
}

std::string drop_vm_device(std::string_view reason, const std::string& indev, const std::string& outdev) {
  const std::string& dev = reason == "inbound" ? outdev : indev;
  return vm_id_from_name(dev) != 0 ? dev : std::string();
}

void parse_packet_headers(std::span<const std::uint8_t> packet, std::uint16_t hw_protocol, DropEvent& ev) {
  if (hw_protocol == 0 && !packet.empty()) {
    const int version = packet[0] >> 4;
    hw_protocol = version == 4 ? ETH_P_IP : version == 6 ? ETH_P_IPV6 : 0;
  }
  ev.hw_protocol = hw_protocol;
  switch (hw_protocol) {
    case ETH_P_IP: parse_ipv4(packet, ev); break;
    case ETH_P_IPV6: parse_ipv6(packet, ev); break;
    case ETH_P_ARP: parse_arp(packet, ev); break;
    default: break;
  }
}

Result<NflogListener> NflogListener::open(const Options& options) {
  auto sock = open_netfilter_socket("nflog");
  if (!sock) return sock.error();
  NflogListener listener(std::move(*sock), options.group);
  if (auto st = listener.set_receive_buffer(options.receive_buffer_bytes); !st) return st.error();

  // One request carrying bind, copy mode, flags and timeout, acknowledged by the kernel.
  std::vector<char> buf;
  nlmsghdr* nlh = put_nfnl_request(buf, (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG, NLM_F_ACK, AF_UNSPEC, 1,
                                   htobe16(options.group));
  nfulnl_msg_config_cmd cmd{NFULNL_CFG_CMD_BIND};
  mnl_attr_put(nlh, NFULA_CFG_CMD, sizeof cmd, &cmd);
  nfulnl_msg_config_mode mode{};
  mode.copy_range = htobe32(options.copy_range);
  mode.copy_mode = NFULNL_COPY_PACKET;
  mnl_attr_put(nlh, NFULA_CFG_MODE, sizeof mode, &mode);
  mnl_attr_put_u16(nlh, NFULA_CFG_FLAGS, htobe16(NFULNL_CFG_F_SEQ));
  mnl_attr_put_u32(nlh, NFULA_CFG_TIMEOUT, htobe32(options.flush_timeout_cs));

  if (auto st = nfnl_exchange(listener.sock_.get(), nlh, "the nflog bind request"); !st) {
    const int err = st.error().sys_errno;
    if (err == 0) return st.error();  // no answer
    // The kernel answers EPERM (EBUSY on old kernels) when another socket owns the group.
    if (err == EBUSY || err == EPERM) {
      return make_sys_error("binding nflog group " + std::to_string(options.group) +
                                ": another process (ulogd, a second surrogated?) holds the group, or this process "
                                "lacks CAP_NET_ADMIN; stop the other listener or choose another log group",
                            err);
    }
    return make_sys_error("binding nflog group " + std::to_string(options.group) +
                              " (needs CAP_NET_ADMIN and the nfnetlink_log module: modprobe nfnetlink_log)",
                          err);
  }
  return listener;
}

Status NflogListener::set_receive_buffer(int bytes) {
  const int fd = mnl_socket_get_fd(sock_.get());
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof bytes) == 0) return {};
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes) == 0) return {};
  return make_sys_error("setting the receive buffer of the nflog socket");
}

int NflogListener::fd() const { return mnl_socket_get_fd(sock_.get()); }

std::string NflogListener::ifname(std::uint32_t ifindex) const {
  if (ifindex == 0) return "";
  // SIOCGIFNAME on our own socket resolves in the socket's namespace, which
  // is where the packet was logged, whatever namespace this thread is in.
  ifreq ifr{};
  ifr.ifr_ifindex = static_cast<int>(ifindex);
  if (ioctl(fd(), SIOCGIFNAME, &ifr) != 0) return "";
  return std::string(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));
}

std::optional<DropEvent> NflogListener::handle(const nlmsghdr* nlh, std::int64_t now_ns, std::vector<DropEvent>& out) {
  if (NFNL_SUBSYS_ID(nlh->nlmsg_type) != NFNL_SUBSYS_ULOG || NFNL_MSG_TYPE(nlh->nlmsg_type) != NFULNL_MSG_PACKET) {
    return std::nullopt;
  }
  if (nlh->nlmsg_len < NLMSG_LENGTH(sizeof(nfgenmsg))) return std::nullopt;
  Attrs attrs{};
  mnl_attr_parse(
      nlh, sizeof(nfgenmsg),
      [](const nlattr* a, void* data) -> int {
        auto* out = static_cast<Attrs*>(data);
        if (mnl_attr_type_valid(a, NFULA_MAX) > 0) (*out)[mnl_attr_get_type(a)] = a;
        return MNL_CB_OK;
      },
      &attrs);

  if (attrs[NFULA_SEQ] != nullptr) {
    const std::uint32_t seq = get_be32(attrs[NFULA_SEQ]);
    if (next_seq_ && seq != *next_seq_) {
      const std::uint32_t missed = seq - *next_seq_;  // wraps correctly in 32 bits
      lost_ += missed;
      DropEvent gap;
      gap.kind = DropEvent::Kind::gap;
      gap.time_ns = now_ns;
      gap.lost = missed;
      gap.detail = std::to_string(missed) + " drop log messages of nflog group " + std::to_string(group_) +
                   " lost (sequence jump)";
      out.push_back(std::move(gap));
    }
    next_seq_ = seq + 1;
  }

  DropEvent ev;
  ev.time_ns = now_ns;
  if (attrs[NFULA_TIMESTAMP] != nullptr &&
      mnl_attr_get_payload_len(attrs[NFULA_TIMESTAMP]) >= sizeof(nfulnl_msg_packet_timestamp)) {
    nfulnl_msg_packet_timestamp ts{};
    std::memcpy(&ts, mnl_attr_get_payload(attrs[NFULA_TIMESTAMP]), sizeof ts);
    const auto sec = static_cast<std::int64_t>(be64toh(ts.sec));
    const auto usec = static_cast<std::int64_t>(be64toh(ts.usec));
    if (sec > 0) ev.time_ns = sec * 1'000'000'000 + usec * 1000;
  }
  if (attrs[NFULA_PREFIX] != nullptr && mnl_attr_validate(attrs[NFULA_PREFIX], MNL_TYPE_NUL_STRING) >= 0) {
    ev.prefix = mnl_attr_get_str(attrs[NFULA_PREFIX]);
  }
  ev.indev = ifname(get_be32(attrs[NFULA_IFINDEX_INDEV]));
  ev.outdev = ifname(get_be32(attrs[NFULA_IFINDEX_OUTDEV]));
  if (auto p = parse_log_prefix(ev.prefix)) {
    ev.vm = p->vm;
    ev.reason = p->reason;
  } else {
    ev.reason = ev.prefix.empty() ? "unlabelled" : ev.prefix;  // a foreign rule logging to our group
  }
  ev.vm_id = vm_id_from_name(ev.vm);
  if (ev.vm_id == 0) {
    ev.vm = drop_vm_device(ev.reason, ev.indev, ev.outdev);
    ev.vm_id = vm_id_from_name(ev.vm);
  }
  std::uint16_t hw_protocol = 0;
  if (attrs[NFULA_PACKET_HDR] != nullptr &&
      mnl_attr_get_payload_len(attrs[NFULA_PACKET_HDR]) >= sizeof(nfulnl_msg_packet_hdr)) {
    nfulnl_msg_packet_hdr hdr{};
    std::memcpy(&hdr, mnl_attr_get_payload(attrs[NFULA_PACKET_HDR]), sizeof hdr);
    hw_protocol = be16toh(hdr.hw_protocol);
  }
  if (attrs[NFULA_PAYLOAD] != nullptr) {
    const auto* data = static_cast<const std::uint8_t*>(mnl_attr_get_payload(attrs[NFULA_PAYLOAD]));
    parse_packet_headers({data, mnl_attr_get_payload_len(attrs[NFULA_PAYLOAD])}, hw_protocol, ev);
  }
  return ev;
}

std::vector<DropEvent> NflogListener::read_events() {
  std::vector<DropEvent> out;
  drain_netlink(
      fd(), MNL_SOCKET_BUFFER_SIZE * 8,
      [&](std::int64_t now, bool first) {
        ++overruns_;
        if (!first) return;
        // How many: the sequence jump of the next message says.
        DropEvent gap;
        gap.kind = DropEvent::Kind::gap;
        gap.time_ns = now;
        gap.detail = "ENOBUFS on nflog socket of group " + std::to_string(group_) + ": drop logs lost";
        out.push_back(std::move(gap));
      },
      [&](const nlmsghdr* nlh, std::int64_t now) {
        if (auto ev = handle(nlh, now, out)) out.push_back(std::move(*ev));
      });
  return out;
}

}  // namespace sg::netpolicy
