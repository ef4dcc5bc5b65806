// The chain-verdict cache of the PkiStore (certs/chain_cache.h): each test
// here would fail if a cached verdict were served where a fresh
// X509_verify_cert would refuse, or if the cache grew without bound.
#include "certs/chain_cache.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>

#include "certs/authcert.h"
#include "tests/unit/certs/test_pki.h"

namespace sg::certs {
namespace {

using namespace sg::certs::testing;  // NOLINT(google-build-using-namespace)
using ::testing::HasSubstr;

const std::string kConstraints = name_constraints_config({*Prefix::parse("198.51.100.0/24")});

// A certificate for an existing key (a CA re-issued with new dates keeps its key and name).
TestCert cert_with_key(const std::string& cn, std::vector<std::pair<int, std::string>> extensions,
                       const TestCert& issuer, EVP_PKEY* key, std::int64_t not_before, std::int64_t not_after) {
  TestCert t;
  EVP_PKEY_up_ref(key);
  t.key = ossl::PKey(key);
  CertSpec spec;
  spec.common_name = cn;
  spec.not_before = not_before;
  spec.not_after = not_after;
  spec.extensions = std::move(extensions);
  auto cert = build_cert(spec, t.key.get(), issuer.get(), issuer.key.get());
  EXPECT_TRUE(cert.ok()) << cert.error().describe();
  if (cert.ok()) t.cert = std::move(*cert);
  return t;
}

PkiStore store_with(std::vector<std::string> anchors, std::vector<std::string> crls, std::size_t entries,
                    CrlMode mode = CrlMode::require_all, std::size_t der_bytes = ChainCacheLimits{}.max_der_bytes) {
  PkiConfig config;
  config.extra_ca_pems = std::move(anchors);
  config.extra_crl_pems = std::move(crls);
  config.crl_mode = mode;
  config.chain_cache_entries = entries;
  config.chain_cache_der_bytes = der_bytes;
  auto store = PkiStore::load(config);
  EXPECT_TRUE(store.ok()) << store.error().describe();
  return store.ok() ? std::move(*store) : PkiStore();
}

class ChainCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root = make_cert("Cache Root CA", ca_extensions(), nullptr, kNow - 365 * kDay, kNow + 3650 * kDay);
    inter = make_cert("Cache Intermediate CA", ca_extensions(kConstraints, "0"), &root);
    node = make_cert("node-a", node_extensions("IP:198.51.100.7"), &inter);
    user = KeyPair::generate(KeyType::ed25519).value().public_key().fingerprint();
    pki = store_with({root.pem()}, {crl_of(root, {}), crl_of(inter, {})}, 1024);
  }

  AuthcertContent content(const std::string& destination = "198.51.100.7") const {
    AuthcertContent c;
    c.id = new_authcert_id();
    c.user_fingerprint = user;
    c.destination = *Prefix::parse(destination);
    c.protocols = {Protocol::tcp};
    c.ports = {trust::PortRange{443, 443}};
    c.not_before = kNow - 3600;
    c.not_after = kNow + 30 * kDay;
    return c;
  }

  std::string signed_by(const TestCert& signer, const std::vector<const TestCert*>& chain,
                        const AuthcertContent& c) const {
    return raw_sign(format_authcert_content(c), signer, chain);
  }
  std::string good() const { return signed_by(node, {&inter}, content()); }

  // The reason word ("ok" when accepted), with the chain expiry when accepted.
  std::string check(const std::string& bytes, const PkiStore& store, std::int64_t now = kNow,
                    VerifyOptions options = {}) const {
    auto v = verify_authcert(bytes, store, now, options);
    if (v.ok()) return "ok until " + std::to_string(v->chain_not_after);
    last_message = v.error().message;
    return reason(v.error());
  }
  std::string check(const std::string& bytes) const { return check(bytes, pki); }
  static std::string ok_until(std::int64_t t) { return "ok until " + std::to_string(t); }

  TestCert root, inter, node;
  std::string user;
  PkiStore pki;
  mutable std::string last_message;
};

