// Tier 2: authcerts with real packets. A node owner makes a lab PKI and an
// authcert with the stock openssl CLI and surrogatectl; the client submits
// it; the untrusted VM reaches exactly what was granted, until expiry,
// revoke or release. Rejections change nothing and are audited.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "tests/integration/topology.h"

namespace sg::test {
namespace {

constexpr const char* kLabPolicy = R"(
[guardrails]
allow_reserved = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]
[levels.untrusted]
per_destination = { packets = 50, kbit = 1000 }
syn_per_second = 50
)";

class AuthcertTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto why = why_no_namespaces(); !why.empty()) GTEST_SKIP() << why;
    if (run({"openssl", "version"}).code != 0) GTEST_SKIP() << "needs the openssl command (apt-get install openssl)";
    topo_ = std::make_unique<Topology>("sga" + std::to_string(getpid()));
    pki_ = topo_->dir() + "/pki";
    make_lab_pki();
    topo_->extra_config = "[pki]\nca_files = [\"" + pki_ + "/ca.pem\"]\ncrl_files = [\"" + pki_ + "/crl.pem\"]\n";
    alice_ = topo_->keygen("alice");
    bob_ = topo_->keygen("bob");
    ASSERT_TRUE(topo_->start(kLabPolicy)) << topo_->daemon().log();
    vm_ = topo_->ctl_json({"allocate", "--client", topo_->client.v4}, alice_).value("name", "");
    ASSERT_FALSE(vm_.empty());
  }
  void TearDown() override {
    if (HasFailure() && topo_) std::cerr << "---- daemon log ----\n" << topo_->daemon().log();
    topo_.reset();
  }

  void make_lab_pki() {
    auto r = test::make_lab_pki(pki_);
    ASSERT_EQ(r.code, 0) << r.err;
  }
  // The node owner signs an authcert for `user_key`'s VMs.
  std::string sign(const std::string& user_key, const std::string& to, const std::string& proto,
                   const std::string& valid_for, const std::string& name) {
    std::string out = topo_->dir() + "/" + name + ".pem";
    auto r = run({surrogatectl_bin(), "authcert", "sign", "--node-key", pki_ + "/node.key", "--node-cert",
                  pki_ + "/node.pem", "--user-key", user_key + ".pub", "--to", to, "--proto", proto, "--valid-for",
                  valid_for, "-o", out});
    EXPECT_EQ(r.code, 0) << r.err;
    return out;
  }

  std::unique_ptr<Topology> topo_;
  std::string pki_, alice_, bob_, vm_;
};

TEST_F(AuthcertTest, SubmitOpensExactlyTheGrantAndRevokeClosesIt) {
  auto& t = *topo_;
  EXPECT_FALSE(t.tcp_reaches(vm_, t.nodeA.v4, 8080));
  std::string cert = sign(alice_, t.nodeA.v4 + ":8080", "tcp", "1h", "grant");
  // The node owner can check it with surrogatectl alone.
  auto check = run({surrogatectl_bin(), "authcert", "verify", cert, "--ca", pki_ + "/ca.pem", "--user-key", alice_});
  EXPECT_EQ(check.code, 0) << check.err;
  auto sub = t.ctl_json({"authcert", "submit", vm_, cert}, alice_);
  ASSERT_TRUE(sub.contains("id")) << sub.dump();
  EXPECT_TRUE(t.tcp_reaches(vm_, t.nodeA.v4, 8080));
  EXPECT_FALSE(t.tcp_reaches(vm_, t.nodeA.v4, 8081));
  EXPECT_FALSE(t.ping(vm_, t.nodeA.v4));
  auto list = t.ctl_json({"authcert", "list", vm_}, alice_);
  ASSERT_EQ(list.size(), 1U) << list.dump();
  EXPECT_EQ(list[0]["id"], sub["id"]);
  // Revoked: closed at once, and refused if submitted again (no replay).
  ASSERT_EQ(t.ctl({"authcert", "revoke", sub["id"]}, alice_).code, 0);
  EXPECT_FALSE(t.tcp_reaches(vm_, t.nodeA.v4, 8080));
  auto again = t.ctl({"authcert", "submit", vm_, cert}, alice_);
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.err.find("revoked"), std::string::npos) << again.err;
  EXPECT_FALSE(t.tcp_reaches(vm_, t.nodeA.v4, 8080));
}

