#include "surrogated/address_pool.h"

#include <gtest/gtest.h>

namespace sg {
namespace {

AddressPool make_pool(int max_vms = 1000) {
  return AddressPool(*Prefix::parse("198.51.100.0/24"), *Prefix::parse("2001:db8:5::/56"), max_vms);
}

TEST(AddressPool, SizeIsTheSmallestOfV4V6AndMax) {
  EXPECT_EQ(make_pool().size(), 64);  // 256 / 4 addresses per /30
  EXPECT_EQ(make_pool(10).size(), 10);
  AddressPool v6only(std::nullopt, *Prefix::parse("2001:db8:5::/60"), 1000);
  EXPECT_EQ(v6only.size(), 16);
}

TEST(AddressPool, SlotsMapToDisjointLinks) {
  auto p = make_pool();
  auto a0 = p.addresses(0);
  EXPECT_EQ(a0.v4_link->to_string(), "198.51.100.0/30");
  EXPECT_EQ(a0.v4_gateway->to_string(), "198.51.100.1");
  EXPECT_EQ(a0.v4_guest->to_string(), "198.51.100.2");
  EXPECT_EQ(a0.v6_link->to_string(), "2001:db8:5::/64");
  EXPECT_EQ(a0.v6_gateway->to_string(), "2001:db8:5::1");
  EXPECT_EQ(a0.v6_guest->to_string(), "2001:db8:5::2");
  EXPECT_EQ(a0.mac, "52:54:00:00:00:00");
  auto a63 = p.addresses(63);
  EXPECT_EQ(a63.v4_guest->to_string(), "198.51.100.254");
  EXPECT_EQ(a63.v6_guest->to_string(), "2001:db8:5:3f::2");
  EXPECT_EQ(a63.mac, "52:54:00:00:00:3f");
  for (int i = 0; i < p.size(); ++i) {
    for (int j = i + 1; j < p.size(); ++j) {
      ASSERT_FALSE(p.addresses(i).v4_link->overlaps(*p.addresses(j).v4_link));
      ASSERT_FALSE(p.addresses(i).v6_link->overlaps(*p.addresses(j).v6_link));
    }
  }
}

TEST(AddressPool, PrefersNeverUsedThenLongestReleased) {
  auto p = make_pool(4);
  EXPECT_EQ(*p.choose({}, {}), 0);
  EXPECT_EQ(*p.choose({0}, {}), 1);
  // Slot 0 was released, slots 2 and 3 never used: a fresh one wins.
  EXPECT_EQ(*p.choose({1}, {{0, 100}}), 2);
  // All used once: the one released longest ago.
  EXPECT_EQ(*p.choose({}, {{0, 300}, {1, 100}, {2, 200}, {3, 400}}), 1);
}

TEST(AddressPool, ExhaustionSaysWhatToDo) {
  auto p = make_pool(2);
  auto r = p.choose({0, 1}, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("exhausted"), std::string::npos);
  EXPECT_NE(r.error().message.find("release a VM"), std::string::npos);
}

}  // namespace
}  // namespace sg
