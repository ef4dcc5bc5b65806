#include "common/net.h"

#include <gtest/gtest.h>

namespace sg {
namespace {

TEST(IpAddress, ParsesAndPrintsBothFamilies) {
  auto a = IpAddress::parse("198.51.100.7");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->family, Family::v4);
  EXPECT_EQ(a->to_string(), "198.51.100.7");
  auto b = IpAddress::parse("2001:DB8::7");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->family, Family::v6);
  EXPECT_EQ(b->to_string(), "2001:db8::7");
}

TEST(IpAddress, RejectsGarbageWithExample) {
  auto a = IpAddress::parse("198.51.100.300");
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.error().message.find("example"), std::string::npos);
  EXPECT_FALSE(IpAddress::parse("").ok());
  EXPECT_FALSE(IpAddress::parse("2001:db8:::1").ok());
}

TEST(IpAddress, PlusCarriesAcrossBytes) {
  EXPECT_EQ(IpAddress::parse("198.51.100.255")->plus(1).to_string(), "198.51.101.0");
  EXPECT_EQ(IpAddress::parse("2001:db8::ffff")->plus(2).to_string(), "2001:db8::1:1");
}

TEST(Prefix, ParsesContainsAndOverlaps) {
  auto p = Prefix::parse("198.51.100.0/24");
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->contains(*IpAddress::parse("198.51.100.255")));
  EXPECT_FALSE(p->contains(*IpAddress::parse("198.51.101.0")));
  EXPECT_FALSE(p->contains(*IpAddress::parse("::ffff:198.51.100.1")));  // other family never matches
  auto q = Prefix::parse("198.51.100.128/25");
  EXPECT_TRUE(p->contains(*q));
  EXPECT_FALSE(q->contains(*p));
  EXPECT_TRUE(q->overlaps(*p));
  auto h = Prefix::parse("2001:db8::1");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->length, 128);
  auto odd = Prefix::parse("100.64.0.0/10");
  ASSERT_TRUE(odd.ok());
  EXPECT_TRUE(odd->contains(*IpAddress::parse("100.127.255.255")));
  EXPECT_FALSE(odd->contains(*IpAddress::parse("100.128.0.0")));
}

TEST(Prefix, HostBitsSetIsAnErrorThatSuggestsTheFix) {
  auto p = Prefix::parse("198.51.100.7/24");
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.error().message.find("198.51.100.0/24"), std::string::npos) << p.error().message;
}

TEST(Prefix, BadLengths) {
  EXPECT_FALSE(Prefix::parse("198.51.100.0/33").ok());
  EXPECT_FALSE(Prefix::parse("198.51.100.0/").ok());
  EXPECT_FALSE(Prefix::parse("198.51.100.0/x").ok());
  EXPECT_FALSE(Prefix::parse("2001:db8::/129").ok());
  EXPECT_TRUE(Prefix::parse("0.0.0.0/0").ok());
}

TEST(Mac, Formats) { EXPECT_EQ(format_mac({0x52, 0x54, 0, 0xa, 0xb, 0xff}), "52:54:00:0a:0b:ff"); }

}  // namespace
}  // namespace sg
