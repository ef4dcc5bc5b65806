// Tier 2: the flow log fed by the real kernel. Traffic of a known shape
// appears with exact counts and byte totals; the complaint lookup finds the
// VM; a crash during heavy logging leaves an intact database; a tiny
// netlink buffer produces recorded gaps, never silent loss.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "tests/integration/topology.h"

namespace sg::test {
namespace {

constexpr const char* kPolicy = R"(
[guardrails]
allow_reserved = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]
[levels.trusted]
per_destination = { packets = 1000, kbit = 100000 }
syn_per_second = 1000
[levels.untrusted]
per_destination = { packets = 1000, kbit = 100000 }
syn_per_second = 1000
)";

class FlowLogTest : public ::testing::Test {
 protected:
  void start(const std::string& extra = "") {
    if (auto why = why_no_namespaces(); !why.empty()) GTEST_SKIP() << why;
    topo_ = std::make_unique<Topology>("sgf" + std::to_string(getpid()));
    key_ = topo_->keygen("alice");
    std::string fp = topo_->fingerprint(key_);
    topo_->extra_config = "[flowlog]\nbatch_ms = 200\n" + extra;
    ASSERT_TRUE(
        topo_->start(std::string(kPolicy) + "[[clients.rules]]\nfingerprint = \"" + fp + "\"\nlevel = \"trusted\"\n"))
        << topo_->daemon().log();
    // Short conntrack timeouts so finished flows end (DESTROY) quickly.
    topo_->in_ns(
        topo_->host_ns(),
        {"sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=1", "net.netfilter.nf_conntrack_udp_timeout_stream=1",
         "net.netfilter.nf_conntrack_tcp_timeout_close=1", "net.netfilter.nf_conntrack_icmp_timeout=1"});
    vm_ = topo_->ctl_json({"allocate", "--client", topo_->client.v4, "--contact", "alice@example.org"}, key_)
              .value("name", "");
    ASSERT_FALSE(vm_.empty());
  }
  void TearDown() override {
    if (HasFailure() && topo_) std::cerr << "---- daemon log ----\n" << topo_->daemon().log();
    topo_.reset();
  }
  std::string sql(const std::string& query) {
    auto r = run({"sqlite3", topo_->dir() + "/state/flows.db", query});
    std::string out = r.out;
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
  }
  std::unique_ptr<Topology> topo_;
  std::string key_, vm_;
};

