// The host's CA for its own VMs (virtual nodes).
#include "certs/host_ca.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <optional>
#include <set>

#include "tests/unit/certs/test_pki.h"

namespace sg::certs {
namespace {

using namespace sg::certs::testing;  // NOLINT(google-build-using-namespace)
using ::testing::HasSubstr;

class HostCaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pool = {*Prefix::parse("203.0.113.0/24"), *Prefix::parse("2001:db8:7::/48")};
    auto created = HostCa::create_or_load(dir.file("ca"), pool, kNow);
    ASSERT_TRUE(created.ok()) << created.error().describe();
    ca.emplace(std::move(*created));
  }

  VmCertRequest request(const std::string& address = "203.0.113.10") const {
    VmCertRequest r;
    r.vm_name = "sg3";
    r.addresses = {*IpAddress::parse(address)};
    r.lease_end = kNow + kDay;
    return r;
  }

  PkiStore store(std::int64_t now = kNow) const { return store_of({ca->cert_pem()}, {ca->crl_pem(now).value()}); }

  static AuthcertContent content(const std::string& destination) {
    AuthcertContent c;
    c.id = new_authcert_id();
    c.user_fingerprint = KeyPair::generate(KeyType::ed25519).value().public_key().fingerprint();
    c.destination = *Prefix::parse(destination);
    c.not_before = kNow;
    c.not_after = kNow + 3600;
    return c;
  }

  TempDir dir;
  std::vector<Prefix> pool;
  std::optional<HostCa> ca;
};

TEST_F(HostCaTest, CaCertificateIsConstrainedToThePoolAndKeyIsPrivate) {
  auto cert = cert_from_pem(ca->cert_pem(), "ca");
  ASSERT_TRUE(cert.ok());
  EXPECT_EQ(X509_check_ca(cert->get()), 1);
  auto sorted = pool;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(permitted_ip_subtrees(cert->get()), sorted);
  EXPECT_EQ(X509_get_key_usage(cert->get()), static_cast<std::uint32_t>(KU_KEY_CERT_SIGN | KU_CRL_SIGN));
  struct stat st {};
  ASSERT_EQ(::stat(dir.file("ca/ca.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600U);
  EXPECT_TRUE(std::filesystem::exists(ca->crl_path()));
}

TEST_F(HostCaTest, IssuedVmCertSignsAnAuthcertThatVerifies) {
  auto issued = ca->issue_vm_cert(request(), kNow);
  ASSERT_TRUE(issued.ok()) << issued.error().describe();
  EXPECT_FALSE(issued->key_pem.empty());
  auto pem = sign_authcert(content("203.0.113.10"), issued->key_pem, issued->cert_pem, {});
  ASSERT_TRUE(pem.ok()) << pem.error().describe();
  auto v = verify_authcert(*pem, store(), kNow + 60);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->signer_subject, "CN=sg3");
  EXPECT_EQ(v->signer_serial, issued->serial);
  // The host CA's CRL from the file works as well as the in-memory one.
  PkiConfig config;
  config.ca_files = {ca->cert_path()};
  config.crl_files = {ca->crl_path()};
  auto from_files = PkiStore::load(config);
  ASSERT_TRUE(from_files.ok()) << from_files.error().describe();
  EXPECT_TRUE(verify_authcert(*pem, *from_files, kNow + 60).ok());
}

TEST_F(HostCaTest, BringYourOwnPublicKey) {
  auto key = KeyPair::generate(KeyType::p256).value();
  auto r = request("2001:db8:7::10");
  r.addresses.push_back(*IpAddress::parse("203.0.113.10"));
  r.public_key_pem = key.public_key().pem();
  auto issued = ca->issue_vm_cert(r, kNow);
  ASSERT_TRUE(issued.ok()) << issued.error().describe();
  EXPECT_TRUE(issued->key_pem.empty());
  auto pem = sign_authcert(content("2001:db8:7::10"), key.private_pem(), issued->cert_pem, {});
  ASSERT_TRUE(pem.ok()) << pem.error().describe();
  EXPECT_TRUE(verify_authcert(*pem, store(), kNow).ok());
  auto bad = r;
  bad.public_key_pem = "not a key";
  EXPECT_FALSE(ca->issue_vm_cert(bad, kNow).ok());
}

TEST_F(HostCaTest, AddressOutsideThePoolIsRefusedAndForcingItFailsNameConstraints) {
  auto refused = ca->issue_vm_cert(request("198.51.100.7"), kNow);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.error().message, HasSubstr("outside the host CA's pool"));

  // Someone with the CA key who skips the pool check still gets nowhere.
  auto key = private_key_from_pem(dir.read("ca/ca.key"), "ca.key");
  ASSERT_TRUE(key.ok());
  auto ca_cert = cert_from_pem(ca->cert_pem(), "ca");
  ASSERT_TRUE(ca_cert.ok());
  TestCert host{std::move(*key), std::move(*ca_cert)};
  auto forced = make_cert("sg9", node_extensions("IP:198.51.100.7"), &host, kNow - 60, kNow + 3600);
  auto pem = raw_sign(format_authcert_content(content("198.51.100.7")), forced, {});
  auto v = verify_authcert(pem, store(), kNow);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(reason(v.error()), "name_constraints") << v.error().message;
}

TEST_F(HostCaTest, RevokedVmCertIsListedAndItsAuthcertsAreRejected) {
  auto issued = ca->issue_vm_cert(request(), kNow);
  ASSERT_TRUE(issued.ok());
  auto pem = sign_authcert(content("203.0.113.10"), issued->key_pem, issued->cert_pem, {});
  ASSERT_TRUE(pem.ok());
  ASSERT_TRUE(verify_authcert(*pem, store(), kNow).ok());

  ASSERT_TRUE(ca->revoke(issued->serial, kNow + 10).ok());
  ASSERT_TRUE(ca->revoke(issued->serial, kNow + 20).ok());  // idempotent
  ASSERT_EQ(ca->revoked().size(), 1U);
  auto crl = crls_from_pem(dir.read("ca/crl.pem"), "crl.pem");
  ASSERT_TRUE(crl.ok());
  STACK_OF(X509_REVOKED)* listed = X509_CRL_get_REVOKED(crl->front().get());
  ASSERT_EQ(sk_X509_REVOKED_num(listed), 1);
  EXPECT_EQ(serial_hex(X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(listed, 0))), issued->serial);
  EXPECT_EQ(asn1_time_to_unix(X509_CRL_get0_nextUpdate(crl->front().get())), kNow + 20 + 2 * kDay);

  auto v = verify_authcert(*pem, store(kNow + 30), kNow + 30);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(reason(v.error()), "revoked") << v.error().message;

  EXPECT_THAT(ca->revoke("abcdef", kNow).error().message, HasSubstr("never issued"));
  EXPECT_THAT(ca->revoke("xyz", kNow).error().message, HasSubstr("not a certificate serial"));

  // Revocations survive a restart.
  auto reloaded = HostCa::create_or_load(dir.file("ca"), pool, kNow + 60);
  ASSERT_TRUE(reloaded.ok()) << reloaded.error().describe();
  EXPECT_EQ(reloaded->revoked().size(), 1U);
  EXPECT_EQ(reloaded->issued().size(), 1U);
  EXPECT_EQ(reloaded->fingerprint(), ca->fingerprint());
}

