// Which of a VM's conntrack entries a change of its rules ends
// (netpolicy/conntrack_flush.h).
#include <gtest/gtest.h>
#include <netinet/in.h>

#include "netpolicy/conntrack_flush.h"

namespace sg::netpolicy {
namespace {

FlowEvent flow(std::int64_t vm, const char* dst, std::uint8_t proto, std::uint16_t dport) {
  FlowEvent f;
  f.vm_id = vm;
  f.dst = *IpAddress::parse(dst);
  f.family = f.dst.family;
  f.proto = proto;
  f.has_ports = proto == IPPROTO_TCP || proto == IPPROTO_UDP;
  f.dport = dport;
  return f;
}

TEST(FlowSelector, AVmsFlowsOnlyAndAllOfThemByDefault) {
  FlowSelector all{7};
  EXPECT_TRUE(selects(all, flow(7, "203.0.113.9", IPPROTO_TCP, 443)));
  EXPECT_TRUE(selects(all, flow(7, "2001:db8::1", IPPROTO_ICMPV6, 0)));
  EXPECT_FALSE(selects(all, flow(8, "203.0.113.9", IPPROTO_TCP, 443)));  // another VM's
}

TEST(FlowSelector, AHolesDestinationProtocolAndPorts) {
  FlowSelector hole{7, *Prefix::parse("203.0.113.0/24"), IPPROTO_UDP, 5000, 5010};
  EXPECT_TRUE(selects(hole, flow(7, "203.0.113.9", IPPROTO_UDP, 5000)));
  EXPECT_TRUE(selects(hole, flow(7, "203.0.113.200", IPPROTO_UDP, 5010)));
  EXPECT_FALSE(selects(hole, flow(7, "203.0.113.9", IPPROTO_UDP, 5011)));   // other port
  EXPECT_FALSE(selects(hole, flow(7, "203.0.113.9", IPPROTO_TCP, 5000)));   // other protocol
  EXPECT_FALSE(selects(hole, flow(7, "198.51.100.9", IPPROTO_UDP, 5000)));  // outside the prefix
  EXPECT_FALSE(selects(hole, flow(7, "2001:db8::9", IPPROTO_UDP, 5000)));   // other family
  EXPECT_FALSE(selects(hole, flow(7, "203.0.113.9", IPPROTO_ICMP, 0)));     // no ports
  // Any protocol, any port: everything to the destination.
  FlowSelector any{7, *Prefix::parse("2001:db8:a::/64")};
  EXPECT_TRUE(selects(any, flow(7, "2001:db8:a::2", IPPROTO_ICMPV6, 0)));
  EXPECT_TRUE(selects(any, flow(7, "2001:db8:a::2", IPPROTO_TCP, 22)));
  EXPECT_FALSE(selects(any, flow(7, "2001:db8:b::2", IPPROTO_TCP, 22)));
}

}  // namespace
}  // namespace sg::netpolicy
