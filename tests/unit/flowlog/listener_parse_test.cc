// The listeners' parsing, fed hand-built netlink messages and packets.
#include <endian.h>
#include <gtest/gtest.h>
#include <libmnl/libmnl.h>
#include <linux/if_ether.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <netinet/in.h>

#include <vector>

#include "netpolicy/conntrack_listener.h"
#include "netpolicy/nflog_listener.h"

namespace sg::netpolicy {
namespace {

IpAddress ip(const char* text) { return IpAddress::parse(text).value(); }

void put_tuple(nlmsghdr* nlh, int type, const IpAddress& src, const IpAddress& dst, std::uint8_t proto,
               std::uint16_t sport, std::uint16_t dport) {
  auto* tuple = mnl_attr_nest_start(nlh, type);
  auto* ipn = mnl_attr_nest_start(nlh, CTA_TUPLE_IP);
  if (src.family == Family::v4) {
    mnl_attr_put(nlh, CTA_IP_V4_SRC, 4, src.bytes.data());
    mnl_attr_put(nlh, CTA_IP_V4_DST, 4, dst.bytes.data());
  } else {
    mnl_attr_put(nlh, CTA_IP_V6_SRC, 16, src.bytes.data());
    mnl_attr_put(nlh, CTA_IP_V6_DST, 16, dst.bytes.data());
  }
  mnl_attr_nest_end(nlh, ipn);
  auto* pn = mnl_attr_nest_start(nlh, CTA_TUPLE_PROTO);
  mnl_attr_put_u8(nlh, CTA_PROTO_NUM, proto);
  if (proto == IPPROTO_ICMPV6) {
    mnl_attr_put_u8(nlh, CTA_PROTO_ICMPV6_TYPE, 128);
    mnl_attr_put_u8(nlh, CTA_PROTO_ICMPV6_CODE, 0);
    mnl_attr_put_u16(nlh, CTA_PROTO_ICMPV6_ID, htobe16(77));
  } else {
    mnl_attr_put_u16(nlh, CTA_PROTO_SRC_PORT, htobe16(sport));
    mnl_attr_put_u16(nlh, CTA_PROTO_DST_PORT, htobe16(dport));
  }
  mnl_attr_nest_end(nlh, pn);
  mnl_attr_nest_end(nlh, tuple);
}

std::vector<char> ct_message(int type, std::uint16_t flags, std::uint32_t mark, const IpAddress& src,
                             const IpAddress& dst, std::uint8_t proto) {
  std::vector<char> buf(4096);
  auto* nlh = mnl_nlmsg_put_header(buf.data());
  nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | type;
  nlh->nlmsg_flags = flags;
  auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  nfg->nfgen_family = src.family == Family::v4 ? AF_INET : AF_INET6;
  put_tuple(nlh, CTA_TUPLE_ORIG, src, dst, proto, 40000, 443);
  put_tuple(nlh, CTA_TUPLE_REPLY, dst, src, proto, 443, 40000);
  mnl_attr_put_u32(nlh, CTA_MARK, htobe32(mark));
  mnl_attr_put_u32(nlh, CTA_ID, htobe32(0xdeadbeef));
  auto* c = mnl_attr_nest_start(nlh, CTA_COUNTERS_ORIG);
  mnl_attr_put_u64(nlh, CTA_COUNTERS_PACKETS, htobe64(3));
  mnl_attr_put_u64(nlh, CTA_COUNTERS_BYTES, htobe64(180));
  mnl_attr_nest_end(nlh, c);
  c = mnl_attr_nest_start(nlh, CTA_COUNTERS_REPLY);
  mnl_attr_put_u64(nlh, CTA_COUNTERS_PACKETS, htobe64(2));
  mnl_attr_put_u64(nlh, CTA_COUNTERS_BYTES, htobe64(120));
  mnl_attr_nest_end(nlh, c);
  auto* ts = mnl_attr_nest_start(nlh, CTA_TIMESTAMP);
  mnl_attr_put_u64(nlh, CTA_TIMESTAMP_START, htobe64(1'700'000'000'123'000'000ULL));
  mnl_attr_put_u64(nlh, CTA_TIMESTAMP_STOP, htobe64(1'700'000'005'000'000'000ULL));
  mnl_attr_nest_end(nlh, ts);
  buf.resize(nlh->nlmsg_len);
  return buf;
}

TEST(ConntrackParse, ADestroyEventOfAnIpv4Flow) {
  auto msg = ct_message(IPCTNL_MSG_CT_DELETE, 0, 0x80000007, ip("192.0.2.3"), ip("198.51.100.1"), IPPROTO_TCP);
  auto ev = parse_conntrack_message(reinterpret_cast<const nlmsghdr*>(msg.data()), 42);
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->kind, FlowEvent::Kind::end);
  EXPECT_EQ(ev->vm_id, 7);
  EXPECT_TRUE(ev->syn_probe);
  EXPECT_EQ(ev->src.to_string(), "192.0.2.3");
  EXPECT_EQ(ev->dst.to_string(), "198.51.100.1");
  EXPECT_EQ(ev->reply_src.to_string(), "198.51.100.1");
  EXPECT_EQ(ev->proto, IPPROTO_TCP);
  EXPECT_TRUE(ev->has_ports);
  EXPECT_EQ(ev->sport, 40000);
  EXPECT_EQ(ev->dport, 443);
  EXPECT_EQ(ev->ct_id, 0xdeadbeefU);
  EXPECT_EQ(ev->orig_packets, 3U);
  EXPECT_EQ(ev->orig_bytes, 180U);
  EXPECT_EQ(ev->reply_packets, 2U);
  EXPECT_EQ(ev->reply_bytes, 120U);
  EXPECT_EQ(ev->start_ns, 1'700'000'000'123'000'000LL);
  EXPECT_EQ(ev->stop_ns, 1'700'000'005'000'000'000LL);
  EXPECT_EQ(ev->observed_ns, 42);
}

TEST(ConntrackParse, ANewEventOfAnIcmpv6Flow) {
  auto msg = ct_message(IPCTNL_MSG_CT_NEW, NLM_F_CREATE | NLM_F_EXCL, 12, ip("2001:db8::2"), ip("2001:db8:1::1"),
                        IPPROTO_ICMPV6);
  auto ev = parse_conntrack_message(reinterpret_cast<const nlmsghdr*>(msg.data()), 0);
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->kind, FlowEvent::Kind::start);
  EXPECT_EQ(ev->family, Family::v6);
  EXPECT_EQ(ev->vm_id, 12);
  EXPECT_FALSE(ev->syn_probe);
  EXPECT_EQ(ev->dst.to_string(), "2001:db8:1::1");
  EXPECT_TRUE(ev->has_icmp);
  EXPECT_FALSE(ev->has_ports);
  EXPECT_EQ(ev->icmp_type, 128);
  EXPECT_EQ(ev->icmp_id, 77);
}

