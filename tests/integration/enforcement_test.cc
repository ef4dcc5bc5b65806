// Tier 2: what each trust level and each guardrail lets through, shown
// with real packets between namespaces, and the bypass classes of
// THREATS.md. The daemon runs on test:///default; the kernel path is real.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "tests/integration/topology.h"

namespace sg::test {
namespace {

// The lab policy (topology.h) with this tier's rates: every level metered.
std::string lab_policy(const std::string& semi_fp, const std::string& trusted_fp) {
  return lab_trust_policy(semi_fp, trusted_fp, R"(per_destination = { packets = 50, kbit = 1000 }
syn_per_second = 50

[levels.trusted]
per_destination = { packets = 100, kbit = 10000 }
syn_per_second = 100

[levels.untrusted]
per_destination = { packets = 50, kbit = 1000 }
syn_per_second = 50
)");
}

class EnforcementTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto why = why_no_namespaces(); !why.empty()) GTEST_SKIP() << why;
    topo_ = std::make_unique<Topology>("sge" + std::to_string(getpid()));
    untrusted_key_ = topo_->keygen("untrusted");
    semi_key_ = topo_->keygen("semi");
    trusted_key_ = topo_->keygen("trusted");
    ASSERT_TRUE(topo_->start(lab_policy(topo_->fingerprint(semi_key_), topo_->fingerprint(trusted_key_))))
        << topo_->daemon().log();
  }
  void TearDown() override {
    if (HasFailure() && topo_) {
      std::cerr << "---- daemon log ----\n" << topo_->daemon().log() << "---- ruleset ----\n" << topo_->nft_list();
    }
    topo_.reset();
  }

  // Allocates a VM for `key` whose client is the "client" namespace.
  std::string allocate(const std::string& key) {
    auto vm = topo_->ctl_json({"allocate", "--client", topo_->client.v4 + "," + topo_->client.v6}, key);
    EXPECT_TRUE(vm.contains("name")) << vm.dump();
    return vm.value("name", "");
  }

  std::unique_ptr<Topology> topo_;
  std::string untrusted_key_, semi_key_, trusted_key_;
};

TEST_F(EnforcementTest, UntrustedReachesOnlyItsClient) {
  std::string vm = allocate(untrusted_key_);
  auto& t = *topo_;
  EXPECT_TRUE(t.ping(vm, t.client.v4));
  EXPECT_TRUE(t.ping(vm, t.client.v6));
  EXPECT_TRUE(t.tcp_reaches(vm, t.client.v4, 8080));
  EXPECT_FALSE(t.tcp_reaches(vm, t.client.v4, 22));  // closed ports hold towards the client too
  t.reset_sensors();
  EXPECT_FALSE(t.ping(vm, t.internet.v4));
  EXPECT_FALSE(t.ping(vm, t.internet.v6));
  EXPECT_FALSE(t.tcp_reaches(vm, t.internet.v4, 80));
  EXPECT_FALSE(t.tcp_reaches(vm, t.nodeA.v4, 8080));
  EXPECT_EQ(t.sensor(t.internet.ns), 0U);
  EXPECT_EQ(t.sensor(t.nodeA.ns), 0U);
  EXPECT_GE(t.drop_counter(vm + " not-allowed"), 4U);
}

TEST_F(EnforcementTest, ClosedPortsHoldEvenTowardsTheClient) {
  std::string vm = allocate(trusted_key_);
  auto& t = *topo_;
  t.reset_sensors();
  EXPECT_FALSE(t.tcp_reaches(vm, t.internet.v4, 25));
  EXPECT_FALSE(t.tcp_reaches(vm, t.internet.v4, 31337));
  EXPECT_TRUE(t.tcp_reaches(vm, t.internet.v4, 443));
  EXPECT_TRUE(t.tcp_reaches(vm, t.internet.v4, 8080));
  EXPECT_EQ(t.sensor(t.internet.ns), 2U);  // the two SYNs that were allowed
  EXPECT_GE(t.drop_counter(vm + " closed-port"), 2U);
}

TEST_F(EnforcementTest, HoleOpensAndClosesANodeForAnUntrustedVm) {
  std::string vm = allocate(untrusted_key_);
  auto& t = *topo_;
  EXPECT_FALSE(t.tcp_reaches(vm, t.nodeA.v4, 8080));
  auto add = t.ctl_json({"hole", "add", vm, t.nodeA.v4 + ":8080", "--proto", "tcp", "--for", "10m"});
  ASSERT_TRUE(add.contains("id")) << add.dump();
  EXPECT_TRUE(t.tcp_reaches(vm, t.nodeA.v4, 8080));
  EXPECT_FALSE(t.tcp_reaches(vm, t.nodeA.v4, 8081));  // only the granted port
  EXPECT_FALSE(t.ping(vm, t.nodeA.v4));               // only the granted protocol
  auto rm = t.ctl({"hole", "remove", std::to_string(add["id"].get<int>())});
  EXPECT_EQ(rm.code, 0) << rm.err;
  EXPECT_FALSE(t.tcp_reaches(vm, t.nodeA.v4, 8080));
}

