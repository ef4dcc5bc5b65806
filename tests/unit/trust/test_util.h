// Helpers shared by the trust unit tests.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "trust/parse.h"

namespace sg::trust::testing {

// A valid fingerprint made of one repeated hex digit.
inline std::string fp(char digit) { return "sha256:" + std::string(64, digit); }

inline IpAddress ip(const std::string& text) { return *IpAddress::parse(text); }
inline Prefix prefix(const std::string& text) { return *Prefix::parse(text); }

// Parses text that must be valid; fails the test with every diagnostic otherwise.
inline Policy parse_ok(const std::string& text) {
  auto outcome = parse_policy_detailed(text, "test.toml");
  std::string all;
  for (const auto& d : outcome.diagnostics) all += d.to_string() + "\n";
  EXPECT_TRUE(outcome.ok()) << all;
  return outcome.ok() ? *outcome.policy : Policy{};
}

// The diagnostics of text that must be invalid.
inline std::vector<Diagnostic> parse_errors(const std::string& text) {
  auto outcome = parse_policy_detailed(text, "test.toml");
  EXPECT_FALSE(outcome.ok()) << "expected errors for:\n" << text;
  EXPECT_EQ(outcome.ok(), outcome.diagnostics.empty());
  return outcome.diagnostics;
}

// All diagnostics as one string, for EXPECT_THAT(..., HasSubstr(...)).
inline std::string joined(const std::vector<Diagnostic>& diagnostics) {
  std::string all;
  for (const auto& d : diagnostics) all += d.to_string() + "\n";
  return all;
}

}  // namespace sg::trust::testing
