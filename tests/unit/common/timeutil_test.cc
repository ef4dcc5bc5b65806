#include "common/timeutil.h"

#include <gtest/gtest.h>

namespace sg {
namespace {

TEST(Duration, ParsesUnitsAndCombinations) {
  EXPECT_EQ(*parse_duration("90"), 90);
  EXPECT_EQ(*parse_duration("90s"), 90);
  EXPECT_EQ(*parse_duration("30m"), 1800);
  EXPECT_EQ(*parse_duration("1h30m"), 5400);
  EXPECT_EQ(*parse_duration("2d"), 172800);
  EXPECT_EQ(*parse_duration("1w"), 604800);
}

TEST(Duration, RejectsWithAHint) {
  auto r = parse_duration("5y");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("use s, m, h, d or w"), std::string::npos);
  EXPECT_FALSE(parse_duration("").ok());
  EXPECT_FALSE(parse_duration("h").ok());
  EXPECT_FALSE(parse_duration("1h30").ok());
  EXPECT_FALSE(parse_duration("99999999999999d").ok());
}

TEST(Duration, FormatsShortly) {
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(45), "45s");
  EXPECT_EQ(format_duration(3600), "1h");
  EXPECT_EQ(format_duration(90000), "1d1h");
  EXPECT_EQ(format_duration(3661), "1h1m");
}

TEST(Utc, RoundTrips) {
  EXPECT_EQ(format_utc(0), "1970-01-01T00:00:00Z");
  auto t = parse_utc("2026-11-26T14:02:00Z");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(format_utc(*t), "2026-11-26T14:02:00Z");
  EXPECT_EQ(*parse_utc("2026-11-26 14:02:00"), *t);
  EXPECT_EQ(*parse_utc(std::to_string(*t)), *t);
  EXPECT_FALSE(parse_utc("yesterday").ok());
}

}  // namespace
}  // namespace sg