TEST(ChainCacheWindow, StableWindowIsTheIntervalWithoutAComparisonChange) {
  std::vector<std::int64_t> times = {10, 20};
  auto w = stable_window(times, 5);
  EXPECT_EQ(w.from, INT64_MIN);
  EXPECT_EQ(w.until, 10);
  w = stable_window(times, 10);  // "now < 10" is false but "now <= 10" is true: this second only
  EXPECT_EQ(w.from, 10);
  EXPECT_EQ(w.until, 11);
  w = stable_window(times, 15);
  EXPECT_EQ(w.from, 11);
  EXPECT_EQ(w.until, 20);
  w = stable_window(times, 25);
  EXPECT_EQ(w.from, 21);
  EXPECT_EQ(w.until, INT64_MAX);
  w = stable_window({}, 25);
  EXPECT_EQ(w.from, INT64_MIN);
  EXPECT_EQ(w.until, INT64_MAX);
}

TEST_F(ChainCacheTest, SecondVerificationReusesTheChainAndGivesTheSameResult) {
  std::string pem = good();
  VerifyOptions opts;
  opts.expected_user_fingerprint = user;
  auto first = verify_authcert(pem, pki, kNow, opts);
  ASSERT_TRUE(first.ok()) << first.error().message;
  auto s1 = pki.chain_cache_stats();
  EXPECT_EQ(s1.entries, 1U);
  EXPECT_EQ(s1.chain_hits, 0U);
  auto second = verify_authcert(pem, pki, kNow + 60, opts);
  ASSERT_TRUE(second.ok()) << second.error().message;
  auto s2 = pki.chain_cache_stats();
  EXPECT_EQ(s2.chain_hits, 1U);
  EXPECT_GE(s2.cert_hits, 1U);
  EXPECT_EQ(second->content, first->content);
  EXPECT_EQ(second->signer_fingerprint, cert_fingerprint(node.get()));
  EXPECT_EQ(second->signer_subject, first->signer_subject);
  EXPECT_EQ(second->signer_serial, first->signer_serial);
  EXPECT_EQ(second->chain_not_after, first->chain_not_after);
  EXPECT_EQ(second->effective_not_after, first->effective_not_after);
  // Another authcert by the same node with the same chain: new signature, cached chain.
  EXPECT_EQ(check(signed_by(node, {&inter}, content())), ok_until(kNow + 365 * kDay));
  EXPECT_EQ(pki.chain_cache_stats().chain_hits, 2U);
}

// A CRL revoking the node arrives after a first successful verification: the
// reloaded store (what the daemon swaps in) rejects the very same bytes.
TEST_F(ChainCacheTest, RevokedByAReloadedCrlAfterAFirstSuccess) {
  TempDir dir;
  PkiConfig config;
  config.ca_files = {dir.write("ca.pem", root.pem())};
  config.crl_files = {dir.write("crl.pem", crl_of(root, {}) + crl_of(inter, {}))};
  auto before = PkiStore::load(config);
  ASSERT_TRUE(before.ok()) << before.error().describe();
  std::string pem = good();
  EXPECT_EQ(check(pem, *before), ok_until(kNow + 365 * kDay));
  EXPECT_EQ(check(pem, *before), ok_until(kNow + 365 * kDay));
  EXPECT_EQ(before->chain_cache_stats().chain_hits, 1U);

  dir.write("crl.pem", crl_of(root, {}) + crl_of(inter, {serial_hex(node.get())}));
  auto after = before->reload();
  ASSERT_TRUE(after.ok()) << after.error().describe();
  EXPECT_NE(after->generation(), before->generation());
  EXPECT_EQ(after->chain_cache_stats().entries, 0U);
  EXPECT_EQ(check(pem, *after), "revoked");
  EXPECT_THAT(last_message, HasSubstr(serial_hex(node.get())));
  EXPECT_EQ(check(pem, *after), "revoked");  // and again: rejections are not cached as success
  EXPECT_EQ(after->chain_cache_stats().entries, 0U);

  // Revoking the intermediate in the root's CRL voids the node below it too.
  dir.write("crl.pem", crl_of(root, {serial_hex(inter.get())}) + crl_of(inter, {}));
  auto inter_revoked = before->reload();
  ASSERT_TRUE(inter_revoked.ok());
  EXPECT_EQ(check(pem, *inter_revoked), "revoked");
}

// Nobody should add to a loaded store's X509_STORE, but if someone does, the
// cache notices (the store's object count changed) and stops answering.
TEST_F(ChainCacheTest, CrlAddedToTheLiveStoreIsHonoured) {
  std::string pem = good();
  EXPECT_EQ(check(pem), ok_until(kNow + 365 * kDay));
  auto crls = crls_from_pem(crl_of(inter, {serial_hex(node.get())}, kNow - 10, kNow + 7 * kDay), "test");
  ASSERT_TRUE(crls.ok());
  ASSERT_EQ(X509_STORE_add_crl(pki.x509_store(), crls->front().get()), 1);
  EXPECT_EQ(check(pem), "revoked");
  EXPECT_EQ(pki.chain_cache_stats().entries, 0U);
}

