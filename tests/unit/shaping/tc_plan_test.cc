// The pure shaping plan: class ids derived from VM ids, the class tree and
// its rates, the quota throttle and the UTC day arithmetic.
#include "netpolicy/tc_plan.h"

#include <gtest/gtest.h>

#include <set>

namespace sg::netpolicy {
namespace {

constexpr std::uint32_t kMajor = kTcMajorDefault;

TEST(TcIds, StableAndCollisionFreeWithinTheIndexRange) {
  std::set<std::uint32_t> seen = {kTcRootMinor};
  for (std::int64_t id = 1; id <= kTcVmIndices; ++id) {
    for (FlowClass fc : {FlowClass::vm, FlowClass::client, FlowClass::nodes, FlowClass::other}) {
      std::uint32_t minor = tc_minor(id, fc);
      ASSERT_LE(minor, 0xfffeU) << id;
      ASSERT_TRUE(seen.insert(minor).second) << "minor " << minor << " of VM " << id << " used twice";
      auto slot = tc_slot_of(minor);
      ASSERT_TRUE(slot.has_value());
      EXPECT_EQ(slot->vm_index, tc_vm_index(id));
      EXPECT_EQ(slot->flow, fc);
    }
  }
  EXPECT_EQ(tc_minor(1, FlowClass::vm), 4U);
  EXPECT_EQ(tc_minor(1, FlowClass::other), 7U);
  EXPECT_EQ(tc_handle(kMajor, 3, FlowClass::client), (kMajor << 16U) | 13U);
  EXPECT_EQ(tc_handle_text(tc_handle(kMajor, 3, FlowClass::client)), "53:d");
}

TEST(TcIds, WrapAroundAfterTheLastIndex) {
  EXPECT_EQ(tc_vm_index(kTcVmIndices + 1), tc_vm_index(1));
  EXPECT_FALSE(tc_slot_of(kTcRootMinor).has_value());
  EXPECT_FALSE(tc_slot_of(2).has_value());
}

TEST(TcClasses, UnderAnOwnersCeilingClassesOnlyBorrow) {
  VmShaping vm{7, "sg7", 10'000'000, {}, std::nullopt};
  for (const auto& c : tc_vm_classes(kMajor, vm, 100'000'000)) {
    EXPECT_EQ(c.rate, kTcMinRate);  // a guaranteed rate would escape the ceiling
    EXPECT_EQ(c.ceil, 10'000'000U);
  }
}

TEST(TcClasses, VmTree) {
  VmShaping vm{7, "sg7", 10'000'000, {}, std::nullopt};
  auto classes = tc_vm_classes(kMajor, vm, std::nullopt);
  ASSERT_EQ(classes.size(), 4U);
  EXPECT_EQ(classes[0], (TcClass{tc_handle(kMajor, 7, FlowClass::vm), tc_handle(kMajor, 1), 10'000'000, 10'000'000}));
  EXPECT_EQ(classes[1].parent, classes[0].handle);
  EXPECT_EQ(classes[1].rate, 5'000'000U);  // the client's guarantee
  EXPECT_EQ(classes[1].ceil, 10'000'000U);
  EXPECT_EQ(classes[2].ceil, 10'000'000U);
  EXPECT_EQ(classes[3].ceil, 10'000'000U);
  EXPECT_LE(classes[1].rate + classes[2].rate + classes[3].rate, classes[0].rate);
}

TEST(TcClasses, CapNeverAboveTheCeilingAndNoCapTakesTheCeiling) {
  VmShaping capped{1, "sg1", 50'000'000, {}, std::nullopt};
  EXPECT_EQ(tc_vm_classes(kMajor, capped, 20'000'000)[0].ceil, 20'000'000U);
  EXPECT_EQ(tc_vm_classes(kMajor, capped, 20'000'000)[0].rate, kTcMinRate);
  VmShaping free{1, "sg1", 0, {}, std::nullopt};
  EXPECT_EQ(tc_vm_classes(kMajor, free, 20'000'000)[0].ceil, 20'000'000U);
  EXPECT_EQ(tc_vm_classes(kMajor, free, std::nullopt)[0].ceil, kTcUnlimited);
  EXPECT_EQ(tc_root_class(kMajor, std::nullopt).rate, kTcUnlimited);
}

TEST(TcClasses, EachRatedAuthcertGetsItsOwnClassAtItsRate) {
  VmShaping vm{2, "sg2", 10'000'000, {{0x8000, 2'000'000}, {0x8005, 1'000'000}}, std::nullopt};
  auto classes = tc_vm_classes(kMajor, vm, std::nullopt);
  ASSERT_EQ(classes.size(), 6U);
  // The shared nodes class (holes without a rate) keeps its share of the cap.
  EXPECT_EQ(classes[2].ceil, 10'000'000U);
  EXPECT_EQ(classes[4], (TcClass{tc_handle(kMajor, 0x8000), classes[0].handle, 2'000'000, 2'000'000}));
  EXPECT_EQ(classes[5], (TcClass{tc_handle(kMajor, 0x8005), classes[0].handle, 1'000'000, 1'000'000}));
  // Their guarantees come out of the cap: the children's rates fit in it.
  EXPECT_EQ(classes[1].rate, 3'500'000U);  // half of what the authcerts leave
  std::uint64_t sum = 0;
  for (std::size_t i = 1; i < classes.size(); ++i) sum += classes[i].rate;
  EXPECT_LE(sum, classes[0].rate);
  // Beyond half the cap they are scaled down; their ceilings stay.
  vm.hole_classes = {{0x8002, 8'000'000}};
  classes = tc_vm_classes(kMajor, vm, std::nullopt);
  EXPECT_EQ(classes.back().rate, 5'000'000U);
  EXPECT_EQ(classes.back().ceil, 8'000'000U);
  sum = 0;
  for (std::size_t i = 1; i < classes.size(); ++i) sum += classes[i].rate;
  EXPECT_LE(sum, classes[0].rate);
  // A rate above the VM's cap gets the cap; the throttle caps it too.
  vm.hole_classes = {{0x8001, 50'000'000}};
  EXPECT_EQ(tc_vm_classes(kMajor, vm, std::nullopt).back().ceil, 10'000'000U);
  vm.throttle = 100'000;
  EXPECT_EQ(tc_vm_classes(kMajor, vm, std::nullopt).back().ceil, 100'000U);
  // Minors outside the authcert range are never emitted.
  vm.hole_classes = {{7, 1'000'000}};
  EXPECT_EQ(tc_vm_classes(kMajor, vm, std::nullopt).size(), 4U);
}

TEST(TcIds, AuthcertMinorsNeverMeetVmMinors) {
  EXPECT_LT(tc_minor(kTcVmIndices, FlowClass::other), kTcHoleMinorFirst);
  EXPECT_FALSE(tc_slot_of(kTcHoleMinorFirst).has_value());
  EXPECT_TRUE(tc_is_hole_minor(kTcHoleMinorFirst));
  EXPECT_TRUE(tc_is_hole_minor(kTcHoleMinorLast));
  EXPECT_FALSE(tc_is_hole_minor(0xffff));
}

TEST(TcClasses, ThrottleSparesTheClient) {
  VmShaping vm{2, "sg2", 10'000'000, {}, 100'000};
  auto classes = tc_vm_classes(kMajor, vm, std::nullopt);
  EXPECT_EQ(classes[0].ceil, 10'000'000U);
  EXPECT_EQ(classes[1].ceil, 10'000'000U);  // its client: untouched
  EXPECT_EQ(classes[2].ceil, 100'000U);
  EXPECT_EQ(classes[3].ceil, 100'000U);
  EXPECT_LE(classes[3].rate, classes[3].ceil);
}

TEST(QuotaThrottle, StartsAtEightyPercent) {
  const std::uint64_t gb = 1'000'000'000;
  EXPECT_FALSE(quota_throttle(gb, gb * 79 / 100, 3600, 10'000'000).has_value());
  auto t = quota_throttle(gb, gb * 80 / 100, 3600, 1'000'000'000);
  ASSERT_TRUE(t.has_value());
  // 200 MB left for an hour: 200e6 * 8 / 3600 bit/s.
  EXPECT_NEAR(static_cast<double>(*t), 200e6 * 8 / 3600, 1.0);
  // Never above the cap, never below the floor.
  EXPECT_EQ(*quota_throttle(gb, gb * 80 / 100, 1, 10'000'000), 10'000'000U);
  EXPECT_EQ(*quota_throttle(gb, gb, 3600, 10'000'000), kTcMinRate);
  EXPECT_EQ(*quota_throttle(gb, gb * 2, 3600, 10'000'000), kTcMinRate);
  EXPECT_FALSE(quota_throttle(0, 5, 3600, 0).has_value());  // no quota
}

TEST(UtcDay, MidnightArithmetic) {
  const std::int64_t midnight = 1'790'035'200;  // a multiple of 86400
  ASSERT_EQ(midnight % 86'400, 0);
  EXPECT_EQ(seconds_to_utc_midnight(midnight), 86'400);
  EXPECT_EQ(seconds_to_utc_midnight(midnight - 1), 1);
  EXPECT_EQ(utc_day(midnight - 1) + 1, utc_day(midnight));
  EXPECT_EQ(utc_day(midnight), utc_day(midnight + 86'399));
}

TEST(TcText, LooksLikeTcClassShow) {
  EXPECT_EQ(tc_rate_text(10'000'000), "10Mbit");
  EXPECT_EQ(tc_rate_text(1'500'000), "1500Kbit");
  EXPECT_EQ(tc_rate_text(8'000), "8Kbit");
  EXPECT_EQ(tc_rate_text(300), "300bit");
  EXPECT_EQ(tc_class_text("eth0", TcClass{tc_handle(kMajor, 4), tc_handle(kMajor, 1), 10'000'000, 20'000'000},
                          "sg1: aggregate"),
            "class htb 53:4 parent 53:1 rate 10Mbit ceil 20Mbit dev eth0  # sg1: aggregate");
  EXPECT_EQ(tc_class_text("eth0", tc_root_class(kMajor, 1'000'000'000)),
            "class htb 53:1 root rate 1Gbit ceil 1Gbit dev eth0");
}

}  // namespace
}  // namespace sg::netpolicy
