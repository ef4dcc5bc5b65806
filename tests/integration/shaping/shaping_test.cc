// Tier 2: traffic shaping with real traffic. iperf3 runs from simulated
// guests through the daemon's host namespace to "internet", "client" and
// "nodeA"; the HTB classes the daemon made must hold each configured rate,
// keep VMs apart, give an authorized node its own class, throttle and stop a
// VM at its daily quota, and disappear with the VM.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <regex>
#include <thread>

#include "common/raii/fd.h"
#include "netpolicy/nft_backend.h"
#include "tests/integration/topology.h"

namespace sg::test {
namespace {

constexpr double kMbit = 1e6;

std::string lab_policy(const std::string& semi_fp, const std::string& extra_owner = "") {
  return R"(
[owner]
)" + extra_owner +
         R"(
[guardrails]
allow_reserved = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]

[[clients.rules]]
name = "lab machine"
fingerprint = ")" +
         semi_fp + R"("
level = "semi-trusted"

[levels.semi-trusted]
tcp = ["203.0.113.32/28:5201-5202"]
egress_mbit = 8
per_destination = { packets = 1000, kbit = 100000 }
syn_per_second = 100

[levels.untrusted]
egress_mbit = 6
daily_quota = "2MB"
per_destination = { packets = 1000, kbit = 100000 }
syn_per_second = 100
)";
}