TEST_F(ChainCacheTest, CertificateExpiringBetweenTwoVerifications) {
  auto short_node = make_cert("node-short", node_extensions("IP:198.51.100.7"), &inter, kNow - 600, kNow + 600);
  std::string pem = signed_by(short_node, {&inter}, content());
  EXPECT_EQ(check(pem, pki, kNow), ok_until(kNow + 600));
  EXPECT_EQ(check(pem, pki, kNow + 599), ok_until(kNow + 600));
  EXPECT_EQ(pki.chain_cache_stats().chain_hits, 1U);
  EXPECT_EQ(check(pem, pki, kNow + 601), "cert_expired");
  EXPECT_EQ(check(pem, pki, kNow + 3600), "cert_expired");
  // Back in time works too (verification is a pure function of `now`).
  EXPECT_EQ(check(pem, pki, kNow), ok_until(kNow + 600));
  EXPECT_EQ(check(pem, pki, kNow - 601), "cert_not_yet_valid");

  // An intermediate that expires: the node below it fails with it.
  auto key_holder =
      make_cert("Short Intermediate CA", ca_extensions(kConstraints, "0"), &root, kNow - kDay, kNow + 1200);
  auto below = make_cert("node-b", node_extensions("IP:198.51.100.7"), &key_holder);
  std::string pem2 = signed_by(below, {&key_holder}, content());
  EXPECT_EQ(check(pem2, store_with({root.pem()}, {}, 16), kNow), ok_until(kNow + 1200));
  auto no_crl = store_with({root.pem()}, {}, 16);
  EXPECT_EQ(check(pem2, no_crl, kNow), ok_until(kNow + 1200));
  EXPECT_EQ(check(pem2, no_crl, kNow + 1000), ok_until(kNow + 1200));
  EXPECT_EQ(check(pem2, no_crl, kNow + 1201), "cert_expired");
  EXPECT_THAT(last_message, HasSubstr("Short Intermediate CA"));
}

TEST_F(ChainCacheTest, CrlPassingItsNextUpdateBetweenTwoVerifications) {
  auto store = store_with({root.pem()}, {crl_of(root, {}), crl_of(inter, {}, kNow - kDay, kNow + 3600)}, 16);
  std::string pem = good();
  EXPECT_EQ(check(pem, store, kNow), ok_until(kNow + 365 * kDay));
  EXPECT_EQ(check(pem, store, kNow + 3000), ok_until(kNow + 365 * kDay));
  EXPECT_EQ(store.chain_cache_stats().chain_hits, 1U);
  EXPECT_EQ(check(pem, store, kNow + 3601), "revocation_unknown");
  // A CRL whose lastUpdate is still ahead is not current either.
  auto early = store_with({root.pem()}, {crl_of(root, {}), crl_of(inter, {}, kNow + 100, kNow + kDay)}, 16);
  EXPECT_EQ(check(pem, early, kNow + 200), ok_until(kNow + 365 * kDay));
  EXPECT_EQ(check(pem, early, kNow + 50), "revocation_unknown");
}

TEST_F(ChainCacheTest, AnotherChainForTheSameSignerIsVerifiedOnItsOwn) {
  EXPECT_EQ(check(good()), ok_until(kNow + 365 * kDay));
  // The same node certificate without its intermediate: no chain.
  EXPECT_EQ(check(signed_by(node, {}, content())), "untrusted_chain");
  // With an impostor intermediate (same name, another key) in front of the real one.
  auto impostor = make_cert("Cache Intermediate CA", ca_extensions(kConstraints, "0"), nullptr);
  EXPECT_EQ(check(signed_by(node, {&impostor}, content())), "untrusted_chain");
  // An extra, irrelevant certificate changes the set: verified again, still fine.
  auto other = make_cert("node-other", node_extensions("IP:198.51.100.9"), &inter);
  EXPECT_EQ(check(signed_by(node, {&inter, &other}, content())), ok_until(kNow + 365 * kDay));
  // The same bytes with a depth limit the chain exceeds.
  VerifyOptions shallow;
  shallow.max_chain_depth = 0;
  EXPECT_EQ(check(good(), pki, kNow, shallow), "untrusted_chain");
  EXPECT_EQ(check(good()), ok_until(kNow + 365 * kDay));
  // The same node certificate issued again with another key is another signer.
  auto twin =
      cert_with_key("node-a", node_extensions("IP:198.51.100.7"), inter, node.key.get(), kNow - kDay, kNow + 10 * kDay);
  EXPECT_EQ(check(signed_by(twin, {&inter}, content())), ok_until(kNow + 10 * kDay));
}

