// The policy data model: level names, ports, destinations, sizes, defaults.
#include "trust/policy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include "test_util.h"

namespace sg::trust {
namespace {

using ::testing::HasSubstr;
using testing::prefix;

TEST(TrustLevel, RoundTripsTheExactWords) {
  for (TrustLevel l : kAllLevels) EXPECT_EQ(parse_trust_level(to_string(l)), l);
  EXPECT_EQ(to_string(TrustLevel::semi_trusted), "semi-trusted");
  EXPECT_FALSE(parse_trust_level("semi_trusted"));
  EXPECT_FALSE(parse_trust_level("Trusted"));
  EXPECT_FALSE(parse_trust_level(""));
  EXPECT_LT(TrustLevel::untrusted, TrustLevel::semi_trusted);
  EXPECT_LT(TrustLevel::semi_trusted, TrustLevel::trusted);
}

TEST(PortRange, ParsesSinglePortsAndRanges) {
  EXPECT_EQ(*PortRange::parse("443"), (PortRange{443, 443}));
  EXPECT_EQ(*PortRange::parse("1000-2000"), (PortRange{1000, 2000}));
  EXPECT_EQ(*PortRange::parse(" 1 - 65535 "), (PortRange{1, 65535}));
  EXPECT_FALSE(PortRange::parse("0"));
  EXPECT_FALSE(PortRange::parse("65536"));
  EXPECT_FALSE(PortRange::parse("http"));
  EXPECT_FALSE(PortRange::parse("-5"));
  auto reversed = PortRange::parse("2000-1000");
  ASSERT_FALSE(reversed);
  EXPECT_THAT(reversed.error().message, HasSubstr("write 1000-2000"));
}

TEST(PortRange, ListsParseFormatAndCover) {
  auto ports = parse_ports("80,443, 1000-2000");
  ASSERT_TRUE(ports);
  EXPECT_EQ(format_ports(*ports), "80,443,1000-2000");
  EXPECT_EQ(format_ports(*parse_ports("*")), "*");
  EXPECT_FALSE(parse_ports(""));
  EXPECT_FALSE(parse_ports("80,"));
  EXPECT_TRUE(ports_contain(*ports, 1500));
  EXPECT_FALSE(ports_contain(*ports, 81));
  std::vector<PortRange> closed = {{1, 52}, {54, 79}};
  EXPECT_TRUE(ports_cover(closed, {10, 20}));
  EXPECT_TRUE(ports_cover(closed, {50, 52}));
  EXPECT_FALSE(ports_cover(closed, {50, 60}));  // 53 is open
  EXPECT_TRUE(ports_cover({{1, 10}, {11, 20}}, {5, 15}));
  EXPECT_TRUE(ports_cover({{1, 65535}}, {65535, 65535}));
}

TEST(Destination, ParsesIpv4AndBracketedIpv6) {
  auto d = Destination::parse("203.0.113.0/24:80,443");
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(d->prefix, prefix("203.0.113.0/24"));
  EXPECT_EQ(d->to_string(), "203.0.113.0/24:80,443");
  EXPECT_TRUE(d->matches(testing::ip("203.0.113.9"), 443));
  EXPECT_FALSE(d->matches(testing::ip("203.0.113.9"), 22));

  auto host = Destination::parse("198.51.100.7:1000-2000");
  ASSERT_TRUE(host);
  EXPECT_EQ(host->prefix.length, 32);
  EXPECT_EQ(host->to_string(), "198.51.100.7:1000-2000");

  auto v6 = Destination::parse("[2001:db8::/32]:22");
  ASSERT_TRUE(v6) << v6.error().message;
  EXPECT_EQ(v6->prefix, prefix("2001:db8::/32"));
  EXPECT_EQ(v6->to_string(), "[2001:db8::/32]:22");

  auto all = Destination::parse("[2001:db8::7]:*");
  ASSERT_TRUE(all);
  EXPECT_EQ(all->to_string(), "[2001:db8::7]:*");
}

TEST(Destination, RejectsAmbiguousOrIncompleteText) {
  auto unbracketed = Destination::parse("2001:db8::/32:22");
  ASSERT_FALSE(unbracketed);
  EXPECT_THAT(unbracketed.error().message, HasSubstr("[2001:db8::/32]:22"));

  auto no_ports = Destination::parse("203.0.113.0/24");
  ASSERT_FALSE(no_ports);
  EXPECT_THAT(no_ports.error().message, HasSubstr("203.0.113.0/24:*"));

  auto host_bits = Destination::parse("203.0.113.7/24:80");
  ASSERT_FALSE(host_bits);
  EXPECT_THAT(host_bits.error().message, HasSubstr("host bits"));

  EXPECT_FALSE(Destination::parse("[203.0.113.0/24]:80"));
  EXPECT_FALSE(Destination::parse("[2001:db8::/32:22"));
  EXPECT_FALSE(Destination::parse("[2001:db8::/32]22"));
  EXPECT_FALSE(Destination::parse("203.0.113.0/24:0"));
  EXPECT_FALSE(Destination::parse(""));
}

TEST(ByteSize, ParsesBinaryAndDecimalUnits) {
  EXPECT_EQ(*parse_byte_size("10GiB"), 10ULL << 30U);
  EXPECT_EQ(*parse_byte_size("500MB"), 500'000'000ULL);
  EXPECT_EQ(*parse_byte_size("1TiB"), 1ULL << 40U);
  EXPECT_EQ(*parse_byte_size("2048"), 2048ULL);
  EXPECT_EQ(*parse_byte_size("7 KiB"), 7168ULL);
  EXPECT_FALSE(parse_byte_size("10 gigs"));
  EXPECT_FALSE(parse_byte_size("1.5GiB"));
  EXPECT_FALSE(parse_byte_size("GiB"));
  EXPECT_FALSE(parse_byte_size("99999999999999999999"));
  EXPECT_FALSE(parse_byte_size("2048TiB"));  // more than a petabyte a day
  EXPECT_EQ(format_byte_size(10ULL << 30U), "10GiB");
  EXPECT_EQ(format_byte_size(500'000'000ULL), "500MB");
  EXPECT_EQ(format_byte_size(1234), "1234B");
}

TEST(BitRate, FormatsForPeople) {
  EXPECT_EQ(format_bit_rate(8'000), "8 kbit/s");
  EXPECT_EQ(format_bit_rate(50'000'000), "50 Mbit/s");
  EXPECT_EQ(format_bit_rate(1'500'000), "1.5 Mbit/s");
  EXPECT_EQ(format_bit_rate(2'000'000'000), "2 Gbit/s");
}

TEST(Fingerprint, OnlyLowercaseSha256) {
  EXPECT_TRUE(is_valid_fingerprint(testing::fp('a')));
  EXPECT_FALSE(is_valid_fingerprint(testing::fp('A')));
  EXPECT_FALSE(is_valid_fingerprint(std::string(64, 'a')));
  EXPECT_FALSE(is_valid_fingerprint("sha256:abc"));
  EXPECT_FALSE(is_valid_fingerprint("sha1:" + std::string(64, 'a')));
}

TEST(Icmp, NamesPerFamily) {
  EXPECT_EQ(icmp_type_from_name(IcmpFamily::v4, "echo-request"), 8);
  EXPECT_EQ(icmp_type_from_name(IcmpFamily::v6, "echo-request"), 128);
  EXPECT_EQ(icmp_type_from_name(IcmpFamily::v6, "packet-too-big"), 2);
  EXPECT_FALSE(icmp_type_from_name(IcmpFamily::v4, "packet-too-big"));
  EXPECT_EQ(icmp_type_name(IcmpFamily::v4, 11), "time-exceeded");
  EXPECT_EQ(icmp_type_name(IcmpFamily::v4, 42), "42");
}

TEST(Defaults, ReservedListIsCompleteAndParses) {
  auto reserved = default_reserved_prefixes();
  for (const char* text :
       {"0.0.0.0/8",     "10.0.0.0/8",   "100.64.0.0/10", "127.0.0.0/8",     "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24",  "192.0.2.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "192.168.0.0/16",
        "224.0.0.0/3",   "::/128",       "::1/128",       "::ffff:0:0/96",   "64:ff9b::/96",   "100::/64",
        "2001:db8::/32", "fc00::/7",     "fe80::/10",     "ff00::/8"}) {
    EXPECT_NE(std::find(reserved.begin(), reserved.end(), prefix(text)), reserved.end()) << text;
  }
  // A parse failure would have produced a default-constructed 0.0.0.0/0.
  EXPECT_EQ(std::count(reserved.begin(), reserved.end(), Prefix{}), 0);
  for (const auto& u : unliftable_reserved_prefixes()) {
    EXPECT_NE(u, Prefix{});
    EXPECT_TRUE(std::any_of(reserved.begin(), reserved.end(), [&](const Prefix& r) { return r.contains(u); }))
        << u.to_string();
  }
}

TEST(Defaults, ClosedPortsAreThePrivilegedOnesExceptTheUsualServices) {
  auto closed = default_closed_ports();
  for (int port = 1; port < 1024; ++port) {
    bool open = port == 53 || port == 80 || port == 123 || port == 443;
    EXPECT_EQ(ports_contain(closed, static_cast<std::uint16_t>(port)), !open) << port;
  }
  EXPECT_TRUE(ports_contain(closed, 31337));
  EXPECT_FALSE(ports_contain(closed, 1024));
  EXPECT_FALSE(ports_contain(closed, 8080));
}

TEST(Guardrails, AllowReservedLiftsOnlyWhatItLists) {
  Guardrails g;
  g.reserved = default_reserved_prefixes();
  g.allow_reserved = {prefix("198.51.100.0/24")};
  EXPECT_EQ(g.reserved_prefix_for(testing::ip("198.51.100.7")), nullptr);
  ASSERT_NE(g.reserved_prefix_for(testing::ip("203.0.113.7")), nullptr);
  EXPECT_EQ(*g.reserved_prefix_for(testing::ip("203.0.113.7")), prefix("203.0.113.0/24"));
  // The most specific entry is named: ::1/128 rather than ::/96.
  EXPECT_EQ(*g.reserved_prefix_for(testing::ip("::1")), prefix("::1/128"));
  EXPECT_EQ(g.reserved_prefix_for(testing::ip("8.8.8.8")), nullptr);
}

// What the daemon ends when the guardrails change (an established flow's
// short path does not look at them): what the rules drop on a first packet.
TEST(Guardrails, ForbidIsWhatTheRulesDropOnAFlowsFirstPacket) {
  Guardrails g;
  g.reserved = default_reserved_prefixes();
  g.allow_reserved = {prefix("198.51.100.0/24"), prefix("2001:db8::/32")};
  g.closed_ports = {PortRange{25, 25}, PortRange{6660, 6669}};
  g.block = {prefix("198.51.100.128/25"), prefix("2001:db8:b::/48")};
  EXPECT_FALSE(g.forbid(testing::ip("198.51.100.7"), IPPROTO_TCP, 443));
  EXPECT_TRUE(g.forbid(testing::ip("198.51.100.200"), IPPROTO_TCP, 443));  // blocked
  EXPECT_TRUE(g.forbid(testing::ip("2001:db8:b::1"), IPPROTO_ICMPV6, 0));  // blocked, any protocol
  EXPECT_FALSE(g.forbid(testing::ip("2001:db8:a::1"), IPPROTO_ICMPV6, 0));
  EXPECT_TRUE(g.forbid(testing::ip("203.0.113.7"), IPPROTO_UDP, 53));   // reserved, not lifted
  EXPECT_TRUE(g.forbid(testing::ip("198.51.100.7"), IPPROTO_TCP, 25));  // closed port
  EXPECT_TRUE(g.forbid(testing::ip("198.51.100.7"), IPPROTO_UDP, 6665));
  EXPECT_FALSE(g.forbid(testing::ip("198.51.100.7"), IPPROTO_ICMP, 25));  // ports are TCP's and UDP's
  EXPECT_FALSE(g.forbid(testing::ip("198.51.100.7"), IPPROTO_TCP, 6670));
}

TEST(Guardrails, SameDropsComparesWhatTheRulesDropNotTheHostsAddresses) {
  Guardrails a;
  a.reserved = default_reserved_prefixes();
  a.block = {prefix("198.51.100.128/25")};
  Guardrails b = a;
  b.host_addresses = {prefix("198.51.100.1/32")};
  EXPECT_TRUE(a.same_drops(b));
  b.block.push_back(prefix("203.0.113.0/24"));
  EXPECT_FALSE(a.same_drops(b));
  b = a;
  b.closed_ports = {PortRange{25, 25}};
  EXPECT_FALSE(a.same_drops(b));
  b = a;
  b.allow_reserved = {prefix("198.51.100.0/24")};
  EXPECT_FALSE(a.same_drops(b));
}

}  // namespace
}  // namespace sg::trust
