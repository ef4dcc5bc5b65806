// Client classification: first match wins; fingerprint, group, CA, source,
// catch-all; the default; refusal of unlisted clients.
#include "trust/classify.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace sg::trust {
namespace {

using testing::fp;
using testing::ip;
using testing::parse_ok;

const std::string kRules = "[clients]\ndefault = \"untrusted\"\n[clients.groups]\nlab = [\"" + fp('1') + "\", \"" +
                           fp('2') +
                           "\"]\n"
                           "[[clients.rules]]\nname = \"owner\"\nfingerprint = \"" +
                           fp('a') +
                           "\"\nlevel = \"trusted\"\n"
                           "[[clients.rules]]\nfingerprint = \"" +
                           fp('1') +
                           "\"\nlevel = \"semi-trusted\"\n"  // also in lab, same level: an explicit mention
                           "[[clients.rules]]\ngroup = \"lab\"\nlevel = \"semi-trusted\"\n"
                           "[[clients.rules]]\nissuer_ca = \"" +
                           fp('c') +
                           "\"\nlevel = \"trusted\"\n"
                           "[[clients.rules]]\nsource = \"198.51.100.0/24\"\nlevel = \"semi-trusted\"\n"
                           "[[clients.rules]]\nsource = \"2001:db8::/32\"\nlevel = \"trusted\"\n";

TEST(Classify, FingerprintRule) {
  Policy p = parse_ok(kRules);
  Classification c = classify(p, {fp('a'), std::nullopt, std::nullopt});
  EXPECT_EQ(c.level, TrustLevel::trusted);
  EXPECT_FALSE(c.refused);
  EXPECT_EQ(c.rule_index, 0U);
  EXPECT_EQ(c.reason, "client rule 1 'owner' (fingerprint sha256:aaaaaaaaaaaaaaaa...)");
}

TEST(Classify, FirstMatchWins) {
  Policy p = parse_ok(kRules);
  // fp('1') is named by rule 2 and by group lab in rule 3; rule 2 decides.
  Classification c = classify(p, {fp('1'), std::nullopt, std::nullopt});
  EXPECT_EQ(c.rule_index, 1U);
  // The owner's key wins over its CA and its source address.
  Classification owner = classify(p, {fp('a'), fp('c'), ip("198.51.100.9")});
  EXPECT_EQ(owner.rule_index, 0U);
  // A semi-trusted group member arriving from a trusted source prefix stays semi-trusted.
  Classification member = classify(p, {fp('2'), std::nullopt, ip("2001:db8::5")});
  EXPECT_EQ(member.level, TrustLevel::semi_trusted);
  EXPECT_EQ(member.reason, "client rule 3 (group 'lab')");
}

TEST(Classify, IssuerCaRule) {
  Policy p = parse_ok(kRules);
  Classification c = classify(p, {fp('9'), fp('c'), ip("198.51.100.9")});
  EXPECT_EQ(c.level, TrustLevel::trusted);
  EXPECT_EQ(c.reason, "client rule 4 (issuer CA sha256:cccccccccccccccc...)");
  EXPECT_EQ(classify(p, {fp('9'), fp('d'), std::nullopt}).reason, "default");
}

TEST(Classify, SourcePrefixRules) {
  Policy p = parse_ok(kRules);
  EXPECT_EQ(classify(p, {fp('9'), std::nullopt, ip("198.51.100.200")}).reason,
            "client rule 5 (source 198.51.100.0/24)");
  Classification v6 = classify(p, {fp('9'), std::nullopt, ip("2001:db8:1::1")});
  EXPECT_EQ(v6.level, TrustLevel::trusted);
  EXPECT_EQ(v6.rule_index, 5U);
  // Local clients have no source address; a source rule never matches them.
  EXPECT_EQ(classify(p, {fp('9'), std::nullopt, std::nullopt}).reason, "default");
  EXPECT_EQ(classify(p, {fp('9'), std::nullopt, ip("203.0.113.1")}).reason, "default");
}

TEST(Classify, DefaultLevelAppliesAndCanBeChanged) {
  Policy empty = parse_ok("");
  Classification c = classify(empty, {fp('9'), std::nullopt, std::nullopt});
  EXPECT_EQ(c.level, TrustLevel::untrusted);
  EXPECT_FALSE(c.refused);
  EXPECT_FALSE(c.rule_index);
  EXPECT_EQ(c.reason, "default");
  Policy semi = parse_ok("[clients]\ndefault = \"semi-trusted\"\n");
  EXPECT_EQ(classify(semi, {fp('9'), std::nullopt, std::nullopt}).level, TrustLevel::semi_trusted);
}

TEST(Classify, CatchAllRule) {
  Policy p = parse_ok("[[clients.rules]]\nfingerprint = \"" + fp('a') +
                      "\"\nlevel = \"trusted\"\n[[clients.rules]]\nany = true\nlevel = \"semi-trusted\"\n");
  Classification c = classify(p, {fp('9'), std::nullopt, std::nullopt});
  EXPECT_EQ(c.level, TrustLevel::semi_trusted);
  EXPECT_EQ(c.reason, "client rule 2 (any client)");
}

TEST(Classify, OnlyListedClientsRefusesTheUnknown) {
  Policy p = parse_ok("[owner]\nonly_listed_clients = true\n[[clients.rules]]\nfingerprint = \"" + fp('a') +
                      "\"\nlevel = \"untrusted\"\n[[clients.rules]]\nsource = \"198.51.100.0/24\"\n"
                      "level = \"semi-trusted\"\n");
  Classification known = classify(p, {fp('a'), std::nullopt, std::nullopt});
  EXPECT_FALSE(known.refused);
  EXPECT_EQ(known.level, TrustLevel::untrusted);
  // A source rule lists a client too.
  EXPECT_FALSE(classify(p, {fp('9'), std::nullopt, ip("198.51.100.1")}).refused);
  Classification stranger = classify(p, {fp('9'), std::nullopt, std::nullopt});
  EXPECT_TRUE(stranger.refused);
  EXPECT_EQ(stranger.level, TrustLevel::untrusted);
  EXPECT_FALSE(stranger.rule_index);
  EXPECT_EQ(stranger.reason, "not listed (owner.only_listed_clients)");
}

TEST(Classify, DescribeRule) {
  Policy p = parse_ok(kRules);
  EXPECT_EQ(describe_rule(p, 2), "client rule 3 (group 'lab')");
  EXPECT_EQ(describe_rule(p, 0), "client rule 1 'owner' (fingerprint sha256:aaaaaaaaaaaaaaaa...)");
}

}  // namespace
}  // namespace sg::trust