// The cache stands only for the chain: the authcert's own checks all run.
TEST_F(ChainCacheTest, AuthcertChecksStillRunWhenTheChainIsCached) {
  EXPECT_EQ(check(good()), ok_until(kNow + 365 * kDay));
  // Tampered content.
  std::string der = pem_to_der(good());
  auto pos = der.find("destination: 198.51.100.7");
  ASSERT_NE(pos, std::string::npos);
  der[pos + std::string("destination: 198.51.100.").size()] = '8';
  EXPECT_EQ(check(der), "bad_signature");
  // Address, validity window, user, content.
  EXPECT_EQ(check(signed_by(node, {&inter}, content("198.51.100.8"))), "address_not_covered");
  auto old = content();
  old.not_after = kNow - 1;
  old.not_before = kNow - 3600;
  EXPECT_EQ(check(signed_by(node, {&inter}, old)), "expired");
  auto later = content();
  later.not_before = kNow + 3600;
  EXPECT_EQ(check(signed_by(node, {&inter}, later)), "not_yet_valid");
  VerifyOptions other_user;
  other_user.expected_user_fingerprint = KeyPair::generate(KeyType::p256).value().public_key().fingerprint();
  EXPECT_EQ(check(good(), pki, kNow, other_user), "wrong_user");
  EXPECT_EQ(check(raw_sign("hello\n", node, {&inter})), "bad_content");
  EXPECT_GE(pki.chain_cache_stats().chain_hits, 5U);  // those were all served the cached chain
}

TEST_F(ChainCacheTest, RejectedChainsAreNotCached) {
  auto revoked = store_with({root.pem()}, {crl_of(root, {}), crl_of(inter, {serial_hex(node.get())})}, 16);
  EXPECT_EQ(check(good(), revoked), "revoked");
  EXPECT_EQ(check(good(), revoked), "revoked");
  auto other_root = make_cert("Other Root", ca_extensions(), nullptr);
  auto stranger = make_cert("node-x", node_extensions("IP:198.51.100.7"), &other_root);
  EXPECT_EQ(check(signed_by(stranger, {&other_root}, content()), revoked), "untrusted_chain");
  auto s = revoked.chain_cache_stats();
  EXPECT_EQ(s.entries, 0U);
  EXPECT_EQ(s.chain_hits, 0U);
}

TEST_F(ChainCacheTest, CacheIsBoundedInEntriesAndBytes) {
  auto small = store_with({root.pem()}, {crl_of(root, {}), crl_of(inter, {})}, 3);
  std::vector<std::string> pems;
  for (int i = 0; i < 8; ++i) {
    auto n = make_cert("node-" + std::to_string(i), node_extensions("IP:198.51.100.7"), &inter);
    pems.push_back(signed_by(n, {&inter}, content()));
    EXPECT_EQ(check(pems.back(), small), ok_until(kNow + 365 * kDay)) << i;
    EXPECT_LE(small.chain_cache_stats().entries, 3U);
  }
  auto s = small.chain_cache_stats();
  EXPECT_EQ(s.entries, 3U);
  EXPECT_EQ(s.evictions, 5U);
  // The evicted ones verify again from scratch, correctly.
  EXPECT_EQ(check(pems.front(), small), ok_until(kNow + 365 * kDay));
  EXPECT_EQ(small.chain_cache_stats().chain_hits, 0U);
  EXPECT_EQ(check(pems.back(), small), ok_until(kNow + 365 * kDay));  // still cached
  EXPECT_EQ(small.chain_cache_stats().chain_hits, 1U);

  // A byte budget for about one set of two certificates.
  std::size_t one_set = static_cast<std::size_t>(i2d_X509(node.get(), nullptr)) +
                        static_cast<std::size_t>(i2d_X509(inter.get(), nullptr));
  auto tight = store_with({root.pem()}, {crl_of(root, {}), crl_of(inter, {})}, 1024, CrlMode::require_all,
                          one_set + one_set / 2);
  for (const auto& pem : pems) EXPECT_EQ(check(pem, tight), ok_until(kNow + 365 * kDay));
  EXPECT_EQ(tight.chain_cache_stats().entries, 1U);
  EXPECT_LE(tight.chain_cache_stats().der_bytes, one_set + one_set / 2);

  // Disabled: nothing is kept, everything still verifies.
  auto off = store_with({root.pem()}, {crl_of(root, {}), crl_of(inter, {})}, 0);
  EXPECT_EQ(check(good(), off), ok_until(kNow + 365 * kDay));
  EXPECT_EQ(check(good(), off), ok_until(kNow + 365 * kDay));
  EXPECT_EQ(off.chain_cache_stats().entries, 0U);
  EXPECT_EQ(off.chain_cache_stats().chain_hits, 0U);
}

