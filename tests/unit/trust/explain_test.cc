// explain(): every guardrail and every level, the order of the checks, and
// the wording an owner reads.
#include "trust/explain.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "test_util.h"

namespace sg::trust {
namespace {

using ::testing::ElementsAre;
using testing::fp;
using ::testing::HasSubstr;
using testing::ip;
using ::testing::IsEmpty;
using ::testing::Not;
using testing::parse_ok;

const std::string kPolicy = R"(
[guardrails]
allow_reserved = ["198.51.100.0/24", "2001:db8::/32"]
block = ["198.51.100.66", "2001:db8:bad::/48"]
host_addresses = ["192.0.2.1"]

[levels.trusted]
dns = { resolvers = ["gateway"] }
spoof = { sources = ["8.8.4.0/24"], destinations = ["198.51.100.0/24"] }

[levels.semi-trusted]
tcp = ["198.51.100.0/25:80,443", "[2001:db8::/32]:443", "8.8.8.0/24:8080"]
udp = ["198.51.100.0/24:443"]
icmp = ["echo-request"]
icmpv6 = ["echo-request"]
tcp_syn_only_ports = [80, "33434-33534"]
protocols = [47]
dns = { resolvers = ["gateway", "9.9.9.9"] }
)";

class ExplainTest : public ::testing::Test {
 protected:
  Policy policy = parse_ok(kPolicy);

