// Loading trust anchors and CRLs from the files surrogated.toml names.
#include "certs/pki.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/unit/certs/test_pki.h"

namespace sg::certs {
namespace {

using namespace sg::certs::testing;  // NOLINT(google-build-using-namespace)
using ::testing::HasSubstr;

TEST(PkiStore, LoadsSeveralCertsPerFileAndCrls) {
  TempDir dir;
  auto root1 = make_cert("Root One", ca_extensions(), nullptr);
  auto root2 = make_cert("Root Two", ca_extensions(), nullptr);
  PkiConfig config;
  config.ca_files = {dir.write("roots.pem", root1.pem() + root2.pem())};
  config.crl_files = {dir.write("crls.pem", crl_of(root1, {}) + crl_of(root2, {}))};
  auto pki = PkiStore::load(config);
  ASSERT_TRUE(pki.ok()) << pki.error().describe();
  ASSERT_EQ(pki->anchors().size(), 2U);
  EXPECT_EQ(pki->anchors()[0].subject, "CN=Root One");
  EXPECT_EQ(pki->anchors()[1].fingerprint, cert_fingerprint(root2.get()));
  EXPECT_EQ(pki->anchors()[0].origin, config.ca_files[0]);
  EXPECT_EQ(pki->crl_count(), 2U);
  EXPECT_TRUE(pki->revocation_checked());
}

TEST(PkiStore, ReloadSeesNewFilesAndKeepsTheOldStoreOnError) {
  TempDir dir;
  auto root = make_cert("Root", ca_extensions(), nullptr);
  PkiConfig config;
  config.ca_files = {dir.write("roots.pem", root.pem())};
  config.crl_files = {dir.write("crl.pem", crl_of(root, {}))};
  auto pki = PkiStore::load(config);
  ASSERT_TRUE(pki.ok());
  dir.write("crl.pem", crl_of(root, {"1234"}) + crl_of(root, {"5678"}));
  auto again = pki->reload();
  ASSERT_TRUE(again.ok()) << again.error().describe();
  EXPECT_EQ(again->crl_count(), 2U);
  dir.write("crl.pem", "garbage");
  auto broken = pki->reload();
  ASSERT_FALSE(broken.ok());
  EXPECT_THAT(broken.error().message, HasSubstr("crl.pem: no PEM CRL found"));
  EXPECT_EQ(pki->crl_count(), 1U);  // the caller keeps using the store it has
}

TEST(PkiStore, ErrorsNameTheFileAndTheFix) {
  TempDir dir;
  PkiConfig missing;
  missing.ca_files = {dir.file("nope.pem")};
  auto m = PkiStore::load(missing);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.error().describe(), HasSubstr("nope.pem"));
  EXPECT_THAT(m.error().describe(), HasSubstr("surrogated.toml"));

  auto root = make_cert("Root", ca_extensions(), nullptr);
  auto leaf = make_cert("node-a", node_extensions("IP:198.51.100.7"), &root);
  PkiConfig leaf_anchor;
  leaf_anchor.ca_files = {dir.write("leaf.pem", leaf.pem())};
  auto l = PkiStore::load(leaf_anchor);
  ASSERT_FALSE(l.ok());
  EXPECT_THAT(l.error().message, HasSubstr("not a CA certificate"));

  PkiConfig not_pem;
  not_pem.ca_files = {dir.write("junk.pem", "hello")};
  EXPECT_THAT(PkiStore::load(not_pem).error().message, HasSubstr("BEGIN CERTIFICATE"));
}

TEST(PkiStore, EmptyStoreTrustsNothing) {
  PkiStore pki;
  EXPECT_TRUE(pki.anchors().empty());
  EXPECT_FALSE(pki.revocation_checked());
  EXPECT_NE(pki.x509_store(), nullptr);
}

TEST(X509Helpers, AddressCoverage) {
  auto a = [](const char* s) { return *IpAddress::parse(s); };
  std::vector<IpAddress> four = {a("198.51.100.4"), a("198.51.100.5"), a("198.51.100.6"), a("198.51.100.7")};
  EXPECT_TRUE(addresses_cover(four, *Prefix::parse("198.51.100.6")));
  EXPECT_TRUE(addresses_cover(four, *Prefix::parse("198.51.100.4/30")));
  EXPECT_FALSE(addresses_cover(four, *Prefix::parse("198.51.100.0/29")));
  EXPECT_FALSE(addresses_cover(four, *Prefix::parse("198.51.100.8")));
  EXPECT_FALSE(addresses_cover({}, *Prefix::parse("0.0.0.0/0")));
  EXPECT_FALSE(addresses_cover(four, *Prefix::parse("::ffff:198.51.100.4/128")));
}

TEST(X509Helpers, NameConstraintsRoundTrip) {
  std::vector<Prefix> pool = {*Prefix::parse("203.0.113.0/24"), *Prefix::parse("2001:db8:5::/48")};
  auto ca = make_cert("CA", ca_extensions(name_constraints_config(pool)), nullptr);
  EXPECT_EQ(permitted_ip_subtrees(ca.get()), pool);
  EXPECT_EQ(random_serial_hex().size(), 32U);
}

}  // namespace
}  // namespace sg::certs
