// Tier 3: real guests. A private libvirtd in the test's "host" namespace
// boots the project's tiny guest (tests/e2e/build-guest.sh) under QEMU/TCG
// through `surrogatectl allocate` on qemu:///system. Each guest runs the
// checks its template's kernel command line lists and prints one line per
// check on its serial console ("SGCHECK tcp 203.0.113.34:80 fail"): the
// policy is proven from inside the guest, and the destination namespaces'
// counters prove what a one-way packet (a spoofed one) cannot show there.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <regex>
#include <sstream>
#include <thread>

#include "tests/e2e/libvirtd.h"
#include "tests/integration/topology.h"

namespace sg::test {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string guest_dir() {
  const char* env = std::getenv("SG_E2E_GUEST_DIR");
  return env != nullptr ? env : std::string(SG_SOURCE_DIR) + "/build/e2e-guest";
}

// Check lists, one template each. Addresses: Topology (client 203.0.113.2,
// nodeA 203.0.113.18, internet 203.0.113.34 and the reserved and blocked
// prefixes routed to it). "wait:CLIENT:PORT" is a barrier the test opens by
// listening on the client.
const std::map<std::string, std::string> kChecks = {
    {"untrusted",
     "ping:203.0.113.2,ping:[2001:db8:c::2],tcp:203.0.113.2:8080,udp:203.0.113.2:9999,"
     "spoof:198.51.100.99:203.0.113.2:9999,tcp:203.0.113.34:80,ping:[2001:db8:e::2],tcp:203.0.113.18:8080,"
     "tcp:10.1.2.3:80"},
    {"semi",
     "tcp:203.0.113.34:80,tcp:[2001:db8:e::2]:80,ping:203.0.113.18,udp:203.0.113.34:5353,tcp:203.0.113.34:8080,"
     "tcp:203.0.113.18:80,udp:203.0.113.34:5354,tcp:192.168.1.1:80,spoof:[2001:db8:5:ff::9]:[2001:db8:e::2]:5353"},
    {"trusted",
     "tcp:203.0.113.34:8080,tcp:[2001:db8:a::2]:9999,ping:[2001:db8:e::2],ping:10.1.2.3,ping:100.64.1.1,"
     "ping:[fc00::1],ping:203.0.113.200,tcp:203.0.113.34:25,spoof:198.51.100.99:203.0.113.34:7777"},
    // The hole: closed, barrier (the test adds the hole), open; then it
    // holds until the test releases it.
    {"hole",
     "tcp:203.0.113.18:8080,wait:203.0.113.2:9001:120,tcp:203.0.113.18:8080,tcp:203.0.113.18:8081,"
     "wait:203.0.113.2:9002:300"},
    // Knocks on a forbidden destination over and over while it waits at the
    // barrier (the daemon is killed and restarted meanwhile).
    {"hold", "tcp:203.0.113.34:80,wait:203.0.113.2:9003:180:203.0.113.34:80,tcp:203.0.113.34:80,ping:203.0.113.2"},
    {"crash", "ping:203.0.113.2,wait:203.0.113.2:9004:180,crash"},
};

std::string templates_toml() {
  std::string g = guest_dir();
  std::string out;
  for (const auto& [name, checks] : kChecks) {
    out += "[templates.e2e-" + name + "]\nvcpus = 1\nmemory_mib = 128\nmax_lifetime = \"1h\"\n" +
           "default_lifetime = \"30m\"\nkernel = \"" + g + "/vmlinux\"\ninitrd = \"" + g + "/initrd.gz\"\n" +
           "cmdline = \"console=ttyS0 quiet panic=-1 sg.ip4={ipv4}/30 sg.gw4={gateway4} sg.ip6={ipv6}/64 "
           "sg.gw6={gateway6} sgcheck=" +
           checks + "\"\n";
  }
  return out;
}

// "SGCHECK kind target result [details]" lines of a console: target -> line
// rest, keyed "kind target" (repeated checks get "#2").
std::map<std::string, std::string> checks_of(const std::string& console) {
  std::map<std::string, std::string> out;
  std::istringstream in(console);
  std::regex re(R"(SGCHECK (\S+) (\S+) (.*?)\r?$)");
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (!std::regex_search(line, m, re)) continue;
    std::string key = m[1].str() + " " + m[2].str();
    if (out.count(key) != 0) key += "#2";
    out[key] = m[3];
  }
  return out;
}