TEST_F(AuthcertTest, RejectionsChangeNothingAndSayWhy) {
  auto& t = *topo_;
  std::string before = t.nft_list();
  // For another client's key.
  std::string for_bob = sign(bob_, t.nodeA.v4 + ":8080", "tcp", "1h", "bob");
  auto wrong_user = t.ctl({"authcert", "submit", vm_, for_bob}, alice_);
  EXPECT_NE(wrong_user.code, 0);
  EXPECT_NE(wrong_user.err.find("wrong_user"), std::string::npos) << wrong_user.err;
  // For an address the node's certificate does not cover.
  auto not_covered = run({surrogatectl_bin(), "authcert", "sign", "--node-key", pki_ + "/node.key", "--node-cert",
                          pki_ + "/node.pem", "--user-key", alice_ + ".pub", "--to", t.internet.v4 + ":80"});
  EXPECT_NE(not_covered.code, 0);
  // Tampered bytes.
  std::string good = sign(alice_, t.nodeA.v4 + ":8080", "tcp", "1h", "good");
  std::string text = read_file(good);
  text[text.size() / 2] = text[text.size() / 2] == 'A' ? 'B' : 'A';
  write_file(topo_->dir() + "/tampered.pem", text);
  auto tampered = t.ctl({"authcert", "submit", vm_, topo_->dir() + "/tampered.pem"}, alice_);
  EXPECT_NE(tampered.code, 0);
  // Garbage.
  write_file(topo_->dir() + "/junk.pem", "hello");
  EXPECT_NE(t.ctl({"authcert", "submit", vm_, topo_->dir() + "/junk.pem"}, alice_).code, 0);
  // Someone else submitting for alice's VM.
  auto other = t.ctl({"authcert", "submit", vm_, good}, bob_, 65534);
  EXPECT_EQ(other.code, 4);
  // Not one of these touched the ruleset; each rejection is audited.
  EXPECT_EQ(t.nft_list(), before);
  EXPECT_FALSE(t.tcp_reaches(vm_, t.nodeA.v4, 8080));
  auto audit = t.ctl({"audit", "list"});
  EXPECT_NE(audit.out.find("authcert-rejected"), std::string::npos) << audit.out;
  auto verify = t.ctl({"audit", "verify"});
  EXPECT_EQ(verify.code, 0) << verify.out << verify.err;
}

TEST_F(AuthcertTest, RevokedNodeCertificateIsRefused) {
  auto& t = *topo_;
  std::string cert = sign(alice_, t.nodeA.v4 + ":8080", "tcp", "1h", "grant");
  auto r = run({"bash", "-c",
                "cd " + pki_ +
                    " && openssl ca -config ca.cnf -revoke node.pem -keyfile ca.key -cert ca.pem 2>/dev/null && "
                    "openssl ca -config ca.cnf -gencrl -keyfile ca.key -cert ca.pem -out crl.pem 2>/dev/null"});
  ASSERT_EQ(r.code, 0) << r.err;
  // The owner installs the new CRL: a restart reloads it.
  t.daemon().stop();
  ASSERT_TRUE(t.daemon().start()) << t.daemon().log();
  auto sub = t.ctl({"authcert", "submit", vm_, cert}, alice_);
  EXPECT_NE(sub.code, 0);
  EXPECT_NE(sub.err.find("revoked"), std::string::npos) << sub.err;
  EXPECT_FALSE(t.tcp_reaches(vm_, t.nodeA.v4, 8080));
}

