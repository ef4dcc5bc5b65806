// Tier 2: the GRE tunnel from an untrusted VM back to its client, with real
// packets. host / guest / client / internet namespaces (topology.h) plus a
// direct link from the client to "internet", its own uplink: the guest's
// TCP and UDP reach "internet" through the client, which sees the client's
// address; between host and client the packets are GRE (tshark says so);
// without the tunnel the same traffic is dropped; the guardrails hold inside
// the tunnel; release and bad input leave nothing behind; a daemon restart
// rebuilds the tunnel. The client end is `surrogatectl tunnel client`,
// run in the client namespace as a background process killed by PID.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <regex>
#include <thread>

#include "tests/integration/topology.h"

namespace sg::test {
namespace {

using namespace std::chrono_literals;

// A UDP echo server that answers with the peer address it saw (bound to
// the address asked, so that it answers from it: "internet" has two), and a
// client that sends N datagrams and reports the answers.
constexpr const char* kUdpEcho = R"(
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(peer[0].encode(), peer)
)";
constexpr const char* kUdpAsk = R"(
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
seen = set()
n = 0
for i in range(int(sys.argv[3])):
    s.sendto(b"x" * 1000, (sys.argv[1], int(sys.argv[2])))
    try:
        data, _ = s.recvfrom(2048)
        seen.add(data.decode())
        n += 1
    except socket.timeout:
        pass
print(n, "answers from", ",".join(sorted(seen)))
sys.exit(0 if n == int(sys.argv[3]) else 1)
)";

std::string lab_policy() {
  return R"(
[guardrails]
allow_reserved = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]
block = ["203.0.113.192/27", "2001:db8:bad::/48"]

[levels.untrusted]
per_destination = { packets = 200, kbit = 100000 }
syn_per_second = 100
)";
}

