// Tier 2: surrogated on libvirt's test:///default driver in a private
// network namespace, driven by surrogatectl as a host owner and two
// clients would drive it.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/integration/harness.h"

namespace sg::test {
namespace {

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto why = why_no_namespaces(); !why.empty()) GTEST_SKIP() << why;
    tag_ = "sgt" + std::to_string(getpid());
    dir_ = make_temp_dir();
    host_ = std::make_unique<Netns>(tag_ + "-host");
    socket_ = dir_ + "/control.sock";
    write_config(8);
    daemon_ = std::make_unique<DaemonProcess>(host_->name(), dir_ + "/surrogated.toml", socket_, dir_ + "/daemon.log");
    ASSERT_TRUE(daemon_->start()) << daemon_->log();
    alice_ = keygen("alice");
    bob_ = keygen("bob");
  }

  void TearDown() override {
    if (daemon_) daemon_->stop();
    if (HasFailure() && daemon_) std::cerr << "---- daemon log ----\n" << daemon_->log();
    daemon_.reset();
    if (!tag_.empty()) remove_netns_with_prefix(tag_);
    host_.reset();
    if (!dir_.empty()) remove_tree(dir_);
  }

  void write_config(int max_vms, const std::string& extra_template = "") {
    write_file(dir_ + "/trust-policy.toml", "");  // the safe defaults
    write_file(dir_ + "/surrogated.toml",
               "[daemon]\nstate_dir = \"" + dir_ + "/state\"\nsocket = \"" + socket_ +
                   "\"\nlog_level = \"debug\"\ntrust_policy = \"" + dir_ +
                   "/trust-policy.toml\"\n"
                   "[libvirt]\nuri = \"test:///default\"\nsimulate_guest_network = true\n"
                   "guest_netns_prefix = \"" +
                   tag_ +
                   "-g-\"\n"
                   "[pool]\nipv4 = \"198.51.100.0/24\"\nipv6 = \"2001:db8:5::/56\"\nmax_vms = " +
                   std::to_string(max_vms) + "\n[templates.small]\nmax_lifetime = \"2h\"\ndefault_lifetime = \"1h\"\n" +
                   extra_template);
  }

  std::string keygen(const std::string& who) {
    std::string path = dir_ + "/" + who + ".key";
    auto r = run({surrogatectl_bin(), "keygen", path});
    EXPECT_EQ(r.code, 0) << r.err;
    chmod(path.c_str(), 0644);  // the unprivileged-user test reads it
    return path;
  }

  RunResult ctl(std::vector<std::string> args, const std::string& key = "", uid_t uid = 0) {
    std::vector<std::string> argv = {surrogatectl_bin(), "--socket", socket_};
    if (!key.empty()) {
      argv.push_back("--key");
      argv.push_back(key);
    }
    argv.insert(argv.end(), args.begin(), args.end());
    RunOptions o;
    o.uid = uid;
    return run(argv, o);
  }

  nlohmann::json ctl_json(std::vector<std::string> args, const std::string& key = "") {
    args.insert(args.begin(), "--json");
    auto r = ctl(args, key);
    EXPECT_EQ(r.code, 0) << r.err;
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.out;
    return j;
  }

  std::string guest_ns(const std::string& vm) const { return tag_ + "-g-" + vm; }

  std::string tag_, dir_, socket_, alice_, bob_;
  std::unique_ptr<Netns> host_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(DaemonTest, TwoClientsAllocateListAndRelease) {
  auto a = ctl_json({"allocate", "--title", "measurement", "--contact", "alice@example.org"}, alice_);
  auto b = ctl_json({"allocate", "--lifetime", "30m"}, bob_);
  EXPECT_NE(a["name"], b["name"]);
  EXPECT_NE(a["ipv4"], b["ipv4"]);
  EXPECT_NE(a["ipv6"], b["ipv6"]);
  EXPECT_NE(a["mac"], b["mac"]);
  EXPECT_EQ(a["state"], "running");
  EXPECT_EQ(a["title"], "measurement");
  EXPECT_EQ(a["contact"], "alice@example.org");
  EXPECT_LE(b["remaining_s"].get<int>(), 1800);

  // The admin (root) sees both; each client sees only its own.
  EXPECT_EQ(ctl_json({"list"}).size(), 2U);
  auto mine = ctl_json({"list"}, bob_);  // root with a key: still all...
  EXPECT_EQ(mine.size(), 2U);
  auto only_bob = ctl_json({"list", "--mine"}, bob_);
  ASSERT_EQ(only_bob.size(), 1U);
  EXPECT_EQ(only_bob[0]["name"], b["name"]);

  // Human output names both VMs.
  auto human = ctl({"list"});
  EXPECT_NE(human.out.find(a["name"].get<std::string>()), std::string::npos);
  EXPECT_NE(human.out.find("TRUST"), std::string::npos);

  // The simulated guest is plumbed like a real one: the tap is up with
  // carrier on the host side and the guest reaches its gateway.
  for (const auto& vm : {a, b}) {
    auto link = host_->exec({"ip", "-br", "link", "show", vm["tap"].get<std::string>()});
    EXPECT_NE(link.out.find(" UP "), std::string::npos) << link.out;
  }
  auto ping = run({"ping", "-c", "1", "-W", "2", a["gateway_ipv4"].get<std::string>()},
                  RunOptions{.netns = guest_ns(a["name"])});
  EXPECT_EQ(ping.code, 0) << ping.out << ping.err;
  auto ping6 = run({"ping", "-6", "-c", "1", "-W", "2", a["gateway_ipv6"].get<std::string>()},
                   RunOptions{.netns = guest_ns(a["name"])});
  EXPECT_EQ(ping6.code, 0) << ping6.out << ping6.err;

  // Owners release their own VMs; nothing of them is left.
  EXPECT_EQ(ctl({"release", a["name"]}, alice_).code, 0);
  EXPECT_EQ(ctl({"release", b["name"]}, bob_).code, 0);
  EXPECT_EQ(ctl_json({"list"}).size(), 0U);
  EXPECT_FALSE(netns_exists(guest_ns(a["name"])));
  auto links = host_->exec({"ip", "-br", "link"});
  EXPECT_EQ(links.out.find(a["name"].get<std::string>()), std::string::npos) << links.out;
}