TEST(ConntrackParse, OtherSubsystemsAndTruncatedMessagesAreIgnored) {
  auto msg = ct_message(IPCTNL_MSG_CT_NEW, NLM_F_CREATE, 1, ip("192.0.2.3"), ip("198.51.100.1"), IPPROTO_UDP);
  auto* nlh = reinterpret_cast<nlmsghdr*>(msg.data());
  nlh->nlmsg_type = (NFNL_SUBSYS_ULOG << 8);
  EXPECT_FALSE(parse_conntrack_message(nlh, 0).has_value());
  std::vector<char> tiny(NLMSG_HDRLEN + sizeof(nfgenmsg));
  auto* t = mnl_nlmsg_put_header(tiny.data());
  t->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
  mnl_nlmsg_put_extra_header(t, sizeof(nfgenmsg));
  EXPECT_FALSE(parse_conntrack_message(t, 0).has_value());  // no tuple
}

TEST(NflogParse, Prefixes) {
  auto p = parse_log_prefix("sg3 reserved ");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->vm, "sg3");
  EXPECT_EQ(p->reason, "reserved");
  p = parse_log_prefix("sg? no-chain ");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->vm, "sg?");
  EXPECT_EQ(p->reason, "no-chain");
  EXPECT_FALSE(parse_log_prefix("").has_value());
  EXPECT_FALSE(parse_log_prefix("IN=eth0 OUT= ").has_value());
  EXPECT_FALSE(parse_log_prefix("sg3").has_value());
  EXPECT_EQ(vm_id_from_name("sg12"), 12);
  EXPECT_EQ(vm_id_from_name("sg?"), 0);
  EXPECT_EQ(vm_id_from_name("sg012"), 0);
  EXPECT_EQ(vm_id_from_name("sg1x"), 0);
  EXPECT_EQ(vm_id_from_name("eth0"), 0);
}

// A shared rule's drop is the sending VM's, except `inbound`: the
// receiving VM's (as the per-VM drop counters count it).
TEST(NflogParse, WhoseDropASharedRulesIs) {
  EXPECT_EQ(drop_vm_device("reserved", "sg3", "eth0"), "sg3");
  EXPECT_EQ(drop_vm_device("not-allowed", "sg3", "sg5"), "sg3");  // VM to VM, the sender's policy
  EXPECT_EQ(drop_vm_device("inbound", "sg3", "sg5"), "sg5");      // VM to VM, the receiver's policy
  EXPECT_EQ(drop_vm_device("inbound", "eth0", "sg5"), "sg5");
  EXPECT_EQ(drop_vm_device("no-chain", "eth0", "sg9"), "");  // to a tap no VM owns: nobody's
  EXPECT_EQ(drop_vm_device("inbound", "sg3", "eth0"), "");
}