// A process in a namespace, output to a file, stopped by PID.
class Background {
 public:
  Background(const std::string& ns, const std::vector<std::string>& argv, std::string out) : out_(std::move(out)) {
    pid_ = fork();
    if (pid_ == 0) {
      int fd = ::open(out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<std::string> full = {"nsenter", "--net=/run/netns/" + ns, "--"};
      full.insert(full.end(), argv.begin(), argv.end());
      std::vector<char*> args;
      args.reserve(full.size() + 1);
      for (auto& a : full) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execvp(args[0], args.data());
      _exit(127);
    }
  }
  ~Background() { stop(SIGTERM); }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;
  // Waits until the output contains `what`; false on timeout or exit.
  bool wait_for(const std::string& what, std::chrono::milliseconds timeout = 10s) const {
    for (auto t = 0ms; t < timeout; t += 50ms) {
      if (output().find(what) != std::string::npos) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }
  [[nodiscard]] std::string output() const { return read_file(out_); }
  // Sends sig (0: none, let it finish) and waits for the exit, at most 5 s
  // before SIGKILL.
  int stop(int sig) {
    if (pid_ <= 0) return -1;
    if (sig != 0) ::kill(pid_, sig);
    int status = 0;
    for (int i = 0; i < 100 && ::waitpid(pid_, &status, WNOHANG) == 0; ++i) std::this_thread::sleep_for(50ms);
    if (::waitpid(pid_, &status, WNOHANG) == 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
    }
    pid_ = -1;
    return status;
  }

 private:
  std::string out_;
  pid_t pid_ = -1;
};

class TunnelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto why = why_no_namespaces(); !why.empty()) GTEST_SKIP() << why;
    if (::access("/dev/net/tun", R_OK | W_OK) != 0) GTEST_SKIP() << "no /dev/net/tun";
    topo_ = std::make_unique<Topology>("sgg" + std::to_string(getpid()));
    auto& t = *topo_;
    // The client's own uplink to "internet": 203.0.113.64/28, 2001:db8:f::/64.
    t.in_ns(t.client.ns, {"ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0", "netns", t.internet.ns});
    for (const auto& [ns, v4, v6] :
         {std::tuple{t.client.ns, kClientUp4, kClientUp6}, std::tuple{t.internet.ns, kInetUp4, kInetUp6}}) {
      t.in_ns(ns, {"ip", "addr", "add", std::string(v4) + "/28", "dev", "up0"});
      t.in_ns(ns, {"ip", "addr", "add", std::string(v6) + "/64", "dev", "up0", "nodad"});
      t.in_ns(ns, {"ip", "link", "set", "up0", "up"});
    }
    t.in_ns(t.client.ns, {"ip", "route", "add", t.internet.v4 + "/32", "via", kInetUp4});
    t.in_ns(t.client.ns, {"ip", "-6", "route", "add", t.internet.v6 + "/128", "via", kInetUp6});
    // What "internet" receives from the client's uplink address.
    RunOptions o;
    o.netns = t.internet.ns;
    o.stdin_data = std::string(
                       "table inet seen { counter from_client { }\n chain c { type filter hook prerouting "
                       "priority -300; policy accept; ip saddr ") +
                   kClientUp4 + " counter name \"from_client\"\n ip6 saddr " + kClientUp6 +
                   " counter name \"from_client\"\n }\n}\n";
    auto seen = run({"nft", "-f", "-"}, o);
    ASSERT_EQ(seen.code, 0) << seen.err;
    key_ = t.keygen("alice");
    other_key_ = t.keygen("mallory");
    ASSERT_TRUE(t.start(lab_policy())) << t.daemon().log();
  }
  void TearDown() override {
    client_end_.reset();
    if (HasFailure() && topo_) {
      std::cerr << "---- daemon log ----\n" << topo_->daemon().log() << "---- ruleset ----\n" << topo_->nft_list();
    }
    topo_.reset();
  }

  std::string allocate(const std::string& key, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"allocate", "--client", topo_->client.v4 + "," + topo_->client.v6};
    args.insert(args.end(), extra.begin(), extra.end());
    auto vm = topo_->ctl_json(args, key);
    EXPECT_TRUE(vm.contains("name")) << vm.dump();
    return vm.value("name", "");
  }
  void start_client_end(const std::string& vm) {
    client_end_ =
        std::make_unique<Background>(topo_->client.ns,
                                     std::vector<std::string>{surrogatectl_bin(), "--socket", topo_->socket, "--key",
                                                              key_, "tunnel", "client", "--vm", vm, "--uplink", "up0"},
                                     topo_->dir() + "/client-end.log");
    ASSERT_TRUE(client_end_->wait_for("Ctrl-C")) << client_end_->output();
  }
  std::uint64_t seen_from_client() const {
    auto r = topo_->in_ns(topo_->internet.ns, {"nft", "list", "counter", "inet", "seen", "from_client"});
    std::smatch m;
    if (std::regex_search(r.out, m, std::regex("packets ([0-9]+)"))) return std::stoull(m[1]);
    return 0;
  }
  // What of a tunnel is left in the host namespace (empty: nothing).
  std::string host_leftovers(const std::string& vm) const {
    std::string id = vm.substr(2);
    std::string left;
    auto links = topo_->in_ns(topo_->host_ns(), {"ip", "-o", "link", "show"}).out;
    if (links.find("sgt" + id + ":") != std::string::npos) left += "device sgt" + id + "; ";
    for (const char* fam : {"-4", "-6"}) {
      auto rules = topo_->in_ns(topo_->host_ns(), {"ip", fam, "rule", "show"}).out;
      if (rules.find("5300:") != std::string::npos) left += std::string("ip ") + fam + " rule; ";
      auto routes = topo_->in_ns(topo_->host_ns(), {"ip", fam, "route", "show", "table", "all"}).out;
      if (routes.find("sgt" + id) != std::string::npos) left += std::string("ip ") + fam + " route; ";
    }
    auto nft = topo_->nft_list();
    // (The VM's own egress chain names its tunnel device statically.)
    if (nft.find("\"sgt" + id + "\" .") != std::string::npos || nft.find("vm_" + vm + "_pre") != std::string::npos) {
      left += "nft rules; ";
    }
    return left;
  }

  static constexpr const char* kClientUp4 = "203.0.113.65";
  static constexpr const char* kInetUp4 = "203.0.113.66";
  static constexpr const char* kClientUp6 = "2001:db8:f::1";
  static constexpr const char* kInetUp6 = "2001:db8:f::2";
  std::unique_ptr<Topology> topo_;
  std::unique_ptr<Background> client_end_;
  std::string key_, other_key_;
};