// A hole to a /64 or a /24 (one protocol, one port) lives in the hash map of
// that length, keyed by the network: every address inside passes, none
// outside, and only the granted port.
TEST_F(EnforcementTest, HoleToAPrefixOpensTheAddressesInItOnly) {
  std::string vm = allocate(untrusted_key_);
  auto& t = *topo_;
  EXPECT_FALSE(t.tcp_reaches(vm, t.nodeA.v6, 8080));
  auto v6 = t.ctl_json({"hole", "add", vm, "[2001:db8:a::/64]:8080", "--proto", "tcp", "--for", "10m"});
  ASSERT_TRUE(v6.contains("id")) << v6.dump();
  auto v4 = t.ctl_json({"hole", "add", vm, "203.0.113.0/24:8080", "--proto", "tcp", "--for", "10m"});
  ASSERT_TRUE(v4.contains("id")) << v4.dump();
  const std::string rules = t.nft_list();
  EXPECT_NE(rules.find("\"" + vm + "\" . 2001:db8:a:: . tcp . 8080"), std::string::npos) << rules;
  EXPECT_NE(rules.find("\"" + vm + "\" . 203.0.113.0 . tcp . 8080"), std::string::npos) << rules;
  t.reset_sensors();
  EXPECT_TRUE(t.tcp_reaches(vm, t.nodeA.v6, 8080));
  EXPECT_FALSE(t.tcp_reaches(vm, t.internet.v6, 8080));  // 2001:db8:e::/64: outside
  EXPECT_FALSE(t.tcp_reaches(vm, t.nodeA.v6, 8081));     // only the granted port
  EXPECT_TRUE(t.tcp_reaches(vm, t.nodeA.v4, 8080));
  EXPECT_TRUE(t.tcp_reaches(vm, t.internet.v4, 8080));  // in the /24 too
  EXPECT_FALSE(t.tcp_reaches(vm, t.internet.v4, 8081));
  EXPECT_EQ(t.sensor(t.internet.ns), 1U);  // the one SYN to the granted port
  for (const auto& hole : {v6, v4}) {
    auto rm = t.ctl({"hole", "remove", std::to_string(hole["id"].get<int>())});
    EXPECT_EQ(rm.code, 0) << rm.err;
  }
  EXPECT_FALSE(t.tcp_reaches(vm, t.nodeA.v6, 8080));
  EXPECT_FALSE(t.tcp_reaches(vm, t.internet.v4, 8080));
}

TEST_F(EnforcementTest, HoleExpiresInTheKernelEvenWithTheDaemonDown) {
  std::string vm = allocate(untrusted_key_);
  auto& t = *topo_;
  auto add = t.ctl_json({"hole", "add", vm, t.nodeA.v4, "--proto", "icmp", "--for", "2s"});
  ASSERT_TRUE(add.contains("id")) << add.dump();
  EXPECT_TRUE(t.ping(vm, t.nodeA.v4));
  t.daemon().kill9();
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  EXPECT_FALSE(t.ping(vm, t.nodeA.v4));
}

TEST_F(EnforcementTest, SemiTrustedGetsItsAllowlistOnly) {
  std::string vm = allocate(semi_key_);
  auto& t = *topo_;
  EXPECT_TRUE(t.tcp_reaches(vm, t.internet.v4, 80));
  EXPECT_TRUE(t.tcp_reaches(vm, t.internet.v6, 80));
  EXPECT_FALSE(t.tcp_reaches(vm, t.internet.v4, 8080));
  EXPECT_FALSE(t.tcp_reaches(vm, t.nodeA.v4, 80));  // outside the allowlisted prefix
  EXPECT_TRUE(t.ping(vm, t.nodeA.v4));              // echo-request to anywhere
  t.reset_sensors();
  t.in_guest(vm, {sgprobe_bin(), "udp-send", t.internet.v4, "5353", "3"});
  t.in_guest(vm, {sgprobe_bin(), "udp-send", t.internet.v4, "5354", "3"});
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(t.sensor(t.internet.ns), 3U);
}