TEST_F(DaemonTest, AClientCannotReleaseOrSeeAnotherClientsVm) {
  auto a = ctl_json({"allocate"}, alice_);
  std::string name = a["name"];
  // As an unprivileged user, so admin rights from the socket do not apply.
  auto r = ctl({"release", name}, bob_, 65534);
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_NE(r.err.find("no VM named"), std::string::npos) << r.err;
  auto s = ctl({"show", name}, bob_, 65534);
  EXPECT_EQ(s.code, 4);
  // Still there, still alice's.
  auto show = ctl_json({"show", name}, alice_);
  EXPECT_EQ(show["state"], "running");
  // An unprivileged user without a key cannot list anything.
  auto l = ctl({"list"}, "", 65534);
  EXPECT_NE(l.code, 0);
  EXPECT_NE(l.err.find("--key"), std::string::npos) << l.err;
  // With a key, only their own (none).
  auto lb = ctl({"--json", "list"}, bob_, 65534);
  EXPECT_EQ(lb.code, 0) << lb.err;
  EXPECT_EQ(nlohmann::json::parse(lb.out).size(), 0U);
  // The owner, unprivileged, may release it.
  EXPECT_EQ(ctl({"release", name}, alice_, 65534).code, 0);
}

TEST_F(DaemonTest, AdminMayReleaseAnyVm) {
  auto a = ctl_json({"allocate"}, alice_);
  auto r = ctl({"release", a["name"]});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("released by admin"), std::string::npos) << r.out;
}

TEST_F(DaemonTest, LifetimeExpiryReleasesTheVm) {
  auto a = ctl_json({"allocate", "--lifetime", "2s"}, alice_);
  std::string name = a["name"];
  bool gone = false;
  for (int i = 0; i < 100 && !gone; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    gone = ctl_json({"list"}).empty();
  }
  EXPECT_TRUE(gone) << "VM did not expire";
  EXPECT_FALSE(netns_exists(guest_ns(name)));
  EXPECT_NE(daemon_->log().find(name + " expired"), std::string::npos);
}

TEST_F(DaemonTest, LifetimeBeyondTheTemplateMaximumIsRefused) {
  auto r = ctl({"allocate", "--lifetime", "3h"}, alice_);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("at most 2h"), std::string::npos) << r.err;
  auto t = ctl({"allocate", "--template", "huge"}, alice_);
  EXPECT_NE(t.code, 0);
  EXPECT_NE(t.err.find("this host offers: small"), std::string::npos) << t.err;
}

TEST_F(DaemonTest, RestartAdoptsLiveGuestsAndReleasesVanishedOnes) {
  auto a = ctl_json({"allocate"}, alice_);
  auto b = ctl_json({"allocate"}, bob_);
  daemon_->kill9();
  // While the daemon is down, b's guest dies.
  run({"ip", "netns", "del", guest_ns(b["name"])});
  ASSERT_TRUE(daemon_->start()) << daemon_->log();
  auto list = ctl_json({"list"});
  ASSERT_EQ(list.size(), 1U) << list.dump();
  EXPECT_EQ(list[0]["name"], a["name"]);
  EXPECT_EQ(list[0]["ipv4"], a["ipv4"]);
  std::string log = daemon_->log();
  EXPECT_NE(log.find(b["name"].get<std::string>() + " (surrogate-" + b["name"].get<std::string>() + ") no longer runs"),
            std::string::npos)
      << log;
  // The test driver's own sample domain is reported, not touched.
  EXPECT_NE(log.find("libvirt domain 'test' is not managed by surrogated"), std::string::npos);
  // The adopted guest still works.
  auto ping = run({"ping", "-c", "1", "-W", "2", a["gateway_ipv4"].get<std::string>()},
                  RunOptions{.netns = guest_ns(a["name"])});
  EXPECT_EQ(ping.code, 0);
  // b's address slot is free again, a's is not reused.
  auto c = ctl_json({"allocate"}, bob_);
  EXPECT_NE(c["ipv4"], a["ipv4"]);
  EXPECT_GT(c["id"].get<int>(), b["id"].get<int>());
}