TEST_F(TunnelTest, GuestReachesTheInternetThroughItsClientAsGreAndNothingRemainsAfterRelease) {
  auto& t = *topo_;
  std::string vm = allocate(key_);
  ASSERT_FALSE(vm.empty());
  // Without a tunnel: dropped.
  EXPECT_FALSE(t.tcp_reaches(vm, t.internet.v4, 5201));
  auto status = t.ctl({"status"});
  EXPECT_NE(status.out.find("tunnel endpoint: userspace (kernel has no ip_gre"), std::string::npos) << status.out;

  auto up = t.ctl({"tunnel", "up", vm}, key_);
  ASSERT_EQ(up.code, 0) << up.err;
  Background capture(
      t.client.ns,
      {"tshark", "-q", "-i", "eth0", "-f", "ip proto 47", "-w", t.dir() + "/gre.pcap", "-a", "duration:60"},
      t.dir() + "/tshark.log");
  ASSERT_TRUE(capture.wait_for("Capturing on")) << capture.output();
  start_client_end(vm);

  // TCP: 1 MB through the tunnel (its MTU is 1472: MSS clamping keeps it moving).
  {
    Background server(t.internet.ns, {"iperf3", "-s", "-1", "-J"}, t.dir() + "/iperf-tcp.json");
    std::this_thread::sleep_for(300ms);
    auto r = t.in_guest(vm, {"timeout", "20", "iperf3", "-c", t.internet.v4, "-n", "1M"});
    EXPECT_EQ(r.code, 0) << r.out << r.err << t.ctl({"--json", "tunnel", "status", vm}).out;
    server.stop(0);
    auto out = server.output();
    EXPECT_NE(out.find("\"remote_host\":\t\"" + std::string(kClientUp4) + "\""), std::string::npos) << out;
    EXPECT_EQ(out.find(t.client.v4), std::string::npos) << "internet must see the uplink address";
  }
  // UDP: 20 datagrams to an echo server that answers with the address it
  // saw; the guest gets every answer, all naming the client's uplink.
  {
    Background server(t.internet.ns, {"python3", "-c", kUdpEcho, t.internet.v4, "5300"}, t.dir() + "/udp-echo.log");
    ASSERT_TRUE(server.wait_for("listening")) << server.output();
    auto r = t.in_guest(vm, {"timeout", "20", "python3", "-c", kUdpAsk, t.internet.v4, "5300", "20"});
    EXPECT_EQ(r.code, 0) << r.out << r.err;
    EXPECT_NE(r.out.find("20 answers from " + std::string(kClientUp4)), std::string::npos) << r.out << r.err;
  }
  // IPv6 inside the (IPv4) tunnel: a refused connection still proves the path.
  EXPECT_TRUE(t.tcp_reaches(vm, t.internet.v6, 5999));
  EXPECT_GT(seen_from_client(), 100U);
  EXPECT_EQ(t.sensor(t.internet.ns), 0U) << "the VM's own addresses never reach internet";
  // The flow log knows these flows went through the tunnel.
  std::this_thread::sleep_for(1500ms);
  auto flows = t.ctl_json({"flows", "--vm", vm});
  EXPECT_NE(flows.dump().find("\"path\":\"tunnel\""), std::string::npos) << flows.dump();

  // Between host and client: GRE.
  capture.stop(SIGINT);
  auto decoded = run({"tshark", "-r", t.dir() + "/gre.pcap", "-V", "-c", "20"});
  EXPECT_NE(decoded.out.find("Generic Routing Encapsulation (IP)"), std::string::npos) << decoded.out.substr(0, 3000);
  EXPECT_NE(decoded.out.find("Key: 0x"), std::string::npos);

  auto rel = t.ctl({"release", vm}, key_);
  EXPECT_EQ(rel.code, 0) << rel.err;
  EXPECT_EQ(host_leftovers(vm), "");
  client_end_->stop(SIGTERM);
  auto client_links = t.in_ns(t.client.ns, {"ip", "-o", "link", "show"}).out;
  EXPECT_EQ(client_links.find("sgc-"), std::string::npos) << client_links;
  EXPECT_EQ(t.in_ns(t.client.ns, {"nft", "list", "tables"}).out.find("surrogate_tunnel"), std::string::npos);
}