TEST_F(EnforcementTest, TrustedReachesAnythingButTheGuardrails) {
  std::string vm = allocate(trusted_key_);
  auto& t = *topo_;
  EXPECT_TRUE(t.tcp_reaches(vm, t.internet.v4, 8080));
  EXPECT_TRUE(t.tcp_reaches(vm, t.nodeA.v6, 9999));
  EXPECT_TRUE(t.ping(vm, t.internet.v6));
  t.reset_sensors();
  for (const auto& a : t.reserved_v4) EXPECT_FALSE(t.ping(vm, a)) << a;
  for (const auto& a : t.reserved_v6) EXPECT_FALSE(t.ping(vm, a)) << a;
  EXPECT_FALSE(t.ping(vm, t.blocked_v4));
  EXPECT_FALSE(t.ping(vm, t.blocked_v6));
  EXPECT_EQ(t.sensor(t.internet.ns), 0U);
  EXPECT_GE(t.drop_counter(vm + " reserved"), t.reserved_v4.size() + t.reserved_v6.size());
  EXPECT_GE(t.drop_counter(vm + " blocked"), 2U);
}

// The per-destination meters are shared sets keyed by the VM's interface
// and the destination prefix: one VM's flood uses up its own allowance for
// that destination, never another VM's.
TEST_F(EnforcementTest, PerDestinationMeterLimitsEachVmOnItsOwn) {
  std::string flooder = allocate(trusted_key_);
  std::string other = allocate(trusted_key_);
  auto& t = *topo_;
  t.reset_sensors();
  // 1,000 new UDP flows within milliseconds to one /24; trusted allows 100/s
  // per destination (burst 100).
  t.in_guest(flooder, {sgprobe_bin(), "udp-spray", t.internet.v4, "20000", "1000"});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const std::uint64_t after_flood = t.sensor(t.internet.ns);
  EXPECT_GE(after_flood, 50U);
  EXPECT_LE(after_flood, 300U) << "the meter let most of the flood through";
  EXPECT_GE(t.drop_counter(flooder + " dest-rate"), 700U);
  // The other VM, to the same destination at once: all of its flows pass.
  t.in_guest(other, {sgprobe_bin(), "udp-spray", t.internet.v4, "20000", "50"});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(t.sensor(t.internet.ns) - after_flood, 50U);
  EXPECT_EQ(t.drop_counter(other + " dest-rate"), 0U);
  // Released: its meter entries go with it, the other VM's stay.
  auto meter = [&] { return t.in_ns(t.host_ns(), {"nft", "list", "set", "inet", "surrogated", "dst_pps_v4"}).out; };
  ASSERT_NE(meter().find("\"" + flooder + "\""), std::string::npos) << meter();
  ASSERT_EQ(t.ctl({"release", flooder}, trusted_key_).code, 0);
  EXPECT_EQ(meter().find("\"" + flooder + "\""), std::string::npos) << meter();
  EXPECT_NE(meter().find("\"" + other + "\""), std::string::npos) << meter();
}

// A ping flood is one ICMP flow, established after the first answer: its
// echo requests must keep meeting the per-destination meter (the short path
// for established flows is TCP and UDP only).
TEST_F(EnforcementTest, APingFloodKeepsMeetingTheMeter) {
  std::string vm = allocate(trusted_key_);
  auto& t = *topo_;
  t.reset_sensors();
  // 400 echo requests at 500/s; trusted allows 100 packets/s per
  // destination (burst 100).
  t.in_guest(vm, {"ping", "-q", "-c", "400", "-i", "0.002", "-W", "1", t.internet.v4});
  EXPECT_GE(t.drop_counter(vm + " dest-rate"), 100U);
  EXPECT_LE(t.sensor(t.internet.ns), 300U) << "the meter let most of the flood through";
}

TEST_F(EnforcementTest, SpoofedSourceAddressAndMacAreDropped) {
  std::string vm = allocate(trusted_key_);
  auto& t = *topo_;
  ASSERT_TRUE(t.ping(vm, t.internet.v4));
  // Another VM's address (from the pool) and a foreign one, IPv4 and IPv6.
  t.in_guest(vm, {"ip", "addr", "add", "198.51.100.99/32", "dev", "eth0"});
  t.in_guest(vm, {"ip", "addr", "add", "2001:db8:5:ff::9/128", "dev", "eth0", "nodad"});
  t.reset_sensors();
  EXPECT_FALSE(t.ping(vm, t.internet.v4, {"-I", "198.51.100.99"}));
  EXPECT_FALSE(t.ping(vm, t.internet.v6, {"-I", "2001:db8:5:ff::9"}));
  EXPECT_EQ(t.sensor(t.internet.ns), 0U);
  EXPECT_GE(t.drop_counter(vm + " spoof-ip"), 2U);
  // A foreign MAC: even with the right IP, nothing passes.
  t.in_guest(vm, {"ip", "link", "set", "eth0", "address", "52:54:00:66:66:66"});
  EXPECT_FALSE(t.ping(vm, t.internet.v4));
  // Dropped as a frame (spoof-mac), or already its ARP request (arp-spoof)
  // when the guest had to look up its gateway again.
  EXPECT_GE(t.drop_counter(vm + " spoof-mac") + t.drop_counter("sg? arp-spoof"), 1U);
}

