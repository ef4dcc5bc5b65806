// Parsing and validation of the trust-policy file: safe defaults, and one test
// per kind of error, each checking the position and the suggested fix.
#include "trust/parse.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "certs/identity.h"
#include "test_util.h"

namespace sg::trust {
namespace {

using ::testing::AllOf;
using testing::fp;
using ::testing::HasSubstr;
using testing::joined;
using testing::parse_errors;
using testing::parse_ok;
using testing::prefix;
using ::testing::SizeIs;

// The one diagnostic of `text`, which must have exactly one.
Diagnostic only_error(const std::string& text) {
  auto errors = parse_errors(text);
  EXPECT_THAT(errors, SizeIs(1)) << joined(errors);
  return errors.empty() ? Diagnostic{} : errors.front();
}

// ---- defaults ----

TEST(ParseDefaults, EmptyFileIsTheSafePolicy) {
  Policy p = parse_ok("");
  EXPECT_EQ(p.default_level, TrustLevel::untrusted);
  EXPECT_FALSE(p.owner.only_listed_clients);
  EXPECT_FALSE(p.owner.bandwidth_ceiling_bits_per_second);
  EXPECT_EQ(p.owner.address_families, AddressFamilies::both);
  EXPECT_TRUE(p.rules.empty());
  EXPECT_TRUE(p.groups.empty());
  EXPECT_EQ(p.guardrails.reserved, default_reserved_prefixes());
  EXPECT_TRUE(p.guardrails.allow_reserved.empty());
  EXPECT_EQ(p.guardrails.closed_ports, default_closed_ports());
  EXPECT_TRUE(p.guardrails.block.empty());
  for (TrustLevel l : kAllLevels) {
    const LevelPolicy& lp = p.level(l);
    EXPECT_EQ(lp.level, l);
    // Nothing beyond the level's fixed meaning is allowed by default.
    EXPECT_TRUE(lp.tcp.empty());
    EXPECT_TRUE(lp.udp.empty());
    EXPECT_TRUE(lp.icmp_types.empty());
    EXPECT_TRUE(lp.icmpv6_types.empty());
    EXPECT_TRUE(lp.tcp_syn_only_ports.empty());
    EXPECT_TRUE(lp.ip_protocols.empty());
    EXPECT_FALSE(lp.dns.any_resolver());
    EXPECT_FALSE(lp.spoof.enabled());
    EXPECT_EQ(lp.per_destination.bits_per_second, 8'000U);
    EXPECT_EQ(lp.per_destination.packets_per_second, 2U);
    EXPECT_EQ(lp.per_destination.v4_prefix_length, 24);
    EXPECT_EQ(lp.per_destination.v6_prefix_length, 48);
    EXPECT_EQ(lp.tcp_syn_per_second, 1U);
    EXPECT_GT(lp.egress_bits_per_second, 0U);
    EXPECT_GT(lp.daily_quota_bytes, 0U);
  }
  EXPECT_EQ(p.level(TrustLevel::untrusted).egress_bits_per_second, 10'000'000U);
  EXPECT_EQ(p.level(TrustLevel::untrusted).daily_quota_bytes, 1ULL << 30U);
}

TEST(ParseDefaults, CommentsAndEmptySectionsChangeNothing) {
  Policy p = parse_ok("# nothing\n[owner]\n[clients]\n[levels.semi-trusted]\n[guardrails]\n");
  Policy d = parse_ok("");
  EXPECT_EQ(p.level(TrustLevel::semi_trusted).egress_bits_per_second,
            d.level(TrustLevel::semi_trusted).egress_bits_per_second);
  EXPECT_EQ(p.guardrails.reserved, d.guardrails.reserved);
}

TEST(ParseDefaults, VersionIsTheHashOfTheBytesAndFileNameIsKept) {
  const std::string text = "[owner]\naddress_families = \"ipv4\"\n";
  Policy p = parse_ok(text);
  EXPECT_EQ(p.version, "sha256:" + certs::sha256_hex(text));
  EXPECT_EQ(p.source_file, "test.toml");
  EXPECT_NE(parse_ok("").version, p.version);
}

TEST(ParseDefaults, FullExampleParses) {
  Policy p = parse_ok(R"(
[owner]
only_listed_clients = false
bandwidth_ceiling_mbit = 1000
address_families = "both"

[clients]
default = "semi-trusted"
groups = { lab = [")" +
                      fp('1') + R"("] }

[[clients.rules]]
fingerprint = ")" + fp('a') +
                      R"("
level = "trusted"
name = "owner"

[[clients.rules]]
group = "lab"
level = "semi-trusted"

[levels.semi-trusted]
tcp = ["203.0.113.0/24:80,443", "[2001:db8::/32]:22"]
udp = ["198.51.100.7:1000-2000"]
icmp = ["echo-request", 11]
icmpv6 = ["echo-request"]
tcp_syn_only_ports = [80, "33434-33534"]
protocols = [47]
egress_mbit = 2.5
daily_quota = "500MB"
syn_per_second = 3
per_destination = { kbit = 16, packets = 4, v4_prefix = 28, v6_prefix = 56 }
dns = { resolvers = ["gateway"], names = ["example.org", "*.example.net"] }
spoof = { sources = ["198.51.100.64/28"], destinations = ["203.0.113.0/24"] }

[guardrails]
allow_reserved = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]
block = ["203.0.113.66"]
closed_ports = [25, "135-139"]
host_addresses = ["192.0.2.1"]
)");
  EXPECT_EQ(p.default_level, TrustLevel::semi_trusted);
  EXPECT_EQ(p.owner.bandwidth_ceiling_bits_per_second, 1'000'000'000U);
  ASSERT_THAT(p.rules, SizeIs(2));
  EXPECT_EQ(p.rules[0].match, ClientRule::Match::fingerprint);
  EXPECT_EQ(p.rules[0].name, "owner");
  EXPECT_EQ(p.rules[0].location.line, 11);
  EXPECT_EQ(p.rules[1].match, ClientRule::Match::group);
  const LevelPolicy& s = p.level(TrustLevel::semi_trusted);
  ASSERT_THAT(s.tcp, SizeIs(2));
  EXPECT_EQ(s.tcp[1].to_string(), "[2001:db8::/32]:22");
  EXPECT_EQ(s.icmp_types, (std::vector<std::uint8_t>{8, 11}));
  EXPECT_EQ(s.icmpv6_types, (std::vector<std::uint8_t>{128}));
  EXPECT_EQ(s.tcp_syn_only_ports, (std::vector<PortRange>{{80, 80}, {33434, 33534}}));
  EXPECT_EQ(s.ip_protocols, (std::vector<std::uint8_t>{47}));
  EXPECT_EQ(s.egress_bits_per_second, 2'500'000U);
  EXPECT_EQ(s.daily_quota_bytes, 500'000'000U);
  EXPECT_EQ(s.tcp_syn_per_second, 3U);
  EXPECT_EQ(s.per_destination.bits_per_second, 16'000U);
  EXPECT_EQ(s.per_destination.v6_prefix_length, 56);
  EXPECT_TRUE(s.dns.gateway_resolver);
  EXPECT_THAT(s.dns.names, SizeIs(2));
  EXPECT_TRUE(s.spoof.enabled());
  EXPECT_EQ(p.guardrails.closed_ports, (std::vector<PortRange>{{25, 25}, {135, 139}}));
  EXPECT_EQ(p.guardrails.block, (std::vector<Prefix>{prefix("203.0.113.66")}));
}

TEST(ParseDefaults, DefaultCapsFollowTheCeilingDown) {
  Policy p = parse_ok("[owner]\nbandwidth_ceiling_mbit = 20\n");
  EXPECT_EQ(p.level(TrustLevel::untrusted).egress_bits_per_second, 10'000'000U);
  EXPECT_EQ(p.level(TrustLevel::semi_trusted).egress_bits_per_second, 20'000'000U);
  EXPECT_EQ(p.level(TrustLevel::trusted).egress_bits_per_second, 20'000'000U);
}

// ---- diagnostics format ----

TEST(ParseErrors, SyntaxErrorHasLineAndColumn) {
  Diagnostic d = only_error("[owner]\nonly_listed_clients = yes\n");
  EXPECT_EQ(d.file, "test.toml");
  EXPECT_EQ(d.line, 2);
  EXPECT_GT(d.column, 1);
  EXPECT_THAT(d.to_string(), AllOf(HasSubstr("test.toml:2:"), HasSubstr("TOML syntax error")));
}

TEST(ParseErrors, EveryErrorIsReportedSortedWithFileLineColumn) {
  auto errors = parse_errors(
      "[guardrails]\n"
      "block = [\"203.0.113.7/24\"]\n"
      "[owner]\n"
      "only_listed = true\n"
      "address_families = \"ipv5\"\n");
  ASSERT_THAT(errors, SizeIs(3)) << joined(errors);
  EXPECT_EQ(errors[0].line, 2);
  EXPECT_EQ(errors[1].line, 4);
  EXPECT_EQ(errors[2].line, 5);
  EXPECT_EQ(errors[1].to_string(),
            "test.toml:4:1: unknown key 'only_listed' in [owner]; did you mean 'only_listed_clients'?");
  auto result = parse_policy("[owner]\nonly_listed = true\naddress_families = \"ipv5\"\n", "p.toml");
  ASSERT_FALSE(result);
  EXPECT_EQ(std::count(result.error().message.begin(), result.error().message.end(), '\n'), 1);
  EXPECT_THAT(result.error().message, HasSubstr("p.toml:3:20: 'owner.address_families' is \"ipv5\""));
}

// ---- unknown keys ----

TEST(ParseErrors, UnknownKeySuggestsTheClosestKnownKey) {
  Diagnostic d = only_error("[levels.semi-trusted]\ntpc = [\"203.0.113.0/24:443\"]\n");
  EXPECT_EQ(d.line, 2);
  EXPECT_EQ(d.column, 1);
  EXPECT_EQ(d.message, "unknown key 'tpc' in [levels.semi-trusted]");
  EXPECT_EQ(d.hint, "did you mean 'tcp'?");
}

TEST(ParseErrors, UnknownKeyKnownElsewhereSaysWhereItBelongs) {
  Diagnostic d = only_error("only_listed_clients = true\n");
  EXPECT_EQ(d.hint, "'only_listed_clients' belongs in [owner]");
  Diagnostic alias = only_error("[levels.untrusted]\nquota = \"1GiB\"\n");
  EXPECT_EQ(alias.hint, "did you mean 'daily_quota'?");
  Diagnostic far = only_error("[guardrails]\nzzzzzz = 1\n");
  EXPECT_THAT(far.hint, HasSubstr("known keys here: reserved, allow_reserved"));
}

TEST(ParseErrors, UnknownLevelSuggestsTheRightSpelling) {
  Diagnostic d = only_error("[levels.semi_trusted]\negress_mbit = 5\n");
  EXPECT_EQ(d.message, "unknown trust level 'semi_trusted' in [levels]");
  EXPECT_EQ(d.hint, "did you mean 'semi-trusted'?");
}

TEST(ParseErrors, UnknownKeysInNestedTables) {
  auto errors = parse_errors(
      "[levels.semi-trusted.dns]\nresolver = [\"gateway\"]\n"
      "[levels.semi-trusted.per_destination]\nkbits = 8\n"
      "[[clients.rules]]\nany = true\nlevel = \"untrusted\"\nfingerprnt = \"x\"\n");
  EXPECT_THAT(joined(errors), AllOf(HasSubstr("did you mean 'resolvers'?"), HasSubstr("did you mean 'kbit'?"),
                                    HasSubstr("did you mean 'fingerprint'?")));
}

// ---- wrong types ----

TEST(ParseErrors, WrongTypeSaysWhatToWrite) {
  Diagnostic d = only_error("[owner]\nonly_listed_clients = \"yes\"\n");
  EXPECT_EQ(d.line, 2);
  EXPECT_EQ(d.column, 23);
  EXPECT_EQ(d.message, "'owner.only_listed_clients' must be true or false, not a string");
  EXPECT_EQ(d.hint, "write only_listed_clients = true");
  EXPECT_THAT(only_error("owner = 5\n").message, HasSubstr("'owner' must be a table, not an integer"));
  EXPECT_THAT(only_error("[levels.semi-trusted]\ntcp = \"203.0.113.0/24:443\"\n").message,
              HasSubstr("must be an array, not a string"));
  EXPECT_THAT(only_error("[levels.semi-trusted]\ntcp = [443]\n").message,
              HasSubstr("must be \"prefix:ports\" strings, not an integer"));
  EXPECT_THAT(only_error("[levels.untrusted]\negress_mbit = \"10\"\n").message,
              HasSubstr("must be a number, not a string"));
  EXPECT_THAT(only_error("[levels.untrusted]\ndaily_quota = 5\n").message,
              HasSubstr("must be a size string, not an integer"));
  EXPECT_THAT(only_error("[clients]\nrules = 3\n").message, HasSubstr("must be an array of tables"));
}

// ---- out of range ----

TEST(ParseErrors, RatesMustBePositive) {
  EXPECT_THAT(only_error("[levels.untrusted]\negress_mbit = 0\n").message, HasSubstr("a rate must be more than 0"));
  EXPECT_THAT(only_error("[levels.untrusted]\negress_mbit = -3.5\n").message, HasSubstr("more than 0"));
  EXPECT_THAT(only_error("[levels.untrusted]\negress_mbit = nan\n").message, HasSubstr("more than 0"));
  EXPECT_THAT(only_error("[owner]\nbandwidth_ceiling_mbit = 0\n").message, HasSubstr("more than 0"));
  EXPECT_THAT(only_error("[levels.untrusted.per_destination]\nkbit = 0\n").message, HasSubstr("more than 0"));
  EXPECT_THAT(only_error("[levels.untrusted.per_destination]\npackets = 0\n").message, HasSubstr("outside 1.."));
  EXPECT_THAT(only_error("[levels.untrusted]\nsyn_per_second = 0\n").message, HasSubstr("outside 1.."));
  EXPECT_THAT(only_error("[levels.untrusted.per_destination]\nv4_prefix = 33\n").message, HasSubstr("outside 8..32"));
  EXPECT_THAT(only_error("[levels.untrusted.per_destination]\nv6_prefix = 8\n").message, HasSubstr("outside 16..128"));
}

TEST(ParseErrors, PortsMustBeInRange) {
  EXPECT_THAT(only_error("[guardrails]\nclosed_ports = [70000]\n").message, HasSubstr("out of range"));
  EXPECT_THAT(only_error("[guardrails]\nclosed_ports = [0]\n").message, HasSubstr("out of range"));
  EXPECT_THAT(only_error("[guardrails]\nclosed_ports = [\"9-2\"]\n").message, HasSubstr("ends before it starts"));
  EXPECT_THAT(only_error("[levels.semi-trusted]\ntcp = [\"203.0.113.0/24:0\"]\n").message,
              HasSubstr("out of range (1-65535)"));
  EXPECT_THAT(only_error("[levels.semi-trusted]\ntcp_syn_only_ports = [65536]\n").message, HasSubstr("out of range"));
}

TEST(ParseErrors, QuotaNeedsANumberAndAUnit) {
  Diagnostic d = only_error("[levels.semi-trusted]\ndaily_quota = \"10 gigs\"\n");
  EXPECT_EQ(d.line, 2);
  EXPECT_THAT(d.message, AllOf(HasSubstr("unknown unit 'gigs'"), HasSubstr("\"10GiB\"")));
  EXPECT_THAT(only_error("[levels.semi-trusted]\ndaily_quota = \"0GiB\"\n").message, HasSubstr("is 0"));
  EXPECT_THAT(only_error("[levels.semi-trusted]\ndaily_quota = \"1.5GiB\"\n").message, HasSubstr("unknown unit"));
  EXPECT_THAT(only_error("[levels.semi-trusted]\ndaily_quota = \"5000TiB\"\n").message, HasSubstr("more than 1PiB"));
}

TEST(ParseErrors, SpoofAllowancesAreBoundedAndPaired) {
  auto too_many = only_error(
      "[levels.semi-trusted.spoof]\n"
      "sources = [\"198.51.100.0/28\", \"198.51.100.16/28\", \"198.51.100.32/28\", \"198.51.100.48/28\", "
      "\"198.51.100.64/28\"]\n"
      "destinations = [\"8.8.8.0/24\"]\n");
  EXPECT_THAT(too_many.message, HasSubstr("has 5 prefixes; at most 4"));
  EXPECT_EQ(too_many.line, 2);
  auto unpaired = only_error("[levels.semi-trusted.spoof]\nsources = [\"198.51.100.0/28\"]\n");
  EXPECT_THAT(unpaired.message, HasSubstr("needs both sources and destinations"));
  auto martian = only_error("[levels.trusted.spoof]\nsources = [\"127.0.0.0/8\"]\ndestinations = [\"8.8.8.0/24\"]\n");
  EXPECT_THAT(martian.message, HasSubstr("never a valid source"));
  auto reserved_dst =
      only_error("[levels.trusted.spoof]\nsources = [\"8.8.4.0/24\"]\ndestinations = [\"10.1.0.0/16\"]\n");
  EXPECT_THAT(reserved_dst.message, HasSubstr("inside the reserved prefix 10.0.0.0/8"));
}

TEST(ParseErrors, BadValuesOfEnumsAndNames) {
  EXPECT_EQ(only_error("[clients]\ndefault = \"semi_trusted\"\n").hint, "did you mean \"semi-trusted\"?");
  EXPECT_THAT(only_error("[levels.semi-trusted]\nicmp = [\"echo-requst\"]\n").hint,
              HasSubstr("did you mean 'echo-request'?"));
  EXPECT_THAT(only_error("[levels.semi-trusted]\nicmpv6 = [\"redirekt\"]\n").hint, HasSubstr("'redirect'"));
  EXPECT_THAT(only_error("[levels.semi-trusted]\nicmp = [300]\n").message, HasSubstr("out of range"));
  EXPECT_THAT(only_error("[levels.semi-trusted]\nprotocols = [6]\n").hint, HasSubstr("levels.semi-trusted.tcp"));
  EXPECT_THAT(only_error("[levels.semi-trusted]\nprotocols = [44]\n").message, HasSubstr("extension header"));
  EXPECT_THAT(only_error("[levels.semi-trusted]\nprotocols = [47, 47]\n").message, HasSubstr("twice"));
  EXPECT_THAT(only_error("[levels.semi-trusted.dns]\nresolvers = [\"gateway\"]\nnames = [\"Bad_Name\"]\n").message,
              HasSubstr("is not a DNS name"));
  EXPECT_THAT(only_error("[levels.semi-trusted.dns]\nresolvers = [\"resolver.example\"]\n").hint,
              HasSubstr("\"gateway\""));
}

// ---- bad prefixes ----

TEST(ParseErrors, HostBitsInAPrefixAreRejectedWithTheFix) {
  Diagnostic d = only_error("[guardrails]\nblock = [\"203.0.113.7/24\"]\n");
  EXPECT_EQ(d.line, 2);
  EXPECT_EQ(d.column, 10);
  EXPECT_THAT(d.message, AllOf(HasSubstr("host bits set"), HasSubstr("203.0.113.0/24")));
  EXPECT_THAT(only_error("[[clients.rules]]\nsource = \"198.51.100.300/24\"\nlevel = \"trusted\"\n").message,
              HasSubstr("not a valid IPv4 address"));
  EXPECT_THAT(only_error("[levels.semi-trusted]\ntcp = [\"2001:db8::/32:22\"]\n").message,
              HasSubstr("[2001:db8::/32]:22"));
  EXPECT_THAT(only_error("[levels.semi-trusted]\nudp = [\"203.0.113.0/24\"]\n").message, HasSubstr("203.0.113.0/24:*"));
  EXPECT_THAT(only_error("[guardrails]\nblock = [\"203.0.113.66\", \"203.0.113.66\"]\n").message,
              HasSubstr("lists 203.0.113.66 twice"));
}

// ---- client rules ----

TEST(ParseErrors, FingerprintsMustBeLowercaseSha256) {
  std::string upper = "sha256:" + std::string(64, 'A');
  auto d = only_error("[[clients.rules]]\nfingerprint = \"" + upper + "\"\nlevel = \"trusted\"\n");
  EXPECT_THAT(d.message, HasSubstr("is not a key fingerprint"));
  EXPECT_EQ(d.hint, "write it in lowercase: \"" + fp('a') + "\"");
  auto bare = only_error("[clients.groups]\nlab = [\"" + std::string(64, 'b') +
                         "\"]\n[[clients.rules]]\n"
                         "group = \"lab\"\nlevel = \"trusted\"\n");
  EXPECT_EQ(bare.hint, "write it with the algorithm: \"" + fp('b') + "\"");
}

TEST(ParseErrors, RuleNeedsExactlyOneMatcherAndALevel) {
  EXPECT_THAT(only_error("[[clients.rules]]\nlevel = \"trusted\"\n").message, HasSubstr("nothing to match"));
  EXPECT_THAT(only_error("[[clients.rules]]\nfingerprint = \"" + fp('a') +
                         "\"\nsource = \"198.51.100.0/24\"\n"
                         "level = \"trusted\"\n")
                  .message,
              HasSubstr("several matchers (fingerprint, source)"));
  auto no_level = only_error("[[clients.rules]]\nany = true\n");
  EXPECT_EQ(no_level.line, 1);
  EXPECT_THAT(no_level.message, HasSubstr("client rule 1 has no level"));
  EXPECT_THAT(only_error("[[clients.rules]]\nany = true\nlevel = \"root\"\n").hint, HasSubstr("\"trusted\""));
  EXPECT_THAT(only_error("[[clients.rules]]\nany = false\nlevel = \"trusted\"\n").message, HasSubstr("any = false"));
}

TEST(ParseErrors, SameFingerprintWithTwoLevelsIsAContradiction) {
  auto d = only_error("[[clients.rules]]\nfingerprint = \"" + fp('a') +
                      "\"\nlevel = \"trusted\"\n\n"
                      "[[clients.rules]]\nfingerprint = \"" +
                      fp('a') + "\"\nlevel = \"untrusted\"\n");
  EXPECT_EQ(d.line, 5);
  EXPECT_THAT(d.message, AllOf(HasSubstr("client rule 2"), HasSubstr("level untrusted"),
                               HasSubstr("client rule 1 (fingerprint sha256:aaaaaaaaaaaaaaaa..., line 1)"),
                               HasSubstr("already gives it trusted")));
  // Through a group, in either order.
  auto via_group = only_error("[clients.groups]\nlab = [\"" + fp('a') + "\", \"" + fp('b') +
                              "\"]\n[[clients.rules]]\ngroup = \"lab\"\nlevel = \"semi-trusted\"\n"
                              "[[clients.rules]]\nfingerprint = \"" +
                              fp('b') + "\"\nlevel = \"trusted\"\n");
  EXPECT_THAT(via_group.message, HasSubstr("already gives it semi-trusted"));
}

TEST(ParseErrors, RulesThatCanNeverMatch) {
  auto after_any = only_error(
      "[[clients.rules]]\nany = true\nlevel = \"untrusted\"\n"
      "[[clients.rules]]\nfingerprint = \"" +
      fp('a') + "\"\nlevel = \"trusted\"\n");
  EXPECT_EQ(after_any.line, 4);
  EXPECT_THAT(after_any.message, HasSubstr("can never match: client rule 1 (any client, line 1) matches every client"));
  EXPECT_THAT(after_any.hint, HasSubstr("move it above rule 1"));

  auto narrower_source = only_error(
      "[[clients.rules]]\nsource = \"198.51.100.0/24\"\nlevel = \"untrusted\"\n"
      "[[clients.rules]]\nsource = \"198.51.100.128/25\"\nlevel = \"trusted\"\n");
  EXPECT_THAT(narrower_source.message, HasSubstr("covers every address it names"));

  auto same_ca = only_error("[[clients.rules]]\nissuer_ca = \"" + fp('c') +
                            "\"\nlevel = \"untrusted\"\n"
                            "[[clients.rules]]\nissuer_ca = \"" +
                            fp('c') + "\"\nlevel = \"untrusted\"\n");
  EXPECT_THAT(same_ca.message, HasSubstr("names the same CA"));

  auto covered_by_group = only_error("[clients.groups]\nlab = [\"" + fp('a') +
                                     "\"]\n[[clients.rules]]\n"
                                     "group = \"lab\"\nlevel = \"trusted\"\n[[clients.rules]]\n"
                                     "fingerprint = \"" +
                                     fp('a') + "\"\nlevel = \"trusted\"\n");
  EXPECT_THAT(covered_by_group.message, HasSubstr("every fingerprint it names is matched by an earlier rule"));

  // A wider source after a narrower one is an exception pattern, not an error.
  parse_ok(
      "[[clients.rules]]\nsource = \"198.51.100.128/25\"\nlevel = \"trusted\"\n"
      "[[clients.rules]]\nsource = \"198.51.100.0/24\"\nlevel = \"untrusted\"\n");
}

TEST(ParseErrors, GroupsMustBeDefinedUsedAndWellFormed) {
  auto undefined = only_error("[clients.groups]\nlab = [\"" + fp('a') +
                              "\"]\n[[clients.rules]]\ngroup = \"lba\"\n"
                              "level = \"trusted\"\n[[clients.rules]]\ngroup = \"lab\"\nlevel = \"trusted\"\n");
  EXPECT_THAT(undefined.message, HasSubstr("names group 'lba', which [clients.groups] does not define"));
  EXPECT_EQ(undefined.hint, "did you mean 'lab'?");
  EXPECT_EQ(undefined.line, 4);

  auto unused = only_error("[clients.groups]\nlab = [\"" + fp('a') + "\"]\n");
  EXPECT_THAT(unused.message, HasSubstr("no client rule uses it"));

  auto empty = parse_errors("[clients.groups]\nlab = []\n[[clients.rules]]\ngroup = \"lab\"\nlevel = \"trusted\"\n");
  EXPECT_THAT(joined(empty), HasSubstr("group 'lab' is empty"));

  auto dup = only_error("[clients.groups]\nlab = [\"" + fp('a') + "\", \"" + fp('a') +
                        "\"]\n[[clients.rules]]\ngroup = \"lab\"\nlevel = \"trusted\"\n");
  EXPECT_THAT(dup.message, HasSubstr("twice (first on line 2)"));
}

TEST(ParseErrors, OnlyListedClientsContradictions) {
  EXPECT_THAT(
      only_error("[owner]\nonly_listed_clients = true\n[[clients.rules]]\nany = true\nlevel = \"untrusted\"\n").message,
      HasSubstr("contradicts owner.only_listed_clients"));
  EXPECT_THAT(only_error("[owner]\nonly_listed_clients = true\n[clients]\ndefault = \"untrusted\"\n").message,
              HasSubstr("'clients.default' is never used"));
}

// ---- levels ----

TEST(ParseErrors, KeysThatALevelCannotHave) {
  auto trusted = only_error("[levels.trusted]\ntcp = [\"203.0.113.0/24:443\"]\n");
  EXPECT_THAT(trusted.message, HasSubstr("trusted VMs already reach every destination"));
  EXPECT_EQ(trusted.hint, "remove it, or move it to [levels.semi-trusted]");
  auto untrusted = only_error("[levels.untrusted]\ndns = { resolvers = [\"gateway\"] }\n");
  EXPECT_THAT(untrusted.message, HasSubstr("untrusted VMs reach only their own client"));
  EXPECT_THAT(only_error("[levels.untrusted.spoof]\nsources = []\n").message, HasSubstr("'spoof' cannot widen"));
  EXPECT_THAT(only_error("[levels.trusted.dns]\nresolvers = [\"gateway\"]\nnames = [\"example.org\"]\n").message,
              HasSubstr("cannot hold for trusted VMs"));
}

TEST(ParseErrors, CapAboveTheCeiling) {
  auto d = only_error("[owner]\nbandwidth_ceiling_mbit = 100\n[levels.trusted]\negress_mbit = 200\n");
  EXPECT_EQ(d.line, 4);
  EXPECT_THAT(d.message, HasSubstr("(200 Mbit/s) is more than owner.bandwidth_ceiling_mbit (100 Mbit/s)"));
}

TEST(ParseErrors, DnsNameAllowlistNeedsTheGatewayResolverAlone) {
  auto d = only_error(
      "[guardrails]\nallow_reserved = [\"198.51.100.0/24\"]\n"
      "[levels.semi-trusted.dns]\nresolvers = [\"gateway\", \"198.51.100.53\"]\nnames = [\"example.org\"]\n");
  EXPECT_THAT(d.message, HasSubstr("only resolver is the host's"));
  EXPECT_THAT(only_error("[levels.semi-trusted.dns]\nnames = [\"example.org\"]\n").message,
              HasSubstr("only resolver is the host's"));
}

// ---- levels against guardrails ----

TEST(ParseErrors, AllowlistedDestinationInsideAReservedPrefix) {
  auto d = only_error("[levels.semi-trusted]\ntcp = [\"203.0.113.0/24:443\"]\n");
  EXPECT_EQ(d.line, 2);
  EXPECT_EQ(d.column, 8);
  EXPECT_THAT(d.message, HasSubstr("203.0.113.0/24 is inside the reserved prefix 203.0.113.0/24"));
  EXPECT_THAT(d.hint, HasSubstr("add \"203.0.113.0/24\" to guardrails.allow_reserved"));
  // Wider entries that merely contain reserved space are fine: the guardrail still drops that part.
  parse_ok("[levels.semi-trusted]\ntcp = [\"0.0.0.0/0:443\", \"[::/0]:443\"]\n");
  // And allow_reserved makes the lab entry valid.
  parse_ok(
      "[guardrails]\nallow_reserved = [\"203.0.113.0/24\"]\n[levels.semi-trusted]\ntcp = [\"203.0.113.0/24:443\"]\n");
  EXPECT_THAT(only_error("[levels.semi-trusted.dns]\nresolvers = [\"10.0.0.53\"]\n").message,
              HasSubstr("resolver 10.0.0.53 is inside the reserved prefix 10.0.0.0/8"));
}

TEST(ParseErrors, AllowlistedDestinationInsideTheBlockList) {
  auto d = only_error(
      "[guardrails]\nallow_reserved = [\"203.0.113.0/24\"]\nblock = [\"203.0.113.0/25\"]\n"
      "[levels.semi-trusted]\nudp = [\"203.0.113.64/26:443\"]\n");
  EXPECT_THAT(d.message, HasSubstr("inside the block-list prefix 203.0.113.0/25"));
  // Blocking one address inside an allowed range is how abuse complaints are answered.
  parse_ok(
      "[guardrails]\nallow_reserved = [\"203.0.113.0/24\"]\nblock = [\"203.0.113.66\"]\n"
      "[levels.semi-trusted]\nudp = [\"203.0.113.0/24:443\"]\n");
}

TEST(ParseErrors, AllowlistedPortThatIsClosed) {
  auto d = only_error("[levels.semi-trusted]\ntcp = [\"8.8.8.0/24:22,443\"]\n");
  EXPECT_THAT(d.message, HasSubstr("port 22 is closed by guardrails.closed_ports"));
  EXPECT_THAT(only_error("[levels.semi-trusted]\ntcp_syn_only_ports = [25]\n").message, HasSubstr("no SYN could pass"));
  parse_ok("[guardrails]\nclosed_ports = [31337]\n[levels.semi-trusted]\ntcp = [\"8.8.8.0/24:22\"]\n");
  parse_ok("[levels.semi-trusted]\ntcp = [\"8.8.8.0/24:*\", \"8.8.4.0/24:1-1024\"]\n");
}

TEST(ParseErrors, AddressFamilyTurnedOff) {
  auto d = only_error("[owner]\naddress_families = \"ipv4\"\n[levels.semi-trusted]\ntcp = [\"[2600::/16]:443\"]\n");
  EXPECT_THAT(d.message, HasSubstr("is IPv6, but owner.address_families is \"ipv4\""));
}

TEST(ParseErrors, ReservedListMayNotDropDefaultsSilently) {
  auto d = parse_errors("[guardrails]\nreserved = [\"10.0.0.0/8\"]\n");
  EXPECT_EQ(d.size(), default_reserved_prefixes().size() - 1);
  EXPECT_THAT(joined(d), HasSubstr("test.toml:2:12: 'guardrails.reserved' leaves out the default reserved prefix "
                                   "192.168.0.0/16; keep \"192.168.0.0/16\" in the list"));
  // Dropping a default entry with the explicit opt-in, and adding entries, is fine.
  std::string list;
  for (const auto& p : default_reserved_prefixes()) {
    if (p != prefix("198.51.100.0/24")) list += "\"" + p.to_string() + "\", ";
  }
  Policy p = parse_ok("[guardrails]\nreserved = [" + list + "\"192.0.2.128/25\", \"5.5.5.0/24\"]\n" +
                      "allow_reserved = [\"198.51.100.0/24\"]\n");
  EXPECT_EQ(p.guardrails.reserved.size(), default_reserved_prefixes().size() + 1);
}

TEST(ParseErrors, AllowReservedCannotLiftLoopbackOrUnreservedSpace) {
  EXPECT_THAT(only_error("[guardrails]\nallow_reserved = [\"127.0.0.0/8\"]\n").message, HasSubstr("cannot lift"));
  EXPECT_THAT(only_error("[guardrails]\nallow_reserved = [\"fe80::/64\"]\n").message, HasSubstr("cannot lift"));
  EXPECT_THAT(only_error("[guardrails]\nallow_reserved = [\"0.0.0.0/0\"]\n").message, HasSubstr("cannot lift"));
  EXPECT_THAT(only_error("[guardrails]\nallow_reserved = [\"8.8.8.0/24\"]\n").message,
              HasSubstr("not inside any reserved prefix"));
  parse_ok("[guardrails]\nallow_reserved = [\"10.20.0.0/16\"]\n");
}

TEST(ParseErrors, DuplicateAllowlistEntries) {
  EXPECT_THAT(only_error("[levels.semi-trusted]\ntcp = [\"8.8.8.0/24:443\", \"8.8.8.0/24:443\"]\n").message,
              HasSubstr("listed twice"));
  EXPECT_THAT(only_error("[levels.semi-trusted]\nicmp = [\"echo-request\", 8]\n").message,
              HasSubstr("echo-request twice"));
}

TEST(ParseErrors, OversizedFileIsRefusedBeforeParsing) {
  std::string big(kMaxPolicyBytes + 1, '#');
  auto d = only_error(big);
  EXPECT_THAT(d.message, HasSubstr("more than the"));
}

TEST(LoadPolicyFile, MissingFileIsASystemError) {
  auto r = load_policy_file("/nonexistent/trust-policy.toml");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().sys_errno, 0);
  EXPECT_THAT(r.error().describe(), HasSubstr("cannot open trust policy /nonexistent/trust-policy.toml"));
}

}  // namespace
}  // namespace sg::trust