TEST_F(DaemonTest, PoolExhaustionIsAClearError) {
  daemon_->stop();
  write_config(2);
  ASSERT_TRUE(daemon_->start());
  EXPECT_EQ(ctl({"allocate"}, alice_).code, 0);
  EXPECT_EQ(ctl({"allocate"}, alice_).code, 0);
  auto r = ctl({"allocate"}, bob_);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("address pool exhausted"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("[exhausted]"), std::string::npos) << r.err;
}

TEST_F(DaemonTest, CliErrorsAreOneLineWithAdvice) {
  auto nokey = ctl({"allocate"});
  EXPECT_EQ(nokey.code, 2);
  EXPECT_NE(nokey.err.find("--key FILE"), std::string::npos);
  auto badkey = ctl({"allocate"}, "/nonexistent.key");
  EXPECT_EQ(badkey.code, 2);
  EXPECT_NE(badkey.err.find("/nonexistent.key"), std::string::npos);
  write_file(dir_ + "/junk.key", "not a key");
  auto junk = ctl({"allocate"}, dir_ + "/junk.key");
  EXPECT_EQ(junk.code, 2);
  EXPECT_NE(junk.err.find("surrogatectl keygen"), std::string::npos);
  auto unknown = ctl({"show", "sg999"});
  EXPECT_EQ(unknown.code, 4);
  auto nodaemon = run({surrogatectl_bin(), "--socket", dir_ + "/nothing.sock", "status"});
  EXPECT_EQ(nodaemon.code, 3);
  EXPECT_NE(nodaemon.err.find("is it running?"), std::string::npos);
  auto badflag = ctl({"allocate", "--bogus"}, alice_);
  EXPECT_NE(badflag.code, 0);
  auto badlife = ctl({"allocate", "--lifetime", "soon"}, alice_);
  EXPECT_EQ(badlife.code, 2);
  EXPECT_NE(badlife.err.find("--lifetime"), std::string::npos);
}

// Raw bytes on the control socket: malformed input gets a clear error and
// the daemon keeps serving.
nlohmann::json raw_exchange(const std::string& socket, const std::string& data) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::copy(socket.begin(), socket.end(), addr.sun_path);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return {};
  for (size_t off = 0; off < data.size();) {
    ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  shutdown(fd, SHUT_WR);
  std::string in;
  char buf[4096];
  ssize_t n = 0;
  while ((n = read(fd, buf, sizeof buf)) > 0) in.append(buf, static_cast<size_t>(n));
  close(fd);
  return nlohmann::json::parse(in, nullptr, false);
}

TEST_F(DaemonTest, MalformedRequestsAreRefusedAndTheDaemonKeepsServing) {
  auto garbage = raw_exchange(socket_, "{this is not json\n");
  EXPECT_EQ(garbage.value("code", ""), "bad_request") << garbage.dump();
  auto unknown = raw_exchange(socket_, R"({"op":"format-disk"})"
                                       "\n");
  EXPECT_EQ(unknown.value("code", ""), "bad_request");
  EXPECT_NE(unknown.value("error", "").find("unknown operation"), std::string::npos);
  auto missing = raw_exchange(socket_, R"({"op":"release","args":{}})"
                                       "\n");
  EXPECT_EQ(missing.value("code", ""), "bad_request");
  auto wrong_type = raw_exchange(socket_, R"({"op":"release","args":{"vm":5}})"
                                          "\n");
  EXPECT_EQ(wrong_type.value("code", ""), "bad_request") << wrong_type.dump();
  auto unsigned_alloc = raw_exchange(socket_, R"({"op":"allocate"})"
                                              "\n");
  EXPECT_EQ(unsigned_alloc.value("code", ""), "unauthorized");
  auto forged =
      raw_exchange(socket_, R"({"op":"allocate","auth":{"key":"x","ts":1,"nonce":"0123456789abcdef","sig":"AAAA"}})"
                            "\n");
  EXPECT_EQ(forged.value("code", ""), "unauthorized");
  auto huge = raw_exchange(socket_, std::string(300 * 1024, 'x'));
  EXPECT_EQ(huge.value("code", ""), "bad_request");
  EXPECT_NE(huge.value("error", "").find("larger than"), std::string::npos);
  EXPECT_EQ(ctl({"status"}).code, 0);
}

}  // namespace
}  // namespace sg::test