TEST(NflogParse, Ipv4UdpPacket) {
  std::vector<std::uint8_t> p = {0x45, 0, 0,  84, 0, 0, 0x40, 0,    64, IPPROTO_UDP, 0, 0,  192, 0,
                                 2,    3, 10, 1,  2, 3, 0x9c, 0x40, 0,  53,          0, 64, 0,   0};
  DropEvent ev;
  parse_packet_headers(p, ETH_P_IP, ev);
  ASSERT_TRUE(ev.has_addresses);
  EXPECT_EQ(ev.family, Family::v4);
  EXPECT_EQ(ev.src.to_string(), "192.0.2.3");
  EXPECT_EQ(ev.dst.to_string(), "10.1.2.3");
  EXPECT_EQ(ev.proto, IPPROTO_UDP);
  EXPECT_TRUE(ev.has_ports);
  EXPECT_EQ(ev.sport, 40000);
  EXPECT_EQ(ev.dport, 53);
  EXPECT_EQ(ev.length, 84U);
}

TEST(NflogParse, Ipv4LaterFragmentHasNoPorts) {
  std::vector<std::uint8_t> p = {0x45, 0, 0, 84, 0,  0, 0x00, 0x10, 64,   IPPROTO_UDP, 0, 0,
                                 192,  0, 2, 3,  10, 1, 2,    3,    0x9c, 0x40,        0, 53};
  DropEvent ev;
  parse_packet_headers(p, 0, ev);  // family guessed from the version nibble
  EXPECT_TRUE(ev.has_addresses);
  EXPECT_FALSE(ev.has_ports);
}

TEST(NflogParse, Ipv6TcpBehindAHopByHopHeader) {
  std::vector<std::uint8_t> p(40 + 8 + 20, 0);
  p[0] = 0x60;
  p[4] = 0;
  p[5] = 28;               // payload length
  p[6] = IPPROTO_HOPOPTS;  // next header
  p[8] = 0x20;             // src 2001:db8::2
  p[9] = 0x01;
  p[10] = 0x0d;
  p[11] = 0xb8;
  p[23] = 2;
  p[24] = 0xfc;  // dst fc00::1
  p[39] = 1;
  p[40] = IPPROTO_TCP;  // hop-by-hop: next = TCP, length 0 (8 bytes)
  p[48] = 0x9c;
  p[49] = 0x40;
  p[50] = 0x01;
  p[51] = 0xbb;
  DropEvent ev;
  parse_packet_headers(p, ETH_P_IPV6, ev);
  ASSERT_TRUE(ev.has_addresses);
  EXPECT_EQ(ev.family, Family::v6);
  EXPECT_EQ(ev.src.to_string(), "2001:db8::2");
  EXPECT_EQ(ev.dst.to_string(), "fc00::1");
  EXPECT_EQ(ev.proto, IPPROTO_TCP);
  EXPECT_EQ(ev.dport, 443);
  EXPECT_EQ(ev.length, 68U);
}

TEST(NflogParse, Icmpv6AndArp) {
  std::vector<std::uint8_t> p(48, 0);
  p[0] = 0x60;
  p[5] = 8;
  p[6] = IPPROTO_ICMPV6;
  p[40] = 135;  // neighbour solicitation
  DropEvent ev;
  parse_packet_headers(p, ETH_P_IPV6, ev);
  EXPECT_TRUE(ev.has_icmp);
  EXPECT_EQ(ev.icmp_type, 135);

  std::vector<std::uint8_t> arp = {0,   1, 8, 0, 6, 4, 0, 2, 1, 2, 3,   4, 5, 6,
                                   192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 192, 0, 2, 3};
  DropEvent a;
  parse_packet_headers(arp, ETH_P_ARP, a);
  ASSERT_TRUE(a.has_addresses);
  EXPECT_EQ(a.src.to_string(), "192.0.2.1");  // the claimed address
  EXPECT_EQ(a.dst.to_string(), "192.0.2.3");
  EXPECT_EQ(a.proto, 0);
}

TEST(NflogParse, TruncatedPacketsYieldNoAddresses) {
  std::vector<std::uint8_t> p = {0x45, 0, 0, 84};
  DropEvent ev;
  parse_packet_headers(p, ETH_P_IP, ev);
  EXPECT_FALSE(ev.has_addresses);
}

}  // namespace
}  // namespace sg::netpolicy