TEST_F(FlowLogTest, KnownTrafficAppearsWithExactCountsAndBytes) {
  start();
  auto& t = *topo_;
  t.reset_sensors();
  // N = 3 TCP connections to the client (refused: SYN out, RST back).
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(t.tcp_reaches(vm_, t.client.v4, 8080 + i));
  // M = 4 UDP flows to "internet", two datagrams each.
  for (int i = 0; i < 4; ++i)
    t.in_guest(vm_, {sgprobe_bin(), "udp-send", t.internet.v4, std::to_string(6000 + i), "2"});
  // K = 5 dropped packets: a reserved destination.
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(t.ping(vm_, t.reserved_v4[0], {"-W", "1"}));
  std::uint64_t client_bytes = t.sensor_bytes(t.client.ns);
  std::uint64_t internet_bytes = t.sensor_bytes(t.internet.ns);
  std::this_thread::sleep_for(std::chrono::seconds(1));  // the first batch commits

  // Flows end when conntrack's garbage collector gets to them; its interval
  // adapts to every namespace's flows (up to a minute on a busy machine):
  // wait for all seven ends, with their final counters.
  auto ended = [](const nlohmann::json& rows) {
    std::size_t n = 0;
    for (const auto& f : rows) n += f.contains("end_ms") && f["end_ms"].is_number() ? 1 : 0;
    return n;
  };
  nlohmann::json to_client, to_internet;
  for (int i = 0; i < 180; ++i) {
    to_client = t.ctl_json({"flows", "--vm", vm_, "--to", t.client.v4});
    to_internet = t.ctl_json({"flows", "--vm", vm_, "--to", t.internet.v4});
    if (ended(to_client) == 3 && ended(to_internet) == 4) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  ASSERT_TRUE(to_client.is_array()) << to_client.dump();
  EXPECT_EQ(to_client.size(), 3U) << to_client.dump(1);
  std::uint64_t logged_client = 0;
  for (const auto& f : to_client) {
    EXPECT_EQ(f.value("path", ""), "client");
    EXPECT_EQ(f.value("client_fp", ""), t.fingerprint(key_));
    EXPECT_TRUE(f.contains("end_ms") && f["end_ms"].is_number()) << f.dump();
    logged_client += f.value("orig_bytes", 0);
  }
  EXPECT_EQ(logged_client, client_bytes);  // what the kernel counted at the destination
  EXPECT_EQ(to_internet.size(), 4U) << to_internet.dump(1);
  std::uint64_t logged_internet = 0;
  for (const auto& f : to_internet) {
    EXPECT_EQ(f.value("orig_packets", 0), 2);
    logged_internet += f.value("orig_bytes", 0);
  }
  EXPECT_EQ(logged_internet, internet_bytes);
  auto drops = t.ctl_json({"drops", "--vm", vm_, "--reason", "reserved"});
  std::int64_t dropped = 0;
  for (const auto& d : drops) dropped += 1 + d.value("suppressed", 0) - (d.value("kind", "") == "summary" ? 1 : 0);
  EXPECT_EQ(dropped, 5) << drops.dump(1);

  // The complaint lookup names the VM, its client and their contact.
  auto who = t.ctl_json({"who-sent", t.internet.v4, "--since", "10m"});
  ASSERT_EQ(who["vms"].size(), 1U) << who.dump(1);
  EXPECT_EQ(who["vms"][0]["vm"], vm_);
  EXPECT_EQ(who["vms"][0]["contact"], "alice@example.org");
  EXPECT_EQ(who["vms"][0]["flows"], 4);
  auto nobody = t.ctl_json({"who-sent", t.nodeA.v4, "--since", "10m"});
  EXPECT_TRUE(nobody["vms"].empty());
  // A client sees its own flows only; the top list ranks the VM.
  auto mine = t.ctl({"--json", "flows"}, key_, 65534);
  EXPECT_EQ(mine.code, 0) << mine.err;
  EXPECT_EQ(t.ctl({"who-sent", t.internet.v4}, key_, 65534).code, 1);
  auto top = t.ctl_json({"top", "--by", "flows"});
  ASSERT_FALSE(top.empty());
  EXPECT_EQ(top[0]["vm"], vm_);
}

TEST_F(FlowLogTest, BlockActsAtOnceAndIsAudited) {
  start();
  auto& t = *topo_;
  EXPECT_TRUE(t.ping(vm_, t.internet.v4));
  auto b = t.ctl({"block", t.internet.v4, "--reason", "complaint #12"});
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_FALSE(t.ping(vm_, t.internet.v4));
  EXPECT_GE(t.drop_counter(vm_ + " blocked"), 1U);
  // It survives a restart (it is part of the host's state)...
  t.daemon().stop();
  ASSERT_TRUE(t.daemon().start()) << t.daemon().log();
  EXPECT_FALSE(t.ping(vm_, t.internet.v4));
  // ...and unblock lifts it.
  ASSERT_EQ(t.ctl({"unblock", t.internet.v4}).code, 0);
  EXPECT_TRUE(t.ping(vm_, t.internet.v4));
  auto audit = t.ctl({"audit", "list"});
  EXPECT_NE(audit.out.find("block"), std::string::npos);
  EXPECT_NE(audit.out.find("unblock"), std::string::npos);
  EXPECT_NE(audit.out.find("allocate"), std::string::npos);
  EXPECT_EQ(t.ctl({"audit", "verify"}).code, 0);
  // Silent edits are detected.
  run({"sqlite3", t.dir() + "/state/flows.db",
       "DROP TRIGGER IF EXISTS audit_no_update; UPDATE audit SET subject='203.0.113.99' WHERE action='block';"});
  auto broken = t.ctl({"audit", "verify"});
  EXPECT_NE(broken.code, 0) << broken.out;
}

TEST_F(FlowLogTest, KillNineDuringHeavyLoggingLeavesAnIntactDatabase) {
  start();
  auto& t = *topo_;
  for (int round = 0; round < 3; ++round) {
    std::thread load([&] {
      for (int i = 0; i < 20; ++i)
        t.in_guest(vm_, {sgprobe_bin(), "udp-send", t.internet.v4, std::to_string(7000 + i), "5"});
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    t.daemon().kill9();
    load.join();
    EXPECT_EQ(sql("PRAGMA integrity_check;"), "ok");
    ASSERT_TRUE(t.daemon().start()) << t.daemon().log();
  }
  std::this_thread::sleep_for(std::chrono::seconds(3));
  EXPECT_EQ(sql("PRAGMA integrity_check;"), "ok");
  EXPECT_GT(std::stoi(sql("SELECT count(*) FROM flows;")), 0);
}

TEST_F(FlowLogTest, TinyNetlinkBufferGivesRecordedGapsNotSilentLoss) {
  start("netlink_buffer_kb = 4\n");
  auto& t = *topo_;
  // Many new flows at once: far more events than 4 KiB can hold.
  for (int round = 0; round < 4; ++round) {
    t.in_guest(vm_, {sgprobe_bin(), "udp-spray", t.internet.v4, std::to_string(10000 + round * 2000), "2000"});
  }
  std::this_thread::sleep_for(std::chrono::seconds(3));
  EXPECT_GE(std::stoi(sql("SELECT count(*) FROM gaps;")), 1) << t.daemon().log();
  EXPECT_NE(t.daemon().log().find("resync"), std::string::npos);
}

}  // namespace
}  // namespace sg::test