TEST_F(TunnelTest, GuardrailsHoldInsideTheTunnel) {
  auto& t = *topo_;
  std::string vm = allocate(key_, {"--tunnel"});
  ASSERT_FALSE(vm.empty());
  start_client_end(vm);
  ASSERT_TRUE(t.tcp_reaches(vm, t.internet.v4, 5999));
  std::uint64_t before = seen_from_client();
  EXPECT_FALSE(t.tcp_reaches(vm, t.blocked_v4, 80));   // block list
  EXPECT_FALSE(t.tcp_reaches(vm, "10.1.2.3", 80));     // reserved
  EXPECT_FALSE(t.tcp_reaches(vm, t.internet.v4, 25));  // closed port
  EXPECT_FALSE(t.tcp_reaches(vm, t.internet.v4, 31337));
  EXPECT_EQ(seen_from_client(), before);
  EXPECT_GE(t.drop_counter(vm + " blocked"), 1U);
  EXPECT_GE(t.drop_counter(vm + " reserved"), 1U);
  EXPECT_GE(t.drop_counter(vm + " closed-port"), 2U);
  // GRE sent by the guest itself, even to its own client: dropped.
  t.reset_sensors();
  auto gre = t.in_guest(vm, {"python3", "-c",
                             "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47); "
                             "s.sendto(b'\\x00\\x00\\x08\\x00' + b'x' * 40, ('" +
                                 t.client.v4 + "', 0))"});
  EXPECT_EQ(gre.code, 0) << gre.err;
  EXPECT_GE(t.drop_counter(vm + " gre"), 1U);
  EXPECT_EQ(t.sensor(t.client.ns), 0U);
}

TEST_F(TunnelTest, BadRequestsAreRefusedAndLeaveNothingBehind) {
  auto& t = *topo_;
  std::string vm = allocate(key_);
  ASSERT_FALSE(vm.empty());
  auto malformed = t.ctl({"tunnel", "up", vm, "--remote", "203.0.113.300"}, key_);
  EXPECT_NE(malformed.code, 0);
  EXPECT_NE(malformed.err.find("malformed"), std::string::npos) << malformed.err;
  auto foreign = t.ctl({"tunnel", "up", vm, "--remote", t.nodeA.v4}, key_);
  EXPECT_NE(foreign.code, 0);
  EXPECT_NE(foreign.err.find("not the client address registered"), std::string::npos) << foreign.err;
  // Someone else's VM, asked by an unprivileged user: reported as not found.
  auto theirs = t.ctl({"tunnel", "up", vm}, other_key_, 65534);
  EXPECT_EQ(theirs.code, 4) << theirs.err;
  EXPECT_EQ(host_leftovers(vm), "");
  // Unreachable client address: nothing routes 203.0.113.99 from the host.
  std::string lost = topo_->ctl_json({"allocate", "--client", "203.0.113.99"}, key_).value("name", "");
  ASSERT_FALSE(lost.empty());
  auto unreachable = t.ctl({"tunnel", "up", lost}, key_);
  EXPECT_NE(unreachable.code, 0);
  EXPECT_NE(unreachable.err.find("unreachable"), std::string::npos) << unreachable.err;
  EXPECT_EQ(host_leftovers(lost), "");
  auto alloc = t.ctl_json({"allocate", "--client", "203.0.113.99", "--tunnel"}, key_);
  EXPECT_TRUE(alloc.contains("error")) << alloc.dump();
  // A second tunnel for the same VM.
  ASSERT_EQ(t.ctl({"tunnel", "up", vm}, key_).code, 0);
  auto twice = t.ctl({"tunnel", "up", vm}, key_);
  EXPECT_NE(twice.code, 0);
  EXPECT_NE(twice.err.find("has a tunnel already"), std::string::npos) << twice.err;
  ASSERT_EQ(t.ctl({"tunnel", "down", vm}, key_).code, 0);
  EXPECT_EQ(host_leftovers(vm), "");
  auto gone = t.ctl({"tunnel", "down", vm}, key_);
  EXPECT_EQ(gone.code, 4) << gone.err;
}