// The strongest check: with the cache and without it, every authcert gets
// the same answer at every time around every boundary, in any order. The
// PKI has a re-issued intermediate (same name and key, overlapping dates, the
// newer one revoked), so which issuer OpenSSL picks changes with the time
// even while the chain it picked first is still valid: a cache that looked
// only at the certificates of the chain it verified would be wrong here.
TEST_F(ChainCacheTest, CachedAndUncachedAgreeAtEveryTime) {
  const std::int64_t h = 3600;
  // CMS sorts its certificates (DER SET OF); re-issue until the newer
  // intermediate comes first, so OpenSSL switches to it at its notBefore,
  // while the older one is still valid. Both are issued afresh each time:
  // with the older one fixed, an unlucky one (its encoding shorter than
  // most) could sort first against nearly every newer one.
  TestCert inter_old, inter_new;
  std::string both;
  for (int attempt = 0; attempt < 64; ++attempt) {
    inter_old = cert_with_key("Cache Intermediate CA", ca_extensions(kConstraints, "0"), root, inter.key.get(),
                              kNow - kDay, kNow + 2 * h);
    inter_new = cert_with_key("Cache Intermediate CA", ca_extensions(kConstraints, "0"), root, inter.key.get(),
                              kNow + h / 2, kNow + 365 * kDay);
    both = signed_by(node, {&inter_old, &inter_new}, content());
    std::string der = pem_to_der(both);
    const auto* p = reinterpret_cast<const unsigned char*>(der.data());
    ossl::Cms parsed(d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(der.size())));
    ASSERT_TRUE(parsed);
    ossl::X509Stack certs(CMS_get1_certs(parsed.get()));
    int at_new = -1, at_old = -1;
    for (int i = 0; i < sk_X509_num(certs.get()); ++i) {
      if (X509_cmp(sk_X509_value(certs.get(), i), inter_new.get()) == 0) at_new = i;
      if (X509_cmp(sk_X509_value(certs.get(), i), inter_old.get()) == 0) at_old = i;
    }
    if (at_new >= 0 && at_new < at_old) break;
    both.clear();
  }
  ASSERT_FALSE(both.empty()) << "could not get the newer intermediate first";
  auto short_node = make_cert("node-short", node_extensions("IP:198.51.100.7"), &inter, kNow - h, kNow + h / 3);
  auto future_node = make_cert("node-future", node_extensions("IP:198.51.100.7"), &inter, kNow + h / 4, kNow + kDay);
  std::vector<std::string> authcerts = {
      good(), signed_by(short_node, {&inter}, content()), signed_by(future_node, {&inter}, content()),
      both,   signed_by(node, {&inter_old}, content()),   signed_by(node, {}, content()),
  };
  std::vector<std::string> crls = {crl_of(root, {serial_hex(inter_new.get())}, kNow - kDay, kNow + 3 * h),
                                   crl_of(inter, {}, kNow - h / 5, kNow + 4 * h)};
  struct Pair {
    PkiStore cached, plain;
  };
  std::vector<Pair> stores;
  for (auto mode : {CrlMode::require_all, CrlMode::when_present}) {
    stores.push_back({store_with({root.pem()}, crls, 1024, mode), store_with({root.pem()}, crls, 0, mode)});
  }
  stores.push_back({store_with({root.pem()}, {crls[1]}, 1024, CrlMode::when_present),
                    store_with({root.pem()}, {crls[1]}, 0, CrlMode::when_present)});
  stores.push_back({store_with({root.pem()}, {}, 1024), store_with({root.pem()}, {}, 0)});

  // The scenario is what it claims: through the older intermediate at first,
  // through the newer (revoked) one once it is valid, while the older one still is.
  {
    auto plain = store_with({root.pem()}, crls, 0);
    EXPECT_EQ(check(both, plain, kNow), ok_until(kNow + 2 * h));
    EXPECT_EQ(check(both, plain, kNow + h), "revoked");
  }

  std::set<std::int64_t> boundaries = {kNow - kDay,  kNow - h,     kNow - h / 5, kNow,
                                       kNow + h / 4, kNow + h / 3, kNow + h / 2, kNow + 2 * h,
                                       kNow + 3 * h, kNow + 4 * h, kNow + kDay,  kNow + 365 * kDay};
  std::vector<std::int64_t> times;
  for (auto b : boundaries) {
    for (std::int64_t d : {-2, -1, 0, 1, 2}) times.push_back(b + d);
  }
  std::vector<std::int64_t> order = times;
  std::sort(order.rbegin(), order.rend());
  order.insert(order.end(), times.begin(), times.end());
  std::mt19937 rng(5);
  std::vector<std::int64_t> shuffled = times;
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  order.insert(order.end(), shuffled.begin(), shuffled.end());

  std::set<std::string> outcomes;
  for (auto t : order) {
    for (std::size_t a = 0; a < authcerts.size(); ++a) {
      for (std::size_t s = 0; s < stores.size(); ++s) {
        std::string with = check(authcerts[a], stores[s].cached, t);
        std::string without = check(authcerts[a], stores[s].plain, t);
        ASSERT_EQ(with, without) << "authcert " << a << ", store " << s << ", time kNow" << std::showpos << (t - kNow);
        outcomes.insert(with);
      }
    }
  }
  // Not vacuous: the cache answered, and both outcomes were seen.
  std::uint64_t hits = 0;
  for (const auto& p : stores) hits += p.cached.chain_cache_stats().chain_hits;
  EXPECT_GT(hits, 100U);
  EXPECT_TRUE(outcomes.count("revoked") == 1 && outcomes.count("cert_expired") == 1 &&
              outcomes.count("revocation_unknown") == 1 && outcomes.count("cert_not_yet_valid") == 1)
      << ::testing::PrintToString(outcomes);
}