TEST_F(HostCaTest, CertificateNeverOutlivesTheLeaseOrTheCa) {
  auto r = request();
  r.not_after = kNow + 30 * kDay;
  auto issued = ca->issue_vm_cert(r, kNow);
  ASSERT_TRUE(issued.ok());
  EXPECT_EQ(issued->not_after, r.lease_end);
  r.not_after = kNow + 3600;
  EXPECT_EQ(ca->issue_vm_cert(r, kNow)->not_after, kNow + 3600);
  EXPECT_LE(issued->not_before, kNow);

  r.lease_end = kNow + 20LL * 365 * kDay;
  r.not_after.reset();
  EXPECT_EQ(ca->issue_vm_cert(r, kNow)->not_after, ca->not_after());

  r.lease_end = kNow - 1;
  EXPECT_THAT(ca->issue_vm_cert(r, kNow).error().message, HasSubstr("already over"));
  // An authcert outliving the VM cert still closes with it.
  auto short_cert = ca->issue_vm_cert(request(), kNow);
  auto c = content("203.0.113.10");
  c.not_after = kNow + 7 * kDay;
  auto pem = sign_authcert(c, short_cert->key_pem, short_cert->cert_pem, {});
  auto v = verify_authcert(*pem, store(), kNow);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->effective_not_after, kNow + kDay);
  EXPECT_EQ(reason(verify_authcert(*pem, store(kNow + kDay), kNow + kDay).error()), "cert_expired");
}

TEST_F(HostCaTest, SerialsAreUniqueAndRecorded) {
  std::set<std::string> serials;
  for (int i = 0; i < 20; ++i) serials.insert(ca->issue_vm_cert(request(), kNow)->serial);
  EXPECT_EQ(serials.size(), 20U);
  EXPECT_EQ(ca->issued().size(), 20U);
  EXPECT_EQ(ca->issued().front().vm_name, "sg3");
}

TEST_F(HostCaTest, LoadRefusesAnotherPoolHalfACaAndAnExpiredCa) {
  auto other = HostCa::create_or_load(dir.file("ca"), {*Prefix::parse("192.0.2.0/24")}, kNow);
  ASSERT_FALSE(other.ok());
  EXPECT_THAT(other.error().message, HasSubstr("was made for the pool"));
  auto expired = HostCa::create_or_load(dir.file("ca"), pool, kNow + 11LL * 365 * kDay);
  ASSERT_FALSE(expired.ok());
  EXPECT_THAT(expired.error().message, HasSubstr("expired"));
  std::filesystem::remove(dir.file("ca/ca.pem"));
  auto half = HostCa::create_or_load(dir.file("ca"), pool, kNow);
  ASSERT_FALSE(half.ok());
  EXPECT_THAT(half.error().message, HasSubstr("incomplete"));
  EXPECT_FALSE(HostCa::create_or_load(dir.file("ca2"), {}, kNow).ok());
}

TEST_F(HostCaTest, BadRequests) {
  auto r = request();
  r.addresses.clear();
  EXPECT_THAT(ca->issue_vm_cert(r, kNow).error().message, HasSubstr("no address"));
  r = request();
  r.vm_name = "two words";
  EXPECT_FALSE(ca->issue_vm_cert(r, kNow).ok());
}

}  // namespace
}  // namespace sg::certs