class ShapingTest : public ::testing::Test {
 protected:
  void start(const std::string& extra_owner = "", bool lab_pki = false) {
    if (auto why = why_no_namespaces(); !why.empty()) GTEST_SKIP() << why;
    if (run({"which", "iperf3"}).code != 0) GTEST_SKIP() << "iperf3 is not installed";
    topo_ = std::make_unique<Topology>("sgs" + std::to_string(getpid()));
    if (lab_pki) {
      pki_ = topo_->dir() + "/pki";
      auto made = make_lab_pki(pki_);
      ASSERT_EQ(made.code, 0) << made.err;
      topo_->extra_config = "[pki]\nca_files = [\"" + pki_ + "/ca.pem\"]\ncrl_files = [\"" + pki_ + "/crl.pem\"]\n";
    }
    semi_key_ = topo_->keygen("semi");
    untrusted_key_ = topo_->keygen("untrusted");
    ASSERT_TRUE(topo_->start(lab_policy(topo_->fingerprint(semi_key_), extra_owner))) << topo_->daemon().log();
    for (const auto* e : {&topo_->client, &topo_->nodeA, &topo_->internet}) {
      // One server per port: an iperf3 server runs one test at a time.
      for (const char* port : {"5201", "5202"}) {
        std::string pidfile = topo_->dir() + "/iperf-" + e->ns + "-" + port + ".pid";
        auto r = topo_->in_ns(e->ns, {"iperf3", "-s", "-D", "-p", port, "--pidfile", pidfile});
        ASSERT_EQ(r.code, 0) << r.err;
        pidfiles_.push_back(pidfile);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  void TearDown() override {
    for (const auto& f : pidfiles_) {
      std::string pid = read_file(f);
      if (!pid.empty()) ::kill(static_cast<pid_t>(std::stol(pid)), SIGTERM);
    }
    if (HasFailure() && topo_) {
      std::cerr << "---- daemon log ----\n" << topo_->daemon().log() << "---- tc ----\n" << tc_classes("i0");
    }
    topo_.reset();
  }

  std::string allocate(const std::string& key) {
    auto vm = topo_->ctl_json({"allocate", "--client", topo_->client.v4}, key);
    EXPECT_TRUE(vm.contains("name")) << vm.dump();
    std::string name = vm.value("name", "");
    // The simulated tap appears with the guest; give the shaper a tick.
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    return name;
  }

  // Goodput the receiver saw, bits per second (first second omitted: slow start).
  double iperf(const std::string& vm, const std::string& addr, std::vector<std::string> extra = {},
               const std::string& port = "5201") {
    std::vector<std::string> argv = {"iperf3", "-c", addr, "-p", port, "-t", "3", "-O", "1", "-J"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto r = topo_->in_guest(vm, argv);
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    if (j.is_discarded() || !j.contains("end") || !j["end"].contains("sum_received") ||
        !j["end"]["sum_received"].is_object()) {
      ADD_FAILURE() << "iperf3 from " << vm << " to " << addr << " failed: " << r.out << r.err;
      return 0;
    }
    return j["end"]["sum_received"].value("bits_per_second", 0.0);
  }

  std::string tc_classes(const std::string& dev) const {
    return topo_->in_ns(topo_->host_ns(), {"tc", "-s", "class", "show", "dev", dev}).out;
  }
  // Bytes sent through one class, from `tc -s class show` (the test may read tc's text; the daemon never does).
  std::uint64_t class_bytes(const std::string& dev, const std::string& classid) const {
    std::string text = tc_classes(dev);
    std::smatch m;
    std::regex re("class htb " + classid + " [^\\n]*\\n Sent ([0-9]+) bytes");
    if (std::regex_search(text, m, re)) return std::stoull(m[1]);
    return 0;
  }

  nlohmann::json shaping(const std::string& vm) { return topo_->ctl_json({"show", vm})["shaping"]; }

  std::unique_ptr<Topology> topo_;
  std::string semi_key_, untrusted_key_, pki_;
  std::vector<std::string> pidfiles_;
};

// Goodput of a TCP stream shaped to `cap` on the wire: HTB counts Ethernet
// frames, iperf3 counts payload (1448 of 1514 bytes with timestamps).
double expected_goodput(double cap) { return cap * 1448.0 / 1514.0; }

TEST_F(ShapingTest, EachCapHoldsTowardsInternetClientAndTheVm) {
  start();
  std::string vm = allocate(semi_key_);
  double to_internet = iperf(vm, topo_->internet.v4);
  double to_client = iperf(vm, topo_->client.v4);
  double towards_vm = iperf(vm, topo_->internet.v4, {"-R"});
  std::cerr << "internet " << to_internet / kMbit << " client " << to_client / kMbit << " towards VM "
            << towards_vm / kMbit << " Mbit/s (cap 8)\n";
  EXPECT_NEAR(to_internet, expected_goodput(8 * kMbit), 0.05 * 8 * kMbit);
  EXPECT_NEAR(to_client, expected_goodput(8 * kMbit), 0.05 * 8 * kMbit);
  EXPECT_NEAR(towards_vm, expected_goodput(8 * kMbit), 0.05 * 8 * kMbit);
  // The classes nftables picked carried the traffic: "everything else" on the
  // internet link, "client" on the client link.
  auto id = topo_->ctl_json({"show", vm}).value("id", 0);
  auto cls = [&](int k) { return "53:" + (std::stringstream() << std::hex << (id * 4 + k)).str(); };
  EXPECT_GT(class_bytes("i0", cls(3)), 1'000'000U) << tc_classes("i0");
  EXPECT_GT(class_bytes("c0", cls(1)), 1'000'000U) << tc_classes("c0");
  EXPECT_EQ(class_bytes("i0", cls(1)), 0U);
  auto sh = shaping(vm);
  EXPECT_EQ(sh.value("cap_bps", 0), 8'000'000);
  EXPECT_FALSE(sh.value("throttled", true));
  auto rules = topo_->ctl({"rules", "show", vm});
  EXPECT_NE(rules.out.find("class htb " + cls(0) + " parent 53:1 rate 8Mbit ceil 8Mbit dev i0"), std::string::npos)
      << rules.out;
}

TEST_F(ShapingTest, TwoVmsAtFullLoadEachGetTheirOwnCap) {
  start();
  std::string a = allocate(semi_key_);
  std::string b = allocate(semi_key_);
  double ra = 0, rb = 0;
  std::thread ta([&] { ra = iperf(a, topo_->internet.v4); });
  std::thread tb([&] { rb = iperf(b, topo_->internet.v4, {}, "5202"); });
  ta.join();
  tb.join();
  std::cerr << a << " " << ra / kMbit << " Mbit/s, " << b << " " << rb / kMbit << " Mbit/s (cap 8 each)\n";
  EXPECT_NEAR(ra, expected_goodput(8 * kMbit), 0.05 * 8 * kMbit);
  EXPECT_NEAR(rb, expected_goodput(8 * kMbit), 0.05 * 8 * kMbit);
  EXPECT_NEAR(ra / rb, 1.0, 0.05);
}

TEST_F(ShapingTest, OwnersCeilingCapsTheSum) {
  start("bandwidth_ceiling_mbit = 10\n");
  std::string a = allocate(semi_key_);
  std::string b = allocate(semi_key_);
  double ra = 0, rb = 0;
  std::thread ta([&] { ra = iperf(a, topo_->internet.v4); });
  std::thread tb([&] { rb = iperf(b, topo_->internet.v4, {}, "5202"); });
  ta.join();
  tb.join();
  std::cerr << "sum " << (ra + rb) / kMbit << " Mbit/s under a 10 Mbit/s ceiling\n";
  EXPECT_NEAR(ra + rb, expected_goodput(10 * kMbit), 0.05 * 10 * kMbit);
  // Neither starves (two TCP flows borrowing from one parent are not split exactly evenly).
  EXPECT_GT(ra, 0.3 * (ra + rb));
  EXPECT_GT(rb, 0.3 * (ra + rb));
}

TEST_F(ShapingTest, AuthorizedNodeGetsItsOwnClass) {
  start();
  // Semi-trusted: no 2 MB quota to run into during the measurement.
  std::string vm = allocate(semi_key_);
  auto add = topo_->ctl({"hole", "add", vm, topo_->nodeA.v4 + ":5201", "--proto", "tcp"});
  ASSERT_EQ(add.code, 0) << add.err;
  double to_node = 0, to_client = 0;
  std::thread tn([&] { to_node = iperf(vm, topo_->nodeA.v4); });
  std::thread tc([&] { to_client = iperf(vm, topo_->client.v4, {}, "5202"); });
  tn.join();
  tc.join();
  std::cerr << "node " << to_node / kMbit << " client " << to_client / kMbit << " Mbit/s (cap 8)\n";
  EXPECT_NEAR(to_node, expected_goodput(8 * kMbit), 0.05 * 8 * kMbit);
  EXPECT_NEAR(to_client, expected_goodput(8 * kMbit), 0.05 * 8 * kMbit);
  auto id = topo_->ctl_json({"show", vm}).value("id", 0);
  auto cls = [&](int k) { return "53:" + (std::stringstream() << std::hex << (id * 4 + k)).str(); };
  EXPECT_GT(class_bytes("n0", cls(2)), 1'000'000U) << tc_classes("n0");
  EXPECT_EQ(class_bytes("n0", cls(3)), 0U) << tc_classes("n0");
}

// An authcert that names a rate: the node gets a class of its own at exactly
// that rate, whatever the VM's other traffic does, and the class goes with
// the authcert.
TEST_F(ShapingTest, RatedAuthcertGetsItsOwnClassAtItsRate) {
  start("", true);
  if (HasFatalFailure() || IsSkipped()) return;
  std::string vm = allocate(semi_key_);
  std::string cert = topo_->dir() + "/rated.pem";
  auto signed_ = run({surrogatectl_bin(), "authcert", "sign", "--node-key", pki_ + "/node.key", "--node-cert",
                      pki_ + "/node.pem", "--user-key", semi_key_ + ".pub", "--to", topo_->nodeA.v4 + ":5201",
                      "--proto", "tcp", "--valid-for", "1h", "--rate", "3000", "-o", cert});
  ASSERT_EQ(signed_.code, 0) << signed_.err;
  auto sub = topo_->ctl_json({"authcert", "submit", vm, cert}, semi_key_);
  ASSERT_TRUE(sub.contains("id")) << sub.dump();
  auto sh = shaping(vm);
  ASSERT_EQ(sh["authcert_classes"].size(), 1U) << sh.dump();
  EXPECT_EQ(sh["authcert_classes"][0].value("class", ""), "53:8000") << sh.dump();
  EXPECT_EQ(sh["authcert_classes"][0].value("ceil_bps", 0), 3'000'000) << sh.dump();
  // The node at its 3 Mbit/s while the client takes what the 8 Mbit/s cap leaves.
  double to_node = 0, to_client = 0;
  std::thread tn([&] { to_node = iperf(vm, topo_->nodeA.v4); });
  std::thread tc([&] { to_client = iperf(vm, topo_->client.v4, {}, "5202"); });
  tn.join();
  tc.join();
  std::cerr << "node " << to_node / kMbit << " client " << to_client / kMbit << " Mbit/s (node 3, cap 8)\n";
  EXPECT_NEAR(to_node, expected_goodput(3 * kMbit), 0.05 * 3 * kMbit);
  EXPECT_GT(to_client, expected_goodput(4 * kMbit) * 0.95);
  EXPECT_GT(class_bytes("n0", "53:8000"), 500'000U) << tc_classes("n0");
  auto id = topo_->ctl_json({"show", vm}).value("id", 0);
  std::string nodes = "53:" + (std::stringstream() << std::hex << (id * 4 + 2)).str();
  EXPECT_EQ(class_bytes("n0", nodes), 0U) << tc_classes("n0");
  EXPECT_NE(topo_->ctl({"show", vm}).out.find("Node class     53:8000 at 3 Mbit/s"), std::string::npos)
      << topo_->ctl({"show", vm}).out;
  // `rules show VM` lists the class.
  auto rules = topo_->ctl({"rules", "show", vm});
  EXPECT_NE(rules.out.find("class htb 53:8000 parent 53:" + (std::stringstream() << std::hex << id * 4).str() +
                           " rate 3Mbit ceil 3Mbit"),
            std::string::npos)
      << rules.out;
  // Revoked: the hole and its class go at once.
  ASSERT_EQ(topo_->ctl({"authcert", "revoke", sub["id"]}, semi_key_).code, 0);
  EXPECT_EQ(tc_classes("n0").find("53:8000"), std::string::npos) << tc_classes("n0");
  EXPECT_EQ(shaping(vm)["authcert_classes"].size(), 0U);
}

TEST_F(ShapingTest, QuotaThrottlesAt80PercentAndStopsAtFullExceptTheClient) {
  start();
  std::string vm = allocate(untrusted_key_);
  ASSERT_EQ(topo_->ctl({"hole", "add", vm, topo_->nodeA.v4}).code, 0);
  // 1.7 MB of the 2 MB quota (UDP, so nothing waits for acks).
  topo_->in_guest(vm, {"iperf3", "-c", topo_->nodeA.v4, "-p", "5201", "-u", "-b", "4M", "-n", "1700K", "-l", "1400"});
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  auto sh = shaping(vm);
  EXPECT_TRUE(sh.value("throttled", false)) << sh.dump();
  EXPECT_GE(sh.value("quota_used_bytes", 0), 1'600'000) << sh.dump();
  EXPECT_FALSE(sh.value("quota_exhausted", true)) << sh.dump();
  EXPECT_LT(sh.value("throttle_bps", 0), 100'000) << sh.dump();  // 0.3 MB for the rest of the day
  auto id = topo_->ctl_json({"show", vm}).value("id", 0);
  auto throttled = tc_classes("n0");
  std::string other = "53:" + (std::stringstream() << std::hex << (id * 4 + 3)).str();
  EXPECT_NE(throttled.find("class htb " + other + " parent"), std::string::npos);
  // The client is not throttled.
  double to_client = iperf(vm, topo_->client.v4);
  EXPECT_NEAR(to_client, expected_goodput(6 * kMbit), 0.05 * 6 * kMbit);
  // Use up the rest: the node becomes unreachable, the client stays reachable.
  // Its control connection dies with the quota: do not wait for it.
  topo_->in_guest(vm, {"timeout", "-s", "KILL", "6", "iperf3", "-c", topo_->nodeA.v4, "-p", "5201", "-u", "-b", "4M",
                       "-n", "600K", "-l", "1400"});
  std::this_thread::sleep_for(std::chrono::milliseconds(2000));
  sh = shaping(vm);
  EXPECT_TRUE(sh.value("quota_exhausted", false)) << sh.dump();
  EXPECT_FALSE(topo_->tcp_reaches(vm, topo_->nodeA.v4, 5201));
  EXPECT_TRUE(topo_->tcp_reaches(vm, topo_->client.v4, 5201));
  auto text = topo_->ctl({"show", vm}).out;
  EXPECT_NE(text.find("Throttled      yes"), std::string::npos) << text;
  EXPECT_NE(text.find("used up"), std::string::npos) << text;
}

TEST_F(ShapingTest, ReleaseAndRestartLeaveNoStrayClass) {
  start();
  std::string a = allocate(semi_key_);
  std::string b = allocate(semi_key_);
  auto id_a = topo_->ctl_json({"show", a}).value("id", 0);
  auto hex = [](int v) { return (std::stringstream() << std::hex << v).str(); };
  // A stray class as a crashed daemon might leave it, then a restart.
  topo_->in_ns(topo_->host_ns(),
               {"tc", "class", "add", "dev", "i0", "parent", "53:1", "classid", "53:fff0", "htb", "rate", "1mbit"});
  topo_->daemon().kill9();
  ASSERT_TRUE(topo_->daemon().start()) << topo_->daemon().log();
  std::string after = tc_classes("i0");
  EXPECT_EQ(after.find("53:fff0"), std::string::npos) << after;
  // Each VM's classes exactly once.
  for (int k = 0; k < 4; ++k) {
    std::string line = "class htb 53:" + hex(id_a * 4 + k) + " ";
    auto first = after.find(line);
    EXPECT_NE(first, std::string::npos) << after;
    EXPECT_EQ(after.find(line, first + 1), std::string::npos) << after;
  }
  ASSERT_EQ(topo_->ctl({"release", a}).code, 0);
  after = tc_classes("i0");
  for (int k = 0; k < 4; ++k) EXPECT_EQ(after.find("class htb 53:" + hex(id_a * 4 + k) + " "), std::string::npos);
  ASSERT_EQ(topo_->ctl({"release", b}).code, 0);
  for (const char* dev : {"i0", "c0", "n0"}) {
    std::string left = tc_classes(dev);
    // Only the root class of the tree is left.
    EXPECT_EQ(std::count(left.begin(), left.end(), '\n') > 0 ? left.find("class htb 53:1 root") : 0, 0U) << left;
    EXPECT_EQ(left.find("parent 53:1"), std::string::npos) << dev << ":\n" << left;
  }
}

// The quota reader the shaper uses, against a real quota object.
TEST(QuotaBackend, ReadAndResetAQuotaObject) {
  if (auto why = why_no_namespaces(); !why.empty()) GTEST_SKIP() << why;
  Netns ns("sgq" + std::to_string(getpid()));
  RunOptions o;
  o.netns = ns.name();
  o.stdin_data = "table inet t {\n  quota q { over 1000 bytes used 700 bytes }\n}\n";
  ASSERT_EQ(run({"nft", "-f", "-"}, o).code, 0);
  // The backend opens its socket in the calling thread's namespace.
  std::uint64_t before = 0, reset_reported = 0, after = 0;
  std::string error;
  std::thread t([&] {
    // Only this short-lived thread moves into the namespace.
    Fd target(::open(("/run/netns/" + ns.name()).c_str(), O_RDONLY | O_CLOEXEC));
    if (!target.valid() || setns(target.get(), CLONE_NEWNET) != 0) {
      error = "cannot enter namespace " + ns.name();
      return;
    }
    auto b = netpolicy::NftBackend::open();
    if (!b) {
      error = b.error().describe();
      return;
    }
    auto q = b->read_quota(netpolicy::TableFamily::inet, "t", "q");
    if (!q) {
      error = q.error().describe();
      return;
    }
    before = q->consumed;
    EXPECT_EQ(q->bytes, 1000U);
    auto r = b->read_quota(netpolicy::TableFamily::inet, "t", "q", true);
    if (r) reset_reported = r->consumed;
    auto a = b->read_quota(netpolicy::TableFamily::inet, "t", "q");
    if (a) after = a->consumed;
    auto missing = b->read_quota(netpolicy::TableFamily::inet, "t", "nope");
    EXPECT_FALSE(missing.ok());
  });
  t.join();
  ASSERT_TRUE(error.empty()) << error;
  EXPECT_EQ(before, 700U);
  EXPECT_EQ(reset_reported, 700U);
  EXPECT_EQ(after, 0U);
}

}  // namespace
}  // namespace sg::test