// The prerouting hook exists only while some VM has a tunnel: it comes with
// the first, stays while another is up, and goes with the last (a restart
// in between rebuilds it with the recorded tunnels).
TEST_F(TunnelTest, ThePreroutingHookComesWithTheFirstTunnelAndGoesWithTheLast) {
  auto& t = *topo_;
  auto hooked = [&] { return t.nft_list().find("hook prerouting") != std::string::npos; };
  std::string a = allocate(key_);
  std::string b = allocate(key_);
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  EXPECT_FALSE(hooked()) << t.nft_list();
  ASSERT_EQ(t.ctl({"tunnel", "up", a}, key_).code, 0);
  EXPECT_TRUE(hooked());
  ASSERT_EQ(t.ctl({"tunnel", "up", b}, key_).code, 0);
  ASSERT_EQ(t.ctl({"tunnel", "down", a}, key_).code, 0);
  // b's dispatch is still there, and so is the hook it needs.
  EXPECT_TRUE(hooked());
  EXPECT_NE(t.nft_list().find("goto vm_" + b + "_pre"), std::string::npos) << t.nft_list();
  t.daemon().stop();
  ASSERT_TRUE(t.daemon().start()) << t.daemon().log();
  EXPECT_TRUE(hooked());
  EXPECT_NE(t.nft_list().find("goto vm_" + b + "_pre"), std::string::npos) << t.nft_list();
  ASSERT_EQ(t.ctl({"tunnel", "down", b}, key_).code, 0);
  EXPECT_FALSE(hooked()) << t.nft_list();
  EXPECT_EQ(host_leftovers(a), "");
  EXPECT_EQ(host_leftovers(b), "");
  // And back with a new first one.
  ASSERT_EQ(t.ctl({"tunnel", "up", a}, key_).code, 0);
  EXPECT_TRUE(hooked());
  EXPECT_EQ(t.ctl({"release", a}, key_).code, 0);
  EXPECT_FALSE(hooked()) << t.nft_list();
  EXPECT_EQ(t.daemon().log().find("prerouting chain stays"), std::string::npos) << t.daemon().log();
}

// Taking a tunnel down ends the flows that went through it: without that,
// an established flow would carry on, routed straight to the internet from
// the VM's own address.
TEST_F(TunnelTest, TunnelDownEndsTheFlowsThatWentThroughIt) {
  auto& t = *topo_;
  std::string vm = allocate(key_, {"--tunnel"});
  ASSERT_FALSE(vm.empty());
  start_client_end(vm);
  {
    EstablishedUdpFlow flow(t, vm, t.internet.ns, t.internet.v4, 7300, 5);
    std::this_thread::sleep_for(1500ms);
    const std::uint64_t through = seen_from_client();
    EXPECT_GT(through, 5U);
    ASSERT_EQ(t.ctl({"tunnel", "down", vm}, key_).code, 0);
    std::this_thread::sleep_for(200ms);
    t.reset_sensors();
    const std::uint64_t at_down = seen_from_client();
    std::this_thread::sleep_for(2000ms);
    EXPECT_EQ(t.sensor(t.internet.ns), 0U) << "the VM's own address reached the internet";
    EXPECT_EQ(seen_from_client(), at_down);
  }
  EXPECT_GE(t.drop_counter(vm + " not-allowed"), 10U);
}

TEST_F(TunnelTest, DaemonRestartRebuildsTheTunnel) {
  auto& t = *topo_;
  std::string vm = allocate(key_, {"--tunnel"});
  ASSERT_FALSE(vm.empty());
  start_client_end(vm);
  ASSERT_TRUE(t.tcp_reaches(vm, t.internet.v4, 5999));
  t.daemon().kill9();
  // Daemon gone: its userspace endpoint with it. Fail closed, not open.
  EXPECT_FALSE(t.tcp_reaches(vm, t.internet.v4, 5999));
  ASSERT_TRUE(t.daemon().start()) << t.daemon().log();
  EXPECT_NE(t.daemon().log().find("GRE tunnel of " + vm + " to " + t.client.v4 + " rebuilt"), std::string::npos);
  EXPECT_TRUE(t.tcp_reaches(vm, t.internet.v4, 5999));
  auto st = t.ctl_json({"tunnel", "status", vm}, key_);
  EXPECT_EQ(st["tunnels"].size(), 1U) << st.dump();
  ASSERT_EQ(t.ctl({"release", vm}, key_).code, 0);
  EXPECT_EQ(host_leftovers(vm), "");
}

}  // namespace
}  // namespace sg::test
