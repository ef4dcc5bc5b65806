// The GRE wire format: headers as RFC 2784/2890 lay them out (checked
// against hand-written bytes, the same ones `tshark -V` decodes), round
// trips with and without key, and the refusals.
#include "tunnel/gre.h"

#include <gtest/gtest.h>

namespace sg::tunnel {
namespace {

using Bytes = std::vector<std::uint8_t>;

// A minimal IPv4 packet 203.0.113.34 -> 198.51.100.6 (UDP, no payload).
Bytes inner_v4() {
  Bytes p(28, 0);
  p[0] = 0x45;
  p[3] = 28;
  p[8] = 64;
  p[9] = 17;
  p[12] = 203, p[13] = 0, p[14] = 113, p[15] = 34;
  p[16] = 198, p[17] = 51, p[18] = 100, p[19] = 6;
  return p;
}

Bytes inner_v6() {
  Bytes p(40, 0);
  p[0] = 0x60;
  p[6] = 59;  // no next header
  auto src = *IpAddress::parse("2001:db8:e::2");
  auto dst = *IpAddress::parse("2001:db8:5:1::2");
  std::copy(src.bytes.begin(), src.bytes.end(), p.begin() + 8);
  std::copy(dst.bytes.begin(), dst.bytes.end(), p.begin() + 24);
  return p;
}

TEST(Gre, HeaderWithoutKeyIsFourBytes) {
  Bytes out;
  encode(GreHeader{kEtherTypeIpv4, std::nullopt, std::nullopt, false}, inner_v4(), out);
  ASSERT_EQ(out.size(), 4 + 28U);
  EXPECT_EQ(Bytes(out.begin(), out.begin() + 4), (Bytes{0x00, 0x00, 0x08, 0x00}));
}

TEST(Gre, HeaderWithKeySetsTheKBitAndCarriesTheKeyBigEndian) {
  Bytes out;
  encode(GreHeader{kEtherTypeIpv6, 0x01020304U, std::nullopt, false}, inner_v6(), out);
  ASSERT_EQ(out.size(), 8 + 40U);
  EXPECT_EQ(Bytes(out.begin(), out.begin() + 8), (Bytes{0x20, 0x00, 0x86, 0xdd, 0x01, 0x02, 0x03, 0x04}));
}

TEST(Gre, RoundTripsWithAndWithoutKeyAndSequence) {
  for (auto key : {std::optional<std::uint32_t>{}, std::optional<std::uint32_t>{7}}) {
    for (auto seq : {std::optional<std::uint32_t>{}, std::optional<std::uint32_t>{99}}) {
      for (bool csum : {false, true}) {
        Bytes inner = inner_v4();
        Bytes out;
        encode(GreHeader{kEtherTypeIpv4, key, seq, csum}, inner, out);
        auto d = decode(out);
        ASSERT_TRUE(d.ok()) << d.error().message;
        EXPECT_EQ(d->header.protocol, kEtherTypeIpv4);
        EXPECT_EQ(d->header.key, key);
        EXPECT_EQ(d->header.sequence, seq);
        EXPECT_EQ(d->header.checksum, csum);
        EXPECT_EQ(Bytes(d->payload.begin(), d->payload.end()), inner);
      }
    }
  }
}

TEST(Gre, RefusesWrongVersionRoutingBitBadChecksumAndTruncation) {
  EXPECT_FALSE(decode(Bytes{0x00, 0x01, 0x08, 0x00}).ok());        // version 1 (PPTP)
  EXPECT_FALSE(decode(Bytes{0x40, 0x00, 0x08, 0x00}).ok());        // routing present
  EXPECT_FALSE(decode(Bytes{0x20, 0x00, 0x08}).ok());              // 3 bytes
  EXPECT_FALSE(decode(Bytes{0x20, 0x00, 0x08, 0x00, 0x01}).ok());  // K bit, key cut short
  Bytes out;
  encode(GreHeader{kEtherTypeIpv4, std::nullopt, std::nullopt, true}, inner_v4(), out);
  out.back() ^= 0xff;
  EXPECT_FALSE(decode(out).ok());
}

TEST(Gre, OverheadAndMtuPerOuterFamily) {
  EXPECT_EQ(gre_overhead(Family::v4, false), 24);
  EXPECT_EQ(gre_overhead(Family::v4, true), 28);
  EXPECT_EQ(gre_overhead(Family::v6, false), 44);
  EXPECT_EQ(gre_overhead(Family::v6, true), 48);
  EXPECT_EQ(tunnel_mtu(Family::v4, false), 1476);
  EXPECT_EQ(tunnel_mtu(Family::v6, true, 9000), 8952);
}

TEST(Gre, StripsTheOuterIpv4HeaderOfARawSocketDatagram) {
  Bytes gre;
  encode(GreHeader{kEtherTypeIpv4, 3U, std::nullopt, false}, inner_v4(), gre);
  Bytes outer(20, 0);
  outer[0] = 0x45;
  outer[9] = kIpProtoGre;
  outer.insert(outer.end(), gre.begin(), gre.end());
  auto s = strip_ipv4(outer);
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_EQ(Bytes(s->begin(), s->end()), gre);
  outer[9] = 17;
  EXPECT_FALSE(strip_ipv4(outer).ok());
  outer[9] = kIpProtoGre;
  outer[6] = 0x20;  // more fragments
  EXPECT_FALSE(strip_ipv4(outer).ok());
}

TEST(Gre, InnerPacketMustMatchTheProtocolTypeAndYieldsItsAddresses) {
  auto v4 = inspect_inner(kEtherTypeIpv4, inner_v4());
  ASSERT_TRUE(v4.ok());
  EXPECT_EQ(v4->source.to_string(), "203.0.113.34");
  EXPECT_EQ(v4->destination.to_string(), "198.51.100.6");
  auto v6 = inspect_inner(kEtherTypeIpv6, inner_v6());
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->destination.to_string(), "2001:db8:5:1::2");
  EXPECT_FALSE(inspect_inner(kEtherTypeIpv6, inner_v4()).ok());
  EXPECT_FALSE(inspect_inner(0x6558, inner_v4()).ok());  // transparent Ethernet bridging: not ours
  EXPECT_EQ(*protocol_of(inner_v6()), kEtherTypeIpv6);
  EXPECT_FALSE(protocol_of(Bytes{0x10}).ok());
}

TEST(Gre, InternetChecksumOfRfc1071Example) {
  // RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2, checksum 220d.
  EXPECT_EQ(internet_checksum(Bytes{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}), 0x220d);
}

}  // namespace
}  // namespace sg::tunnel