  static ExplainQuery tcp(const std::string& dst, std::optional<std::uint16_t> port) {
    ExplainQuery q;
    q.destination = ip(dst);
    q.protocol = Protocol::tcp;
    q.port = port;
    return q;
  }
  static ExplainQuery udp(const std::string& dst, std::uint16_t port) {
    ExplainQuery q = tcp(dst, port);
    q.protocol = Protocol::udp;
    return q;
  }
  static ExplainQuery icmp(const std::string& dst, std::optional<std::uint8_t> type) {
    ExplainQuery q;
    q.destination = ip(dst);
    q.protocol = Protocol::icmp;
    q.icmp_type = type;
    return q;
  }
  static std::vector<std::string> checks(const Explanation& e) {
    std::vector<std::string> out;
    for (const auto& s : e.steps) out.push_back(s.check + ":" + std::string(to_string(s.outcome)));
    return out;
  }
};

// ---- guardrails ----

TEST_F(ExplainTest, ReservedPrefixDeniesEveryLevel) {
  for (TrustLevel level : kAllLevels) {
    Explanation e = explain(policy, level, tcp("10.1.2.3", 443));
    EXPECT_EQ(e.verdict, Verdict::denied);
    EXPECT_EQ(e.reason,
              "denied: 10.1.2.3 is in the reserved prefix 10.0.0.0/8 (guardrail 'reserved prefixes'); no policy can "
              "lift it unless guardrails.allow_reserved lists it");
    EXPECT_EQ(e.decided_by, "guardrail 'reserved prefixes'");
    EXPECT_THAT(checks(e), ElementsAre("anti-spoofing:skipped", "address family:passed", "host protection:passed",
                                       "reserved prefixes:denied"));
    EXPECT_THAT(e.limits, IsEmpty());
  }
  Explanation v6 = explain(policy, TrustLevel::trusted, tcp("fd00::1", 443));
  EXPECT_THAT(v6.reason, HasSubstr("fd00::1 is in the reserved prefix fc00::/7"));
}

TEST_F(ExplainTest, UnliftableReservedPrefixSaysSo) {
  Explanation e = explain(policy, TrustLevel::trusted, tcp("127.0.0.1", 443));
  EXPECT_EQ(e.reason,
            "denied: 127.0.0.1 is in the reserved prefix 127.0.0.0/8 (guardrail 'reserved prefixes'); it can never "
            "be lifted");
  Explanation mapped = explain(policy, TrustLevel::trusted, tcp("::ffff:8.8.8.8", 443));
  EXPECT_THAT(mapped.reason, HasSubstr("::ffff:0.0.0.0/96"));
}

TEST_F(ExplainTest, AllowReservedLiftsForLabs) {
  Explanation e = explain(policy, TrustLevel::trusted, tcp("198.51.100.7", 443));
  EXPECT_EQ(e.verdict, Verdict::allowed);
  ASSERT_GE(e.steps.size(), 4U);
  EXPECT_EQ(e.steps[3].check, "reserved prefixes");
  EXPECT_EQ(e.steps[3].outcome, StepOutcome::passed);
  EXPECT_THAT(e.steps[3].detail, HasSubstr("guardrails.allow_reserved lifts 198.51.100.0/24 (lab use only)"));
  // The rest of the documentation ranges stay dropped.
  EXPECT_EQ(explain(policy, TrustLevel::trusted, tcp("203.0.113.7", 443)).verdict, Verdict::denied);
}

TEST_F(ExplainTest, BlockListDeniesEveryLevel) {
  for (TrustLevel level : kAllLevels) {
    Explanation e = explain(policy, level, tcp("198.51.100.66", 443));
    EXPECT_EQ(e.verdict, Verdict::denied);
    EXPECT_EQ(e.decided_by, "guardrails.block");
    EXPECT_EQ(e.reason,
              "denied: 198.51.100.66 is in the block-list prefix 198.51.100.66 (guardrails.block); nothing reaches "
              "it until the owner removes it");
  }
  EXPECT_EQ(explain(policy, TrustLevel::trusted, tcp("2001:db8:bad::1", 443)).decided_by, "guardrails.block");
}

TEST_F(ExplainTest, ClosedPortsDenyEveryLevel) {
  for (TrustLevel level : kAllLevels) {
    Explanation e = explain(policy, level, tcp("8.8.8.8", 25));
    EXPECT_EQ(e.verdict, Verdict::denied);
    EXPECT_EQ(e.decided_by, "guardrail 'closed ports'");
    EXPECT_EQ(e.reason, "denied: tcp port 25 is closed for every destination (guardrails.closed_ports)");
  }
  EXPECT_EQ(explain(policy, TrustLevel::trusted, udp("8.8.8.8", 31337)).decided_by, "guardrail 'closed ports'");
  EXPECT_EQ(explain(policy, TrustLevel::trusted, udp("8.8.8.8", 123)).verdict, Verdict::allowed);
  // ICMP has no ports.
  Explanation ping = explain(policy, TrustLevel::trusted, icmp("8.8.8.8", 8));
  EXPECT_EQ(ping.verdict, Verdict::allowed);
  EXPECT_THAT(checks(ping), ::testing::Contains("closed ports:skipped"));
}

TEST_F(ExplainTest, HostProtection) {
  ExplainContext ctx;
  ctx.gateway = ip("10.0.0.1");
  ctx.host_addresses = {ip("8.8.1.1")};
  // Anything but what a VM needs is denied, before the reserved check.
  Explanation ssh = explain(policy, TrustLevel::trusted, tcp("10.0.0.1", 22), ctx);
  EXPECT_EQ(ssh.decided_by, "guardrail 'host protection'");
  EXPECT_EQ(ssh.reason,
            "denied: 10.0.0.1 is the VM's gateway (guardrail 'host protection'); a VM may only send it ICMP errors, "
            "pings, and DNS on port 53 to the gateway");
  EXPECT_EQ(ssh.steps.back().check, "host protection");
  // ICMP errors pass.
  Explanation unreach = explain(policy, TrustLevel::untrusted, icmp("10.0.0.1", 3), ctx);
  EXPECT_EQ(unreach.verdict, Verdict::allowed);
  EXPECT_THAT(unreach.reason, HasSubstr("ICMP destination-unreachable to the VM's gateway"));
  // A ping to its own gateway passes (the ruleset allows it too); to the
  // host's other addresses it does not.
  EXPECT_EQ(explain(policy, TrustLevel::untrusted, icmp("10.0.0.1", 8), ctx).verdict, Verdict::allowed);
  EXPECT_EQ(explain(policy, TrustLevel::untrusted, icmp("8.8.1.1", 8), ctx).verdict, Verdict::denied);
  // DNS to the gateway only when the level lists "gateway".
  Explanation dns = explain(policy, TrustLevel::semi_trusted, udp("10.0.0.1", 53), ctx);
  EXPECT_EQ(dns.verdict, Verdict::allowed);
  EXPECT_EQ(dns.decided_by, "levels.semi-trusted.dns.resolvers");
  Explanation no_dns = explain(policy, TrustLevel::untrusted, udp("10.0.0.1", 53), ctx);
  EXPECT_EQ(no_dns.verdict, Verdict::denied);
  EXPECT_THAT(no_dns.reason,
              HasSubstr("DNS to the gateway only when levels.untrusted.dns.resolvers lists \"gateway\""));
  // Other host addresses, from the context and from the policy, even for trusted VMs.
  Explanation other = explain(policy, TrustLevel::trusted, tcp("8.8.1.1", 443), ctx);
  EXPECT_EQ(other.decided_by, "guardrail 'host protection'");
  EXPECT_THAT(other.reason, HasSubstr("is the host itself"));
  EXPECT_EQ(explain(policy, TrustLevel::trusted, tcp("192.0.2.1", 443)).decided_by, "guardrail 'host protection'");
  // DNS to a host address that is not the gateway is not DNS to the gateway.
  EXPECT_EQ(explain(policy, TrustLevel::trusted, udp("8.8.1.1", 53), ctx).verdict, Verdict::denied);
  // ICMPv6 errors (packet-too-big) to a v6 gateway.
  ctx.gateway = ip("fe80::1");
  EXPECT_EQ(explain(policy, TrustLevel::untrusted, icmp("fe80::1", 2), ctx).verdict, Verdict::allowed);
}

TEST_F(ExplainTest, AntiSpoofingComesFirst) {
  ExplainContext ctx;
  ctx.vm_address = ip("10.0.0.2");
  ExplainQuery q = tcp("8.8.8.8", 443);
  q.source = ip("8.8.4.4");
  Explanation e = explain(policy, TrustLevel::semi_trusted, q, ctx);
  EXPECT_EQ(e.decided_by, "guardrail 'anti-spoofing'");
  EXPECT_EQ(e.reason, "denied: source 8.8.4.4 is not the VM's own address 10.0.0.2 (guardrail 'anti-spoofing')");
  EXPECT_THAT(checks(e), ElementsAre("anti-spoofing:denied"));

  q.source = ip("10.0.0.2");
  Explanation own = explain(policy, TrustLevel::trusted, q, ctx);
  EXPECT_EQ(own.verdict, Verdict::allowed);
  EXPECT_EQ(own.steps.front().outcome, StepOutcome::passed);

  // The trusted level's spoof allowance, only towards its destinations.
  ExplainQuery spoofed = tcp("198.51.100.9", 443);
  spoofed.source = ip("8.8.4.4");
  EXPECT_EQ(explain(policy, TrustLevel::trusted, spoofed, ctx).verdict, Verdict::allowed);
  spoofed.destination = ip("8.8.8.8");
  Explanation elsewhere = explain(policy, TrustLevel::trusted, spoofed, ctx);
  EXPECT_EQ(elsewhere.verdict, Verdict::denied);
  EXPECT_THAT(elsewhere.reason, HasSubstr("levels.trusted.spoof allows this source only towards"));

  // Without the VM's address the check cannot be made, and says so.
  Explanation unknown = explain(policy, TrustLevel::trusted, q);
  EXPECT_EQ(unknown.steps.front().outcome, StepOutcome::skipped);
}

TEST_F(ExplainTest, AddressFamilyTurnedOff) {
  Policy v4only = parse_ok("[owner]\naddress_families = \"ipv4\"\n");
  Explanation e = explain(v4only, TrustLevel::trusted, tcp("2600::1", 443));
  EXPECT_EQ(e.reason, "denied: IPv6 is turned off (owner.address_families = \"ipv4\")");
  EXPECT_EQ(e.decided_by, "owner.address_families");
  EXPECT_EQ(explain(v4only, TrustLevel::trusted, tcp("8.8.8.8", 443)).verdict, Verdict::allowed);
}

// ---- levels ----

TEST_F(ExplainTest, TrustedIsAllowedAfterTheGuardrails) {
  Explanation e = explain(policy, TrustLevel::trusted, tcp("8.8.8.8", 8443));
  EXPECT_EQ(e.verdict, Verdict::allowed);
  EXPECT_EQ(e.decided_by, "levels.trusted");
  EXPECT_EQ(e.reason, "allowed: trusted VMs reach any destination that passes the guardrails");
  EXPECT_THAT(checks(e), ElementsAre("anti-spoofing:skipped", "address family:passed", "host protection:passed",
                                     "reserved prefixes:passed", "block list:passed", "closed ports:passed",
                                     "level trusted:allowed"));
  EXPECT_THAT(e.limits, ElementsAre("per destination /24: 8 kbit/s and 2 packets/s", "TCP SYN: 1/s",
                                    "egress of the VM: 100 Mbit/s", "daily quota: 100GiB"));
  Explanation v6 = explain(policy, TrustLevel::trusted, tcp("2600::1", 443));
  EXPECT_EQ(v6.verdict, Verdict::allowed);
  EXPECT_EQ(v6.limits.front(), "per destination /48: 8 kbit/s and 2 packets/s");
}

TEST_F(ExplainTest, SemiTrustedTcpAndUdpAllowlists) {
  Explanation ok = explain(policy, TrustLevel::semi_trusted, tcp("198.51.100.9", 443));
  EXPECT_EQ(ok.verdict, Verdict::allowed);
  EXPECT_EQ(ok.reason, "allowed: levels.semi-trusted.tcp lists 198.51.100.0/25:80,443");
  EXPECT_EQ(explain(policy, TrustLevel::semi_trusted, tcp("2001:db8::7", 443)).verdict, Verdict::allowed);
  EXPECT_EQ(explain(policy, TrustLevel::semi_trusted, tcp("8.8.8.8", 8080)).verdict, Verdict::allowed);

  Explanation port = explain(policy, TrustLevel::semi_trusted, tcp("198.51.100.9", 8443));
  EXPECT_EQ(port.verdict, Verdict::denied);
  EXPECT_EQ(port.reason,
            "denied: 198.51.100.9 port 8443 is not in levels.semi-trusted.tcp (semi-trusted VMs reach only what "
            "the policy lists)");
  EXPECT_EQ(explain(policy, TrustLevel::semi_trusted, tcp("198.51.100.200", 443)).verdict, Verdict::denied);
  EXPECT_EQ(explain(policy, TrustLevel::semi_trusted, udp("198.51.100.200", 443)).verdict, Verdict::allowed);
  EXPECT_EQ(explain(policy, TrustLevel::semi_trusted, udp("198.51.100.9", 80)).decided_by, "levels.semi-trusted.udp");

  Explanation any_port = explain(policy, TrustLevel::semi_trusted, tcp("198.51.100.9", std::nullopt));
  EXPECT_EQ(any_port.verdict, Verdict::allowed);
  EXPECT_THAT(any_port.reason, HasSubstr("allowed on ports 80,443 only"));
}

TEST_F(ExplainTest, SemiTrustedSynOnlyPorts) {
  ExplainQuery probe = tcp("8.8.8.8", 33500);
  probe.syn_only = true;
  Explanation e = explain(policy, TrustLevel::semi_trusted, probe);
  EXPECT_EQ(e.verdict, Verdict::allowed);
  EXPECT_EQ(e.decided_by, "levels.semi-trusted.tcp_syn_only_ports");
  EXPECT_THAT(e.reason, HasSubstr("the connection itself is not"));
  probe.syn_only = false;
  Explanation conn = explain(policy, TrustLevel::semi_trusted, probe);
  EXPECT_EQ(conn.verdict, Verdict::denied);
  EXPECT_THAT(conn.reason, HasSubstr("lets only a bare SYN through"));
}

TEST_F(ExplainTest, SemiTrustedIcmpProtocolsAndDns) {
  EXPECT_EQ(explain(policy, TrustLevel::semi_trusted, icmp("8.8.8.8", 8)).reason,
            "allowed: levels.semi-trusted.icmp lists echo-request");
  EXPECT_EQ(explain(policy, TrustLevel::semi_trusted, icmp("8.8.8.8", 13)).reason,
            "denied: ICMP type timestamp-request is not in levels.semi-trusted.icmp");
  EXPECT_EQ(explain(policy, TrustLevel::semi_trusted, icmp("2600::1", 128)).reason,
            "allowed: levels.semi-trusted.icmpv6 lists echo-request");
  EXPECT_EQ(explain(policy, TrustLevel::semi_trusted, icmp("2600::1", 8)).verdict, Verdict::denied);

  ExplainQuery gre;
  gre.destination = ip("8.8.8.8");
  gre.protocol = Protocol::other;
  gre.ip_protocol = 47;
  EXPECT_EQ(explain(policy, TrustLevel::semi_trusted, gre).reason,
            "allowed: levels.semi-trusted.protocols lists IP protocol 47");
  gre.ip_protocol = 50;
  EXPECT_EQ(explain(policy, TrustLevel::semi_trusted, gre).verdict, Verdict::denied);

  Explanation dns = explain(policy, TrustLevel::semi_trusted, udp("9.9.9.9", 53));
  EXPECT_EQ(dns.verdict, Verdict::allowed);
  EXPECT_EQ(dns.decided_by, "levels.semi-trusted.dns.resolvers");
  EXPECT_EQ(explain(policy, TrustLevel::semi_trusted, udp("1.1.1.1", 53)).verdict, Verdict::denied);
}

TEST_F(ExplainTest, UntrustedReachesOnlyItsClientAndAuthcertHolders) {
  Explanation e = explain(policy, TrustLevel::untrusted, tcp("8.8.8.8", 443));
  EXPECT_EQ(e.verdict, Verdict::denied);
  EXPECT_EQ(e.decided_by, "levels.untrusted");
  EXPECT_EQ(e.reason,
            "denied unless the destination is the client's own address or holds an authcert for this client's key");

  ExplainContext ctx;
  ctx.client_address = ip("8.8.8.8");
  ctx.authorized = {*Destination::parse("9.9.0.0/16:443")};
  Explanation own = explain(policy, TrustLevel::untrusted, tcp("8.8.8.8", 443), ctx);
  EXPECT_EQ(own.verdict, Verdict::allowed);
  EXPECT_EQ(own.decided_by, "client's own address");
  Explanation hole = explain(policy, TrustLevel::untrusted, tcp("9.9.1.1", 443), ctx);
  EXPECT_EQ(hole.verdict, Verdict::allowed);
  EXPECT_EQ(hole.reason, "allowed: 9.9.0.0/16:443 holds a valid authcert for this client's key");
  Explanation wrong_port = explain(policy, TrustLevel::untrusted, tcp("9.9.1.1", 8443), ctx);
  EXPECT_EQ(wrong_port.verdict, Verdict::denied);
  EXPECT_THAT(wrong_port.reason, HasSubstr("neither the client's own address nor a holder of an authcert"));
  // Guardrails still come first: the client's address does not lift a closed port.
  EXPECT_EQ(explain(policy, TrustLevel::untrusted, tcp("8.8.8.8", 22), ctx).decided_by, "guardrail 'closed ports'");
  EXPECT_EQ(explain(policy, TrustLevel::untrusted, tcp("8.8.8.8", 22), ctx).limits, std::vector<std::string>{});
}

// ---- client identities ----

TEST_F(ExplainTest, ClassifiesTheClientFirst) {
  Policy p = parse_ok("[[clients.rules]]\nfingerprint = \"" + fp('a') + "\"\nlevel = \"trusted\"\n");
  Explanation e = explain(p, ClientIdentity{fp('a'), std::nullopt, std::nullopt}, tcp("8.8.8.8", 443));
  EXPECT_EQ(e.verdict, Verdict::allowed);
  ASSERT_TRUE(e.classification);
  EXPECT_EQ(e.classification->rule_index, 0U);
  EXPECT_EQ(e.steps.front().check, "client");
  EXPECT_THAT(e.steps.front().detail, HasSubstr("level trusted from client rule 1"));
  Explanation stranger = explain(p, ClientIdentity{fp('b'), std::nullopt, std::nullopt}, tcp("8.8.8.8", 443));
  EXPECT_EQ(stranger.verdict, Verdict::denied);
  EXPECT_EQ(stranger.level, TrustLevel::untrusted);
  EXPECT_EQ(stranger.classification->reason, "default");
}

TEST_F(ExplainTest, RefusedClientIsDeniedOutright) {
  Policy p = parse_ok("[owner]\nonly_listed_clients = true\n");
  Explanation e = explain(p, ClientIdentity{fp('b'), std::nullopt, std::nullopt}, tcp("8.8.8.8", 443));
  EXPECT_EQ(e.verdict, Verdict::denied);
  EXPECT_EQ(e.decided_by, "owner.only_listed_clients");
  EXPECT_TRUE(e.classification->refused);
  EXPECT_THAT(checks(e), ElementsAre("client:denied"));
}

// ---- order ----

TEST_F(ExplainTest, OrderMatchesTheRuleset) {
  // Reserved before block list: 10/8 listed in both is reported as reserved.
  Policy p = parse_ok("[guardrails]\nblock = [\"10.9.0.0/16\", \"8.8.8.8\"]\n");
  EXPECT_EQ(explain(p, TrustLevel::trusted, tcp("10.9.0.1", 25)).decided_by, "guardrail 'reserved prefixes'");
  // Block list before closed ports.
  EXPECT_EQ(explain(p, TrustLevel::trusted, tcp("8.8.8.8", 25)).decided_by, "guardrails.block");
  // Host protection before reserved: DNS to a gateway in 10/8 is allowed.
  ExplainContext ctx;
  ctx.gateway = ip("10.0.0.1");
  EXPECT_EQ(explain(policy, TrustLevel::trusted, udp("10.0.0.1", 53), ctx).verdict, Verdict::allowed);
  // Guardrails before the allowlist: a blocked address inside an allowed range.
  EXPECT_EQ(explain(policy, TrustLevel::semi_trusted, udp("198.51.100.66", 443)).decided_by, "guardrails.block");
}

// ---- output ----

TEST_F(ExplainTest, TextAndJson) {
  ExplainContext ctx;
  Explanation e = explain(policy, TrustLevel::semi_trusted, tcp("10.1.2.3", 443), ctx);
  std::string text = to_text(e);
  EXPECT_THAT(text, HasSubstr("denied: 10.1.2.3 is in the reserved prefix 10.0.0.0/8"));
  EXPECT_THAT(text, HasSubstr("level: semi-trusted\n"));
  EXPECT_THAT(text, HasSubstr("  4. reserved prefixes: denied - "));
  EXPECT_THAT(text, Not(HasSubstr("limits")));
  nlohmann::json j = to_json(e);
  EXPECT_EQ(j["verdict"], "denied");
  EXPECT_EQ(j["level"], "semi-trusted");
  EXPECT_EQ(j["decided_by"], "guardrail 'reserved prefixes'");
  EXPECT_EQ(j["steps"].size(), 4U);
  EXPECT_EQ(j["steps"][3]["outcome"], "denied");
  EXPECT_FALSE(j.contains("classification"));

  Explanation allowed = explain(policy, TrustLevel::trusted, tcp("8.8.8.8", 443));
  EXPECT_THAT(to_text(allowed), HasSubstr("limits that still apply:\n  - per destination /24"));
}

TEST(Protocol, ParsesNames) {
  EXPECT_EQ(parse_protocol("tcp"), Protocol::tcp);
  EXPECT_EQ(parse_protocol("icmpv6"), Protocol::icmp);
  EXPECT_EQ(parse_protocol("other"), Protocol::other);
  EXPECT_FALSE(parse_protocol("sctp"));
}

}  // namespace
}  // namespace sg::trust