TEST_F(ChainCacheTest, CopiesShareTheCacheAndReloadStartsAfresh) {
  PkiStore copy = pki;  // NOLINT(performance-unnecessary-copy-initialization): the point of the test
  EXPECT_EQ(check(good(), pki), ok_until(kNow + 365 * kDay));
  EXPECT_EQ(check(good(), copy), ok_until(kNow + 365 * kDay));
  EXPECT_EQ(copy.generation(), pki.generation());
  EXPECT_EQ(pki.chain_cache_stats().chain_hits, 1U);
  auto again = pki.reload();
  ASSERT_TRUE(again.ok());
  EXPECT_NE(again->generation(), pki.generation());
  EXPECT_EQ(again->chain_cache_stats().entries, 0U);
}

// Input the fast path does not take (BER with indefinite lengths) still
// verifies, through the ordinary path.
TEST_F(ChainCacheTest, IndefiniteLengthCmsTakesTheOrdinaryPath) {
  auto text = format_authcert_content(content());
  ossl::X509StackView stack(sk_X509_new_null());
  sk_X509_push(stack.get(), inter.get());
  ossl::Bio in(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  ossl::Cms cms(CMS_sign(node.get(), node.key.get(), stack.get(), in.get(), CMS_BINARY | CMS_STREAM));
  ASSERT_TRUE(cms);
  ossl::Bio data(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  ossl::Bio out(BIO_new(BIO_s_mem()));
  ASSERT_EQ(i2d_CMS_bio_stream(out.get(), cms.get(), data.get(), CMS_BINARY | CMS_STREAM), 1);
  char* p = nullptr;
  long len = BIO_get_mem_data(out.get(), &p);
  std::string ber(p, static_cast<std::size_t>(len));
  ASSERT_EQ(static_cast<unsigned char>(ber[1]), 0x80);  // indefinite length
  EXPECT_EQ(check(ber), ok_until(kNow + 365 * kDay)) << last_message;
  EXPECT_EQ(check(ber), ok_until(kNow + 365 * kDay));
  EXPECT_EQ(pki.chain_cache_stats().entries, 0U);
  EXPECT_EQ(check(good()), ok_until(kNow + 365 * kDay));
  EXPECT_EQ(pki.chain_cache_stats().entries, 1U);
}

}  // namespace
}  // namespace sg::certs