// An authcert in force whose signer is revoked afterwards: the owner
// installs the new CRL and reloads; the hole closes at once, and says why.
TEST_F(AuthcertTest, ReloadedCrlClosesTheHolesOfARevokedSigner) {
  auto& t = *topo_;
  std::string cert = sign(alice_, t.nodeA.v4 + ":8080", "tcp", "1h", "grant");
  auto sub = t.ctl_json({"authcert", "submit", vm_, cert}, alice_);
  ASSERT_TRUE(sub.contains("id")) << sub.dump();
  ASSERT_TRUE(t.tcp_reaches(vm_, t.nodeA.v4, 8080));
  // A reload with nothing revoked keeps it open.
  auto same = t.ctl({"policy", "reload"});
  ASSERT_EQ(same.code, 0) << same.err;
  EXPECT_EQ(same.out.find("closed:"), std::string::npos) << same.out;
  EXPECT_TRUE(t.tcp_reaches(vm_, t.nodeA.v4, 8080));
  auto r = run({"bash", "-c",
                "cd " + pki_ +
                    " && openssl ca -config ca.cnf -revoke node.pem -keyfile ca.key -cert ca.pem 2>/dev/null && "
                    "openssl ca -config ca.cnf -gencrl -keyfile ca.key -cert ca.pem -out crl.pem 2>/dev/null"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto reload = t.ctl({"policy", "reload"});
  ASSERT_EQ(reload.code, 0) << reload.err;
  EXPECT_NE(reload.out.find("closed: authcert " + sub["id"].get<std::string>()), std::string::npos) << reload.out;
  EXPECT_NE(reload.out.find("revoked"), std::string::npos) << reload.out;
  EXPECT_FALSE(t.tcp_reaches(vm_, t.nodeA.v4, 8080));
  EXPECT_TRUE(t.ctl_json({"authcert", "list", vm_}, alice_).empty());
  auto audit = t.ctl({"audit", "list"});
  EXPECT_NE(audit.out.find("authcert-closed"), std::string::npos) << audit.out;
  // A CRL file that does not load: refused, the previous set stays in force.
  write_file(pki_ + "/crl.pem", "not a CRL");
  auto bad = t.ctl({"policy", "reload"});
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.err.find("previous ones stay in force"), std::string::npos) << bad.err;
}

// The node owner renews an authcert before it ends: the new one takes the
// old one's place in the kernel (its expiry, not the old one's), with no
// moment without the hole.
TEST_F(AuthcertTest, RenewedAuthcertReplacesTheOldHole) {
  auto& t = *topo_;
  std::string first = sign(alice_, t.nodeA.v4 + ":8080", "tcp", "5s", "first");
  auto a = t.ctl_json({"authcert", "submit", vm_, first}, alice_);
  ASSERT_TRUE(a.contains("id")) << a.dump();
  std::string renewal = sign(alice_, t.nodeA.v4 + ":8080", "tcp", "1h", "renewal");
  auto b = t.ctl_json({"authcert", "submit", vm_, renewal}, alice_);
  ASSERT_TRUE(b.contains("id")) << b.dump();
  auto list = t.ctl_json({"authcert", "list", vm_}, alice_);
  ASSERT_EQ(list.size(), 1U) << list.dump();
  EXPECT_EQ(list[0]["id"], b["id"]);
  // Past the first one's end, the hole is still there.
  std::this_thread::sleep_for(std::chrono::milliseconds(5500));
  EXPECT_TRUE(t.tcp_reaches(vm_, t.nodeA.v4, 8080));
  EXPECT_FALSE(t.tcp_reaches(vm_, t.nodeA.v4, 8081));
}

TEST_F(AuthcertTest, HoleClosesInTheKernelAtTheAuthcertsEnd) {
  auto& t = *topo_;
  std::string cert = sign(alice_, t.nodeA.v4, "icmp", "3s", "short");
  ASSERT_EQ(t.ctl({"authcert", "submit", vm_, cert}, alice_).code, 0);
  EXPECT_TRUE(t.ping(vm_, t.nodeA.v4));
  t.daemon().kill9();  // the kernel closes it on time without the daemon
  std::this_thread::sleep_for(std::chrono::milliseconds(3500));
  EXPECT_FALSE(t.ping(vm_, t.nodeA.v4));
}

TEST_F(AuthcertTest, VirtualNodeCertificatesAreRevokedWhenTheVmEnds) {
  auto& t = *topo_;
  auto issued = t.ctl_json({"pki", "vm-cert", vm_}, alice_);
  ASSERT_TRUE(issued.contains("serial")) << issued.dump();
  std::string serial = issued["serial"];
  auto crl_before = t.ctl({"pki", "crl"});
  ASSERT_EQ(crl_before.code, 0);
  ASSERT_EQ(t.ctl({"release", vm_}, alice_).code, 0);
  write_file(topo_->dir() + "/host-crl.pem", t.ctl({"pki", "crl"}).out);
  auto text = run({"openssl", "crl", "-noout", "-text", "-in", topo_->dir() + "/host-crl.pem"});
  ASSERT_EQ(text.code, 0) << text.err;
  std::string upper = serial;
  for (auto& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  EXPECT_NE(text.out.find(upper.substr(upper.find_first_not_of('0'))), std::string::npos) << text.out;
}

}  // namespace
}  // namespace sg::test