// A VM that claims another VM's address to send "replies" on a third VM's
// established flow (the exact tuple) is still checked as the sender it is.
TEST_F(EnforcementTest, AVmCannotSlipASpoofedReplyIntoAnotherVmsFlow) {
  auto& t = *topo_;
  std::string y = allocate(trusted_key_);
  std::string x = allocate(trusted_key_);
  std::string z = allocate(untrusted_key_);
  const std::string y4 = t.ctl_json({"show", y})["ipv4"];
  const std::string x4 = t.ctl_json({"show", x})["ipv4"];
  {
    // y -> x:7500 from port 40000, answered by x: established.
    EstablishedUdpFlow flow(t, y, t.guest_ns(x), x4, 7500, 3, 40000);
    std::this_thread::sleep_for(std::chrono::milliseconds(1200));
    // z, with x's address on its interface, sends from x:7500 to y:40000
    // (its gateway's MAC known first, asked with its own address).
    ASSERT_TRUE(t.ping(z, t.client.v4));
    auto added = t.in_guest(z, {"ip", "addr", "add", x4 + "/32", "dev", "eth0"});
    EXPECT_EQ(added.code, 0) << added.err;
    auto sent = t.in_guest(z, {sgprobe_bin(), "udp-send", y4, "40000", "10", "0", "7500", x4});
    EXPECT_EQ(sent.code, 0) << sent.err;
  }
  EXPECT_GE(t.drop_counter(z + " spoof-ip"), 10U);
}

TEST_F(EnforcementTest, ArpAndNeighbourDiscoveryOnlyForTheVmsOwnAddress) {
  std::string vm = allocate(trusted_key_);
  auto& t = *topo_;
  auto info = t.ctl_json({"show", vm});
  std::string gw4 = info["gateway_ipv4"], gw6 = info["gateway_ipv6"];
  // ARP that claims another address than the VM's own is dropped.
  t.in_guest(vm, {"ip", "addr", "add", "198.51.100.99/32", "dev", "eth0"});
  t.in_guest(vm, {"ip", "neigh", "flush", "dev", "eth0"});
  EXPECT_FALSE(t.ping(vm, gw4, {"-I", "198.51.100.99"}));
  EXPECT_GE(t.drop_counter("sg? arp-spoof"), 1U);
  // A neighbour advertisement claiming the gateway's IPv6 address is dropped.
  auto na = t.in_guest(vm, {sgprobe_bin(), "na", gw6});
  EXPECT_EQ(na.code, 0) << na.err;
  EXPECT_GE(t.drop_counter(vm + " nd-spoof"), 1U);
  // The VM's own address still works both ways (the guest's neighbour entry
  // for its gateway failed above: give it a fresh start and a retry).
  t.in_guest(vm, {"ip", "addr", "del", "198.51.100.99/32", "dev", "eth0"});
  t.in_guest(vm, {"ip", "neigh", "flush", "dev", "eth0"});
  auto eventually = [&](const std::string& addr) {
    for (int i = 0; i < 3; ++i) {
      if (t.ping(vm, addr)) return true;
    }
    return false;
  };
  EXPECT_TRUE(eventually(gw4));
  EXPECT_TRUE(eventually(gw6));
}