// A listening TCP socket inside a namespace: opens a barrier of a guest.
class Listener {
 public:
  Listener(const std::string& ns, int port) {
    std::thread t([&] {
      int nsfd = open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
      if (nsfd < 0 || setns(nsfd, CLONE_NEWNET) != 0) return;  // this thread only
      close(nsfd);
      fd_ = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
      int one = 1;
      setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      sockaddr_in6 a{};
      a.sin6_family = AF_INET6;
      a.sin6_port = htons(static_cast<std::uint16_t>(port));
      a.sin6_addr = in6addr_any;
      if (bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd_, 16) != 0) {
        close(fd_);
        fd_ = -1;
      }
    });
    t.join();
  }
  ~Listener() {
    if (fd_ >= 0) close(fd_);
  }
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  [[nodiscard]] bool ok() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

class RealVmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto why = why_no_namespaces(); !why.empty()) GTEST_SKIP() << why;
    if (auto why = why_no_qemu(); !why.empty()) GTEST_SKIP() << why;
    // Builds the guest once (downloads only when the cache is empty).
    auto built = run({std::string(SG_SOURCE_DIR) + "/tests/e2e/build-guest.sh", guest_dir()});
    ASSERT_EQ(built.code, 0) << "cannot build the test guest:\n" << built.err;

    topo_ = std::make_unique<Topology>("sgv" + std::to_string(getpid()));
    libvirtd_ = std::make_unique<Libvirtd>(topo_->host_ns(), topo_->dir() + "/libvirt", guest_dir() + "/libvirt-cache");
    ASSERT_TRUE(libvirtd_->start()) << libvirtd_->log();
    topo_->libvirt_uri = libvirtd_->uri();
    // nodeA's owner runs a small CA (docs/authcert.md, section 3); the host
    // trusts it for authcerts.
    pki_ = topo_->dir() + "/pki";
    auto pki = run({"bash", "-c", "set -e; mkdir -p " + pki_ + "; cd " + pki_ + R"(
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=Lab CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "nameConstraints=critical,permitted;IP:203.0.113.0/255.255.255.0" -out ca.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out node.key 2>/dev/null
openssl req -new -key node.key -subj "/CN=node-a.example" -out node.csr
printf 'basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\nsubjectAltName = IP:203.0.113.18\n' > node.ext
openssl x509 -req -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -extfile node.ext -out node.pem 2>/dev/null
)"});
    ASSERT_EQ(pki.code, 0) << pki.err;
    topo_->extra_config = templates_toml() + "[pki]\nca_files = [\"" + pki_ + "/ca.pem\"]\n";
    untrusted_key_ = topo_->keygen("untrusted");
    semi_key_ = topo_->keygen("semi");
    trusted_key_ = topo_->keygen("trusted");
    ASSERT_TRUE(topo_->start(lab_trust_policy(topo_->fingerprint(semi_key_), topo_->fingerprint(trusted_key_))))
        << topo_->daemon().log();
  }

  void TearDown() override {
    if (HasFailure() && topo_) {
      std::cerr << "---- daemon log ----\n" << topo_->daemon().log() << "---- ruleset ----\n" << topo_->nft_list();
      if (libvirtd_) {
        for (const auto& [vm, domain] : domains_) std::cerr << "---- console of " << vm << " ----\n" << console(vm);
        std::cerr << "---- libvirtd log (tail) ----\n" << tail(libvirtd_->log(), 3000);
      }
    }
    // Domains first (their taps go with them), then libvirtd, then the
    // daemon and the namespaces.
    libvirtd_.reset();
    topo_.reset();
  }

  static std::string tail(const std::string& s, std::size_t n) { return s.size() > n ? s.substr(s.size() - n) : s; }

  // Allocates a VM of template e2e-<name>; returns its name.
  std::string allocate(const std::string& key, const std::string& tpl, double* seconds = nullptr) {
    auto t0 = Clock::now();
    auto vm = topo_->ctl_json(
        {"allocate", "--template", "e2e-" + tpl, "--client", topo_->client.v4 + "," + topo_->client.v6}, key);
    if (seconds != nullptr) *seconds = seconds_since(t0);
    EXPECT_TRUE(vm.contains("name")) << vm.dump();
    std::string name = vm.value("name", "");
    domains_[name] = "surrogate-" + name;
    return name;
  }

  std::string console(const std::string& vm) const { return libvirtd_->console(domains_.at(vm)); }

  // Waits until the guest's console contains `marker`; false on timeout.
  bool wait_console(const std::string& vm, const std::string& marker, int timeout_s = 120) const {
    auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
    while (Clock::now() < deadline) {
      if (console(vm).find(marker) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  bool wait_until(const std::function<bool()>& cond, int timeout_s) const {
    auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
    while (Clock::now() < deadline) {
      if (cond()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return cond();
  }

  bool vm_active(const std::string& vm) const {
    auto list = topo_->ctl_json({"list"});  // active VMs (all of them: root is admin)
    if (!list.is_array()) list = list.value("vms", nlohmann::json::array());
    return std::any_of(list.begin(), list.end(), [&](const auto& v) { return v.value("name", "") == vm; });
  }

  // Nothing of the VM is left on the host: no domain, tap, rule, address.
  void expect_nothing_left(const std::string& vm) const {
    auto& t = *topo_;
    auto running = libvirtd_->running();
    EXPECT_EQ(std::count(running.begin(), running.end(), domains_.at(vm)), 0) << vm << " still runs";
    EXPECT_NE(t.in_ns(t.host_ns(), {"ip", "link", "show", "dev", vm}).code, 0) << "tap " << vm << " is left";
    std::string rules = t.nft_list();
    EXPECT_EQ(rules.find("\"" + vm + "\""), std::string::npos) << "rules of " << vm << " are left:\n" << rules;
    EXPECT_EQ(rules.find(vm + ":"), std::string::npos) << "rules of " << vm << " are left";
    auto addrs = t.in_ns(t.host_ns(), {"ip", "addr", "show"}).out;
    EXPECT_EQ(addrs.find(vm), std::string::npos) << addrs;
  }

  // The daemon logged this VM's release with `reason`.
  bool released_with(const std::string& vm, const std::string& reason) const {
    std::string log = topo_->daemon().log();
    return log.find("released " + vm + " of ") != std::string::npos && log.find(": " + reason) != std::string::npos;
  }

  // Milliseconds the daemon logged for libvirt's part of `what`
  // ("defined and started", "destroyed and undefined") for a domain.
  double libvirt_ms(const std::string& what, const std::string& vm) const {
    std::regex re("libvirt: " + what + " " + domains_.at(vm) + " in ([0-9]+) ms");
    std::smatch m;
    std::string log = topo_->daemon().log();
    return std::regex_search(log, m, re) ? std::stod(m[1]) : -1;
  }

  static void figure(const std::string& name, double value, const std::string& unit) {
    std::cout << "E2E-FIGURE " << name << " = " << value << " " << unit << std::endl;
  }

  std::unique_ptr<Topology> topo_;
  std::unique_ptr<Libvirtd> libvirtd_;
  std::map<std::string, std::string> domains_;  // vm -> libvirt domain
  std::string pki_;
  std::string untrusted_key_, semi_key_, trusted_key_;
};

TEST_F(RealVmTest, EachLevelShowsFromInsideItsGuestExactlyWhatItAllows) {
  auto& t = *topo_;
  // A counter of the spoofed packets at each destination, which a guest
  // cannot see dropped from inside (no answer comes back either way).
  for (const auto& ns : {t.client.ns, t.internet.ns}) {
    RunOptions o;
    o.netns = ns;
    o.stdin_data =
        "table inet e2e {\n counter spoofed { }\n chain pre {\n  type filter hook prerouting priority -300;\n"
        "  ip saddr 198.51.100.99 counter name \"spoofed\"\n  ip6 saddr 2001:db8:5:ff::9 counter name \"spoofed\"\n"
        " }\n}\n";
    ASSERT_EQ(run({"nft", "-f", "-"}, o).code, 0);
  }
  auto t0 = Clock::now();
  double alloc_s = 0;
  std::string u = allocate(untrusted_key_, "untrusted", &alloc_s);
  std::string s = allocate(semi_key_, "semi");
  std::string tr = allocate(trusted_key_, "trusted");
  ASSERT_FALSE(u.empty() || s.empty() || tr.empty());
  figure("allocate (surrogatectl, wall)", alloc_s * 1000, "ms");
  figure("allocate: libvirt+QEMU share", libvirt_ms("defined and started", u), "ms");

  // Allocate to the untrusted guest's first packet through its rules (its
  // gateway answered) and to its first packet dropped by them.
  double first_passed = -1, first_dropped = -1;
  while (seconds_since(t0) < 150 && console(u).find("SGDONE") == std::string::npos) {
    if (first_passed < 0 && console(u).find("SGCHECK ready") != std::string::npos) first_passed = seconds_since(t0);
    if (first_dropped < 0 && t.drop_counter(u + " ") > 0) first_dropped = seconds_since(t0);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  figure("allocate to first packet passed by the rules", first_passed * 1000, "ms");
  figure("allocate to first packet dropped by the rules", first_dropped * 1000, "ms");
  for (const auto& vm : {u, s, tr}) ASSERT_TRUE(wait_console(vm, "SGDONE", 150)) << vm << ":\n" << console(vm);
  figure("boot, checks and power off of three guests at once", seconds_since(t0) * 1000, "ms");

  // The guests' own words, for the record in the test log.
  for (const auto& vm : {u, s, tr}) std::cout << "---- console of " << vm << " ----\n" << console(vm);
  auto cu = checks_of(console(u));
  for (const auto* c : {&cu}) {
    EXPECT_EQ(std::count_if(c->begin(), c->end(),
                            [](const auto& kv) { return kv.first.rfind("ready ", 0) == 0 && kv.second == "ok"; }),
              2);  // both gateways
  }
  EXPECT_EQ(cu["ping 203.0.113.2"], "ok");    // its client, IPv4
  EXPECT_EQ(cu["ping 2001:db8:c::2"], "ok");  // and IPv6
  EXPECT_EQ(cu["tcp 203.0.113.2:8080"].substr(0, 2), "ok");
  EXPECT_EQ(cu["udp 203.0.113.2:9999"], "ok");   // the port-unreachable came back
  EXPECT_EQ(cu["tcp 203.0.113.34:80"], "fail");  // anything else: dropped
  EXPECT_EQ(cu["ping 2001:db8:e::2"], "fail");
  EXPECT_EQ(cu["tcp 203.0.113.18:8080"], "fail");  // a node without authcert
  EXPECT_EQ(cu["tcp 10.1.2.3:80"], "fail");        // reserved
  EXPECT_EQ(cu["spoof 198.51.100.99->203.0.113.2:9999"], "sent count=3");

  auto cs = checks_of(console(s));
  EXPECT_EQ(cs["tcp 203.0.113.34:80"].substr(0, 2), "ok");  // its allowlist
  EXPECT_EQ(cs["tcp [2001:db8:e::2]:80"].substr(0, 2), "ok");
  EXPECT_EQ(cs["ping 203.0.113.18"], "ok");  // echo-request anywhere
  EXPECT_EQ(cs["udp 203.0.113.34:5353"], "ok");
  EXPECT_EQ(cs["tcp 203.0.113.34:8080"], "fail");  // not on it
  EXPECT_EQ(cs["tcp 203.0.113.18:80"], "fail");
  EXPECT_EQ(cs["udp 203.0.113.34:5354"], "fail");
  EXPECT_EQ(cs["tcp 192.168.1.1:80"], "fail");  // reserved
  EXPECT_EQ(cs["spoof 2001:db8:5:ff::9->2001:db8:e::2:5353"], "sent count=3");

  auto ct = checks_of(console(tr));
  EXPECT_EQ(ct["tcp 203.0.113.34:8080"].substr(0, 2), "ok");  // anywhere
  EXPECT_EQ(ct["tcp [2001:db8:a::2]:9999"].substr(0, 2), "ok");
  EXPECT_EQ(ct["ping 2001:db8:e::2"], "ok");
  EXPECT_EQ(ct["ping 10.1.2.3"], "fail");  // but never the guardrails: reserved,
  EXPECT_EQ(ct["ping 100.64.1.1"], "fail");
  EXPECT_EQ(ct["ping fc00::1"], "fail");
  EXPECT_EQ(ct["ping 203.0.113.200"], "fail");   // the admin's block list,
  EXPECT_EQ(ct["tcp 203.0.113.34:25"], "fail");  // the AUP's closed ports
  EXPECT_EQ(ct["spoof 198.51.100.99->203.0.113.34:7777"], "sent count=3");

  // No spoofed packet arrived anywhere.
  for (const auto& ns : {t.client.ns, t.internet.ns}) {
    auto r = t.in_ns(ns, {"nft", "list", "counter", "inet", "e2e", "spoofed"});
    EXPECT_NE(r.out.find("packets 0 "), std::string::npos) << ns << ": " << r.out;
  }

  // Each guest powered off by itself: released, nothing left behind.
  for (const auto& vm : {u, s, tr}) {
    EXPECT_TRUE(wait_until([&] { return !vm_active(vm); }, 30)) << vm << " was not released after powering off";
    EXPECT_TRUE(released_with(vm, "guest powered off")) << vm;
    expect_nothing_left(vm);
  }
}

TEST_F(RealVmTest, AuthcertOpensAHoleForARunningGuestAndReleaseLeavesNothing) {
  auto& t = *topo_;
  std::string vm = allocate(untrusted_key_, "hole");
  ASSERT_FALSE(vm.empty());
  ASSERT_TRUE(wait_console(vm, "SGCHECK tcp 203.0.113.18:8080")) << console(vm);
  EXPECT_EQ(checks_of(console(vm))["tcp 203.0.113.18:8080"], "fail");
  // The guest now waits at its barrier. nodeA's owner signs an authcert for
  // the client's key; the client submits it; then the barrier opens.
  std::string grant = t.dir() + "/grant.pem";
  auto signed_cert = run({surrogatectl_bin(), "authcert", "sign", "--node-key", pki_ + "/node.key", "--node-cert",
                          pki_ + "/node.pem", "--user-key", untrusted_key_ + ".pub", "--to", t.nodeA.v4 + ":8080",
                          "--proto", "tcp", "--valid-for", "10m", "-o", grant});
  ASSERT_EQ(signed_cert.code, 0) << signed_cert.err;
  auto add = t.ctl_json({"authcert", "submit", vm, grant}, untrusted_key_);
  ASSERT_TRUE(add.contains("id")) << add.dump();
  Listener barrier(t.client.ns, 9001);
  ASSERT_TRUE(barrier.ok());
  ASSERT_TRUE(wait_console(vm, "SGCHECK tcp 203.0.113.18:8081")) << console(vm);
  auto c = checks_of(console(vm));
  EXPECT_EQ(c["wait 203.0.113.2:9001"], "ok");
  EXPECT_EQ(c["tcp 203.0.113.18:8080#2"].substr(0, 2), "ok");  // through the hole
  EXPECT_EQ(c["tcp 203.0.113.18:8081"], "fail");               // only the granted port
  // The flow log lists the guest's flows, the one through the hole with its authcert.
  bool logged = false;
  for (int i = 0; i < 60 && !logged; ++i) {
    auto flows = t.ctl_json({"flows", "--vm", vm, "--to", t.nodeA.v4});
    for (const auto& f : flows) {
      if (f.value("authcert_id", "") == add.value("id", "")) logged = true;
    }
    if (!logged) std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  EXPECT_TRUE(logged) << "no flow to nodeA attributed to the authcert";
  EXPECT_FALSE(t.ctl_json({"flows", "--vm", vm, "--to", t.client.v4}).empty()) << "no flow to the client logged";

  auto t0 = Clock::now();
  auto rel = t.ctl({"release", vm});
  double release_s = seconds_since(t0);
  EXPECT_EQ(rel.code, 0) << rel.err;
  figure("release (surrogatectl, wall)", release_s * 1000, "ms");
  figure("release: libvirt+QEMU share", libvirt_ms("destroyed and undefined", vm), "ms");
  EXPECT_FALSE(vm_active(vm));
  expect_nothing_left(vm);
}

TEST_F(RealVmTest, GuestsStayFilteredWhileTheDaemonIsDownAndAreAdoptedAgain) {
  auto& t = *topo_;
  std::string vm = allocate(untrusted_key_, "hold");
  ASSERT_FALSE(vm.empty());
  ASSERT_TRUE(wait_console(vm, "SGCHECK tcp 203.0.113.34:80")) << console(vm);
  // The guest knocks on the internet every few hundred ms from now on.
  t.reset_sensors();
  t.daemon().kill9();
  std::this_thread::sleep_for(std::chrono::seconds(3));
  EXPECT_EQ(t.sensor(t.internet.ns), 0U) << "a packet got out while the daemon was down";
  EXPECT_EQ(t.in_ns(t.host_ns(), {"ip", "link", "show", "dev", vm}).code, 0) << "the guest's tap vanished";
  ASSERT_TRUE(t.daemon().start()) << t.daemon().log();
  EXPECT_TRUE(vm_active(vm));
  EXPECT_NE(t.daemon().log().find("1 adopted"), std::string::npos) << t.daemon().log();
  std::this_thread::sleep_for(std::chrono::seconds(1));
  Listener barrier(t.client.ns, 9003);
  ASSERT_TRUE(barrier.ok());
  ASSERT_TRUE(wait_console(vm, "SGDONE")) << console(vm);
  auto c = checks_of(console(vm));
  std::smatch m;
  std::string wait = c["wait 203.0.113.2:9003"];
  ASSERT_TRUE(std::regex_search(wait, m, std::regex("ok probes=([0-9]+) leaked=([0-9]+)"))) << wait;
  EXPECT_GT(std::stoi(m[1]), 3);
  EXPECT_EQ(m[2], "0") << "the guest reached a forbidden destination while the daemon was down or restarting";
  EXPECT_EQ(c["tcp 203.0.113.34:80#2"], "fail");
  EXPECT_EQ(c["ping 203.0.113.2"], "ok");
  EXPECT_EQ(t.sensor(t.internet.ns), 0U);
  // The restarted daemon follows the adopted guest's power-off too.
  EXPECT_TRUE(wait_until([&] { return !vm_active(vm); }, 30)) << vm << " was not released after powering off";
  EXPECT_TRUE(released_with(vm, "guest powered off"));
  expect_nothing_left(vm);
}

TEST_F(RealVmTest, LibvirtdRestartIsFollowedAndACrashedGuestIsReleased) {
  auto& t = *topo_;
  std::string vm = allocate(untrusted_key_, "crash");
  ASSERT_FALSE(vm.empty());
  ASSERT_TRUE(wait_console(vm, "SGCHECK ping 203.0.113.2")) << console(vm);
  // libvirtd goes away and comes back; QEMU and the guest keep running.
  libvirtd_->stop();
  ASSERT_TRUE(libvirtd_->start()) << libvirtd_->log();
  ASSERT_TRUE(wait_until(
      [&] {
        return t.daemon().log().find("libvirt connection to " + libvirtd_->uri() + " is back") != std::string::npos;
      },
      20))
      << t.daemon().log();
  EXPECT_TRUE(vm_active(vm));
  // The guest panics; the daemon hears it over the new connection.
  Listener barrier(t.client.ns, 9004);
  ASSERT_TRUE(barrier.ok());
  ASSERT_TRUE(wait_console(vm, "SGCRASH")) << console(vm);
  EXPECT_TRUE(wait_until([&] { return !vm_active(vm); }, 30)) << vm << " was not released after crashing";
  EXPECT_TRUE(released_with(vm, "guest crashed")) << t.daemon().log();
  expect_nothing_left(vm);
}

}  // namespace
}  // namespace sg::test