// A tap that appears before its rules (or one nobody registered) sends
// nothing, not even to a VM with that VM's client's address as its source:
// the inbound chain of a VM trusts its client, so an unknown tap must be
// dropped before packets are dispatched by their destination.
TEST_F(EnforcementTest, ATapWithoutRulesReachesNoVmNotEvenAsItsClient) {
  std::string vm = allocate(untrusted_key_);
  auto& t = *topo_;
  const std::string vm4 = t.ctl_json({"show", vm})["ipv4"];
  // The guest counts UDP datagrams to port 9999.
  for (const std::vector<std::string>& cmd : {
           std::vector<std::string>{"nft", "add", "table", "inet", "probe"},
           std::vector<std::string>{"nft", "add", "counter", "inet", "probe", "hits"},
           std::vector<std::string>{"nft", "add", "chain", "inet", "probe", "in", "{", "type", "filter", "hook",
                                    "input", "priority", "0", ";", "}"},
           std::vector<std::string>{"nft", "add", "rule", "inet", "probe", "in", "udp", "dport", "9999", "counter",
                                    "name", "hits"},
       }) {
    ASSERT_EQ(t.in_guest(vm, cmd).code, 0);
  }
  // A rogue namespace behind a tap-like interface with no rules, claiming
  // the client's address. No ARP (static neighbour) and no reverse-path
  // filter in the way: only the rules decide.
  test::Netns rogue(t.host_ns() + "-rogue");
  const std::string tap = "sg9999";
  ASSERT_EQ(
      t.in_ns(t.host_ns(), {"ip", "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", rogue.name()})
          .code,
      0);
  t.in_ns(t.host_ns(), {"ip", "link", "set", tap, "up"});
  t.in_ns(t.host_ns(), {"sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"});
  t.in_ns(t.host_ns(), {"sysctl", "-qw", "net.ipv4.conf." + tap + ".rp_filter=0"});
  t.in_ns(t.host_ns(), {"sysctl", "-qw", "net.ipv4.conf." + tap + ".forwarding=1"});
  const std::string link = t.in_ns(t.host_ns(), {"ip", "-o", "link", "show", tap}).out;
  const auto at = link.find("link/ether ");
  ASSERT_NE(at, std::string::npos) << link;
  const std::string host_mac = link.substr(at + 11, 17);
  rogue.exec({"ip", "link", "set", "lo", "up"});
  rogue.exec({"ip", "link", "set", "eth0", "up"});
  rogue.exec({"ip", "addr", "add", t.client.v4 + "/32", "dev", "eth0"});
  rogue.exec({"ip", "route", "add", vm4 + "/32", "dev", "eth0"});
  rogue.exec({"ip", "neigh", "replace", vm4, "lladdr", host_mac, "dev", "eth0"});
  const std::uint64_t before = t.drop_counter("sg? no-chain");
  for (int i = 0; i < 5; ++i) {
    rogue.exec({"bash", "-c", "echo spoof > /dev/udp/" + vm4 + "/9999"});
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto hits = t.in_guest(vm, {"nft", "list", "counter", "inet", "probe", "hits"});
  EXPECT_NE(hits.out.find("packets 0 "), std::string::npos) << "the VM received from a tap without rules:\n"
                                                            << hits.out;
  EXPECT_GE(t.drop_counter("sg? no-chain"), before + 5) << "dropped as a tap without rules";
  // The same datagram from the client itself arrives (the probe works).
  t.in_ns(t.client.ns, {"bash", "-c", "echo hello > /dev/udp/" + vm4 + "/9999"});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  hits = t.in_guest(vm, {"nft", "list", "counter", "inet", "probe", "hits"});
  EXPECT_NE(hits.out.find("packets 1 "), std::string::npos) << hits.out;
}

TEST_F(EnforcementTest, FragmentsAndIpOptions) {
  std::string vm = allocate(untrusted_key_);
  auto& t = *topo_;
  // A big ping is fragmented, reassembled before the rules, and the rules
  // hold on the whole datagram: to the client it passes, elsewhere not.
  EXPECT_TRUE(t.ping(vm, t.client.v4, {"-s", "4000"}));
  EXPECT_TRUE(t.ping(vm, t.client.v6, {"-s", "4000"}));
  t.reset_sensors();
  EXPECT_FALSE(t.ping(vm, t.internet.v4, {"-s", "4000"}));
  EXPECT_FALSE(t.ping(vm, t.internet.v6, {"-s", "4000"}));
  // A lone tail fragment never gets through.
  t.in_guest(vm, {sgprobe_bin(), "frag", t.internet.v4});
  // Record route (an IP option) is dropped even towards the client.
  EXPECT_FALSE(t.ping(vm, t.client.v4, {"-R"}));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(t.sensor(t.internet.ns), 0U);
  EXPECT_GE(t.drop_counter(vm + " ip-options"), 1U);
}

TEST_F(EnforcementTest, HostIsReachableOnlyForWhatAVmNeeds) {
  std::string vm = allocate(trusted_key_);
  auto& t = *topo_;
  auto info = t.ctl_json({"show", vm});
  EXPECT_TRUE(t.ping(vm, info["gateway_ipv4"]));
  EXPECT_TRUE(t.ping(vm, info["gateway_ipv6"]));
  // The host's other addresses and services are off limits.
  EXPECT_FALSE(t.ping(vm, t.client.host_v4));
  EXPECT_FALSE(t.tcp_reaches(vm, info["gateway_ipv4"], 22));
  EXPECT_GE(t.drop_counter(vm + " host"), 2U);
}

TEST_F(EnforcementTest, AForeignAcceptingTableDoesNotOverrideOurDrops) {
  std::string vm = allocate(untrusted_key_);
  auto& t = *topo_;
  RunOptions o;
  o.netns = t.host_ns();
  o.stdin_data =
      "table inet foreign {\n"
      "  chain early { type filter hook forward priority -200; policy accept; accept; }\n"
      "  chain late { type filter hook forward priority 100; policy accept; accept; }\n"
      "  chain input_early { type filter hook input priority -200; policy accept; accept; }\n"
      "}\n";
  auto loaded = run({"nft", "-f", "-"}, o);
  ASSERT_EQ(loaded.code, 0) << loaded.err;
  t.reset_sensors();
  EXPECT_FALSE(t.ping(vm, t.internet.v4));
  EXPECT_EQ(t.sensor(t.internet.ns), 0U);
  EXPECT_TRUE(t.ping(vm, t.client.v4));
}

TEST_F(EnforcementTest, FlushRulesetIsRepairedAtOnce) {
  std::string vm = allocate(untrusted_key_);
  auto& t = *topo_;
  ASSERT_EQ(t.in_ns(t.host_ns(), {"nft", "flush", "ruleset"}).code, 0);
  bool back = false;
  for (int i = 0; i < 50 && !back; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    back = t.nft_list().find("\"" + vm + "\" comment \"VM") != std::string::npos;
  }
  EXPECT_TRUE(back) << "the daemon did not put its table back";
  EXPECT_NE(t.daemon().log().find("reinstalling"), std::string::npos);
  t.reset_sensors();
  EXPECT_FALSE(t.ping(vm, t.internet.v4));
  EXPECT_TRUE(t.ping(vm, t.client.v4));
  EXPECT_EQ(t.sensor(t.internet.ns), 0U);
  // Deleting just our table is repaired too.
  ASSERT_EQ(t.in_ns(t.host_ns(), {"nft", "delete", "table", "inet", "surrogated"}).code, 0);
  back = false;
  for (int i = 0; i < 50 && !back; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    back = t.nft_list().find("\"" + vm + "\" comment \"VM") != std::string::npos;
  }
  EXPECT_TRUE(back);
}

TEST_F(EnforcementTest, RulesSurviveADaemonCrashAndRestartAdopts) {
  std::string vm = allocate(untrusted_key_);
  auto& t = *topo_;
  t.daemon().kill9();
  t.reset_sensors();
  EXPECT_FALSE(t.ping(vm, t.internet.v4));  // still filtered with no daemon
  EXPECT_TRUE(t.ping(vm, t.client.v4));
  EXPECT_EQ(t.sensor(t.internet.ns), 0U);
  ASSERT_TRUE(t.daemon().start()) << t.daemon().log();
  EXPECT_FALSE(t.ping(vm, t.internet.v4));
  EXPECT_TRUE(t.ping(vm, t.client.v4));
  auto list = t.ctl_json({"list"});
  ASSERT_EQ(list.size(), 1U) << list.dump();
}

// kill -9 while the daemon installs its table (at start) or a VM's rules,
// again and again, with a guest sending to a forbidden destination the whole
// time: not one packet may arrive.
TEST_F(EnforcementTest, KillNineDuringApplyNeverOpensTheFilter) {
  std::string vm = allocate(untrusted_key_);
  auto& t = *topo_;
  t.reset_sensors();
  std::atomic<bool> stop{false};
  // The same guest also sends to its client: proof that the sender runs.
  std::thread sender([&] {
    while (!stop) {
      t.in_guest(vm, {sgprobe_bin(), "udp-send", t.internet.v4, "9999", "50", "2"});
      t.in_guest(vm, {sgprobe_bin(), "udp-send", t.client.v4, "9999", "5", "2"});
    }
  });
  for (int i = 0; i < 100; ++i) {
    pid_t pid = t.daemon().pid();
    if (pid <= 0) {
      ASSERT_TRUE(t.daemon().start()) << t.daemon().log();
      continue;
    }
    // Half the time during an allocation (rules being added), else at once.
    if (i % 2 == 0) {
      std::thread alloc([&] { t.ctl({"allocate"}, untrusted_key_); });
      std::this_thread::sleep_for(std::chrono::microseconds(500 * (i % 7)));
      t.daemon().kill9();
      alloc.join();
    } else {
      t.daemon().kill9();
    }
    ASSERT_TRUE(t.daemon().start()) << t.daemon().log();
  }
  stop = true;
  sender.join();
  EXPECT_EQ(t.sensor(t.internet.ns), 0U);
  EXPECT_GT(t.sensor(t.client.ns), 0U);
  EXPECT_TRUE(t.ping(vm, t.client.v4));
}

// Holes added and removed for 30 s while traffic runs: a destination that
// was never authorized sees nothing, and the authorized one sees traffic.
TEST_F(EnforcementTest, HoleChurnNeverLeaksAForbiddenPacket) {
  std::string vm = allocate(untrusted_key_);
  auto& t = *topo_;
  t.reset_sensors();
  std::atomic<bool> stop{false};
  std::thread forbidden([&] {
    while (!stop) t.in_guest(vm, {sgprobe_bin(), "udp-send", t.internet.v4, "7000", "100", "1"});
  });
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  int rounds = 0;
  while (std::chrono::steady_clock::now() < until) {
    auto add = t.ctl_json({"hole", "add", vm, t.nodeA.v4 + ":7000", "--proto", "udp", "--for", "1m"});
    ASSERT_TRUE(add.contains("id")) << add.dump();
    t.in_guest(vm, {sgprobe_bin(), "udp-send", t.nodeA.v4, "7000", "1"});
    ASSERT_EQ(t.ctl({"hole", "remove", std::to_string(add["id"].get<int>())}).code, 0);
    ++rounds;
  }
  stop = true;
  forbidden.join();
  EXPECT_EQ(t.sensor(t.internet.ns), 0U);
  EXPECT_GE(t.sensor(t.nodeA.ns), static_cast<std::uint64_t>(rounds) / 2);
  std::cerr << rounds << " add/remove rounds in 30 s\n";
}

TEST_F(EnforcementTest, RulesShowPrintsTheVmsRules) {
  std::string vm = allocate(semi_key_);
  auto r = topo_->ctl({"rules", "show", vm});
  EXPECT_EQ(r.code, 0) << r.err;
  // The chains its packets go through, and its own elements.
  EXPECT_NE(r.out.find("chain vm_out"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("chain semi_out"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("chain untrusted_out"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("semi-trusted: tcp allowlist"), std::string::npos);
  EXPECT_NE(r.out.find("\"" + vm + "\" . 52:54:00:"), std::string::npos) << r.out;
  // Another client cannot see them.
  auto other = topo_->ctl({"rules", "show", vm}, untrusted_key_, 65534);
  EXPECT_EQ(other.code, 4);
}

TEST_F(EnforcementTest, PolicyReloadReclassifiesAtomicallyOrNotAtAll) {
  std::string vm = allocate(untrusted_key_);
  auto& t = *topo_;
  EXPECT_FALSE(t.tcp_reaches(vm, t.internet.v4, 8080));
  // Promote the untrusted client to trusted.
  t.write_policy(lab_policy(t.fingerprint(semi_key_), t.fingerprint(untrusted_key_)));
  auto r = t.ctl({"policy", "reload"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(t.ctl_json({"show", vm})["trust_level"], "trusted");
  EXPECT_TRUE(t.tcp_reaches(vm, t.internet.v4, 8080));
  // A broken file leaves the running policy in force.
  t.write_policy("[levels.trusted]\negress_mbit = -5\n");
  auto bad = t.ctl({"policy", "reload"});
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.err.find("trust-policy.toml:2:"), std::string::npos) << bad.err;
  EXPECT_EQ(t.ctl_json({"show", vm})["trust_level"], "trusted");
  EXPECT_TRUE(t.tcp_reaches(vm, t.internet.v4, 8080));
  // SIGHUP reloads too.
  t.write_policy(lab_policy(t.fingerprint(semi_key_), t.fingerprint(trusted_key_)));
  kill(t.daemon().pid(), SIGHUP);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(t.ctl_json({"show", vm})["trust_level"], "untrusted");
  EXPECT_FALSE(t.tcp_reaches(vm, t.internet.v4, 8080));
}

// Closing a hole ends what was opened through it: the next datagram of an
// established flow meets the rules as they are now (netpolicy/conntrack_flush.h).
TEST_F(EnforcementTest, ClosingAHoleEndsTheFlowsOpenedThroughIt) {
  std::string vm = allocate(untrusted_key_);
  auto& t = *topo_;
  auto add = t.ctl_json({"hole", "add", vm, t.nodeA.v4 + ":7100", "--proto", "udp", "--for", "10m"});
  ASSERT_TRUE(add.contains("id")) << add.dump();
  {
    EstablishedUdpFlow flow(t, vm, t.nodeA.ns, t.nodeA.v4, 7100, 5);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    EXPECT_GT(t.sensor(t.nodeA.ns), 5U);  // the flow runs, replies and all
    ASSERT_EQ(t.ctl({"hole", "remove", std::to_string(add["id"].get<int>())}).code, 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    t.reset_sensors();
    std::this_thread::sleep_for(std::chrono::milliseconds(2000));
    EXPECT_EQ(t.sensor(t.nodeA.ns), 0U);  // ~40 datagrams sent meanwhile, none arrived
  }
  EXPECT_GE(t.drop_counter(vm + " not-allowed"), 10U);
  EXPECT_NE(t.daemon().log().find("conntrack: ended 1 flow of VM"), std::string::npos) << t.daemon().log();
}

// A VM moved to a stricter level keeps none of what only the old level
// allowed, established flows included.
TEST_F(EnforcementTest, ADowngradeEndsFlowsOnlyTheOldLevelAllowed) {
  // The untrusted key made trusted, so that a reload can take it back.
  auto& t = *topo_;
  t.write_policy(lab_policy(t.fingerprint(semi_key_), t.fingerprint(untrusted_key_)));
  ASSERT_EQ(t.ctl({"policy", "reload"}).code, 0);
  std::string vm = allocate(untrusted_key_);
  ASSERT_EQ(t.ctl_json({"show", vm})["trust_level"], "trusted");
  {
    EstablishedUdpFlow flow(t, vm, t.internet.ns, t.internet.v4, 7200, 5);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    EXPECT_GT(t.sensor(t.internet.ns), 5U);
    t.write_policy(lab_policy(t.fingerprint(semi_key_), t.fingerprint(trusted_key_)));
    ASSERT_EQ(t.ctl({"policy", "reload"}).code, 0);
    EXPECT_EQ(t.ctl_json({"show", vm})["trust_level"], "untrusted");
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    t.reset_sensors();
    std::this_thread::sleep_for(std::chrono::milliseconds(2000));
    EXPECT_EQ(t.sensor(t.internet.ns), 0U);
  }
  EXPECT_GE(t.drop_counter(vm + " not-allowed"), 10U);
}

// A block takes hold of the flows already going to the destination: an
// established flow's short path does not look at the block list, so the
// daemon ends the flows a new block names (Enforcer::end_flows_now_forbidden),
// whether the block comes from `surrogatectl block` or a policy reload.
TEST_F(EnforcementTest, ABlockEndsTheFlowsAlreadyGoingToTheDestination) {
  auto& t = *topo_;
  const std::string trusted = lab_policy(t.fingerprint(semi_key_), t.fingerprint(untrusted_key_));
  t.write_policy(trusted);
  ASSERT_EQ(t.ctl({"policy", "reload"}).code, 0);
  std::string vm = allocate(untrusted_key_);
  ASSERT_EQ(t.ctl_json({"show", vm})["trust_level"], "trusted");
  auto quiet_for_two_seconds = [&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    t.reset_sensors();
    std::this_thread::sleep_for(std::chrono::milliseconds(2000));
    return t.sensor(t.internet.ns);  // ~40 datagrams sent meanwhile
  };
  {
    EstablishedUdpFlow flow(t, vm, t.internet.ns, t.internet.v4, 7300, 10);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    EXPECT_GT(t.sensor(t.internet.ns), 5U);  // the flow runs, replies and all
    ASSERT_EQ(t.ctl({"block", t.internet.v4, "--reason", "complaint #13"}).code, 0);
    EXPECT_EQ(quiet_for_two_seconds(), 0U);
    // Unblocked, the same socket's datagrams go through again.
    ASSERT_EQ(t.ctl({"unblock", t.internet.v4}).code, 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    EXPECT_GT(t.sensor(t.internet.ns), 5U);
    // The policy file's block list, on reload (without the semi-trusted
    // allowlist entry for the same address, which the check would refuse).
    std::string blocking = trusted;
    const std::string list = "block = [";
    blocking.insert(blocking.find(list) + list.size(), "\"" + t.internet.v4 + "/32\", ");
    const std::string allowed = "udp = [\"" + t.internet.v4 + ":5353\"]\n";
    ASSERT_NE(blocking.find(allowed), std::string::npos) << blocking;
    blocking.erase(blocking.find(allowed), allowed.size());
    t.write_policy(blocking);
    ASSERT_EQ(t.ctl({"policy", "reload"}).code, 0);
    EXPECT_EQ(quiet_for_two_seconds(), 0U);
  }
  EXPECT_GE(t.drop_counter(vm + " blocked"), 20U);
  const std::string log = t.daemon().log();
  EXPECT_NE(log.find("ended 1 flow the guardrails now forbid (block list changed)"), std::string::npos) << log;
  EXPECT_NE(log.find("ended 1 flow the guardrails now forbid (policy reloaded)"), std::string::npos) << log;
}

TEST_F(EnforcementTest, ReleaseRemovesEveryRuleOfTheVm) {
  std::string vm = allocate(untrusted_key_);
  auto& t = *topo_;
  // Something in the meters and the drop counters, too.
  EXPECT_FALSE(t.ping(vm, t.internet.v4));
  ASSERT_NE(t.nft_list().find("\"" + vm + "\" . \"not-allowed\" counter"), std::string::npos);
  // And a flow conntrack knows: none may outlive the VM, or a later VM
  // given its address could carry it on.
  const std::string mark = "mark=" + std::to_string(t.ctl_json({"show", vm})["id"].get<int>()) + " ";
  auto conntrack = [&] { return t.in_ns(t.host_ns(), {"cat", "/proc/net/nf_conntrack"}).out; };
  ASSERT_TRUE(t.ping(vm, t.client.v4));
  ASSERT_NE(conntrack().find(mark), std::string::npos) << conntrack();
  ASSERT_EQ(t.ctl({"release", vm}).code, 0);
  std::string after = t.nft_list();
  EXPECT_EQ(after.find("vm_" + vm), std::string::npos) << after;
  EXPECT_EQ(after.find("\"" + vm + "\""), std::string::npos) << after;
  EXPECT_EQ(conntrack().find(mark), std::string::npos) << conntrack();
}

}  // namespace
}  // namespace sg::test
