// Authcert content, signing and verification, including every certificate
// attack of THREATS item 8.
#include "certs/authcert.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include "common/timeutil.h"
#include "tests/unit/certs/test_pki.h"

namespace sg::certs {
namespace {

using namespace sg::certs::testing;  // NOLINT(google-build-using-namespace)
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------
// Content format
// ---------------------------------------------------------------------------

constexpr std::string_view kUser = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

std::string sample_text() {
  return "surrogate-authcert: 1\n"
         "# a comment, and a blank line\n"
         "\n"
         "id: 00112233445566778899aabbccddeeff\n"
         "user: " +
         std::string(kUser) +
         "\n"
         "destination: 198.51.100.7\n"
         "protocols: udp, tcp\n"
         "ports: 443,22,8000-8100\n"
         "rate-kbit: 2000\n"
         "not-before: 2027-01-15T00:00:00Z\n"
         "not-after: 2027-01-16T00:00:00Z\n";
}

TEST(AuthcertContent, ParsesEveryField) {
  auto c = parse_authcert_content(sample_text());
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->id, "00112233445566778899aabbccddeeff");
  EXPECT_EQ(c->user_fingerprint, kUser);
  EXPECT_EQ(c->destination.to_string(), "198.51.100.7/32");
  EXPECT_EQ(c->protocols, (std::vector<Protocol>{Protocol::tcp, Protocol::udp}));
  EXPECT_EQ(format_port_ranges(c->ports), "22,443,8000-8100");
  EXPECT_EQ(c->rate_kbit, 2000U);
  EXPECT_EQ(format_utc(c->not_before), "2027-01-15T00:00:00Z");
  EXPECT_EQ(c->not_after - c->not_before, kDay);
}

TEST(AuthcertContent, FormatRoundTripsAndDefaultsAreAnyProtocolAllPorts) {
  auto c = parse_authcert_content(sample_text());
  ASSERT_TRUE(c.ok());
  auto again = parse_authcert_content(format_authcert_content(*c));
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(*again, *c);

  auto minimal = parse_authcert_content(
      "surrogate-authcert: 1\r\nid: 00112233445566778899aabbccddeeff\r\nuser: " + std::string(kUser) +
      "\r\ndestination: 2001:db8:1::/126\r\nnot-before: 2027-01-15T00:00:00Z\r\nnot-after: 2027-01-16T00:00:00Z");
  ASSERT_TRUE(minimal.ok()) << minimal.error().message;  // CRLF and no final newline are fine
  EXPECT_EQ(minimal->protocols, std::vector<Protocol>{Protocol::any});
  EXPECT_EQ(format_port_ranges(minimal->ports), "*");
  EXPECT_FALSE(minimal->rate_kbit);
  std::string text = format_authcert_content(*minimal);
  EXPECT_THAT(text, HasSubstr("destination: 2001:db8:1::/126\n"));
  EXPECT_EQ(text.find("protocols"), std::string::npos);
  EXPECT_EQ(*parse_authcert_content(text), *minimal);
}

struct BadContent {
  std::string find, replace, message;
};

class AuthcertContentErrors : public ::testing::TestWithParam<BadContent> {};

TEST_P(AuthcertContentErrors, SayWhatIsWrong) {
  std::string text = sample_text();
  auto pos = text.find(GetParam().find);
  ASSERT_NE(pos, std::string::npos) << GetParam().find;
  text.replace(pos, GetParam().find.size(), GetParam().replace);
  auto c = parse_authcert_content(text);
  ASSERT_FALSE(c.ok()) << text;
  EXPECT_THAT(c.error().message, HasSubstr(GetParam().message));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, AuthcertContentErrors,
    ::testing::Values(
        BadContent{"surrogate-authcert: 1", "surrogate-authcert: 2", "must start with the line"},
        BadContent{"id: 00112233445566778899aabbccddeeff", "id: 0011", "32 lowercase hex digits"},
        BadContent{"id: 00112233445566778899aabbccddeeff", "id: 00112233445566778899AABBCCDDEEFF",
                   "openssl rand -hex 16"},
        BadContent{"user: sha256:0", "user: sha1:0", "line 5: user: must be 'sha256:'"},
        BadContent{"destination: 198.51.100.7", "destination: 198.51.100.7/24", "host bits set"},
        BadContent{"destination: 198.51.100.7", "destination: node-a.example", "line 6: destination:"},
        BadContent{"protocols: udp, tcp", "protocols: sctp", "unknown protocol 'sctp'"},
        BadContent{"protocols: udp, tcp", "protocols: tcp,tcp", "listed twice"},
        BadContent{"protocols: udp, tcp", "protocols: any,tcp", "'any' already means every protocol"},
        BadContent{"protocols: udp, tcp", "protocols: icmp", "ports apply to tcp and udp only"},
        BadContent{"protocols: udp, tcp\n", "", "ports apply to tcp and udp only"},
        BadContent{"ports: 443,22,8000-8100", "ports: 0", "'0' is not a port"},
        BadContent{"ports: 443,22,8000-8100", "ports: 2000-1000", "not a port or port range"},
        BadContent{"ports: 443,22,8000-8100", "ports: 70000", "1 to 65535"},
        BadContent{"rate-kbit: 2000", "rate-kbit: 2 Mbit", "whole number of kbit/s"},
        BadContent{"rate-kbit: 2000", "rate-kbit: 0", "from 1 to"},
        BadContent{"not-before: 2027-01-15T00:00:00Z", "not-before: 2027-01-15 00:00:00", "2026-11-26T14:02:00Z"},
        BadContent{"not-before: 2027-01-15T00:00:00Z", "not-before: 2027-02-30T00:00:00Z", "not a valid date"},
        BadContent{"not-after: 2027-01-16T00:00:00Z", "not-after: 2027-01-15T00:00:00Z", "later than not-before"},
        BadContent{"not-after: 2027-01-16T00:00:00Z\n", "", "lacks the required field 'not-after'"},
        BadContent{"rate-kbit: 2000", "Rate-Kbit: 2000", "unknown field 'Rate-Kbit'"},
        BadContent{"rate-kbit: 2000", "destination: 198.51.100.8", "appears again (first on line 6)"},
        BadContent{"rate-kbit: 2000", "rate-kbit:", "has no value"},
        BadContent{"rate-kbit: 2000", "rate-kbit 2000", "expected 'field: value'"},
        BadContent{"rate-kbit: 2000", "rate-kbit: 2\xc3\xa9", "non-ASCII"},
        BadContent{"rate-kbit: 2000", std::string("rate-kbit: 2\0", 13), "control byte"}));

TEST(AuthcertContent, EmptyAndHugeAreRefused) {
  EXPECT_THAT(parse_authcert_content("").error().message, HasSubstr("empty"));
  EXPECT_THAT(parse_authcert_content(sample_text() + std::string(5000, '#')).error().message,
              HasSubstr("more than the 4096 allowed"));
}

TEST(AuthcertContent, IdsAreRandom) {
  std::set<std::string> ids;
  for (int i = 0; i < 100; ++i) ids.insert(new_authcert_id());
  EXPECT_EQ(ids.size(), 100U);
  EXPECT_EQ(ids.begin()->size(), 32U);
}

TEST(RejectReasons, AreStableDistinctWordsFoundAgainInMessages) {
  std::set<std::string> words;
  for (auto r : all_reject_reasons()) {
    std::string w(to_string(r));
    EXPECT_EQ(w.find_first_not_of("abcdefghijklmnopqrstuvwxyz_"), std::string::npos) << w;
    words.insert(w);
    EXPECT_EQ(reject_reason_of(make_error(w + ": because")), r);
  }
  EXPECT_EQ(words.size(), all_reject_reasons().size());
  EXPECT_FALSE(reject_reason_of(make_error("cannot read file: x")));
}

// ---------------------------------------------------------------------------
// Verification against a throwaway PKI
// ---------------------------------------------------------------------------

const std::string kConstraints =
    name_constraints_config({*Prefix::parse("198.51.100.0/24"), *Prefix::parse("2001:db8:1::/48")});

class AuthcertVerify : public ::testing::Test {
 protected:
  void SetUp() override {
    root = make_cert("Test Root CA", ca_extensions(), nullptr, kNow - 365 * kDay, kNow + 3650 * kDay);
    inter = make_cert("Test Intermediate CA", ca_extensions(kConstraints, "0"), &root);
    node = make_cert("node-a", node_extensions("IP:198.51.100.7,IP:2001:db8:1::7"), &inter);
    user = KeyPair::generate(KeyType::ed25519).value().public_key().fingerprint();
    pki = store_of({root.pem()}, {crl_of(root, {}), crl_of(inter, {})});
  }

  AuthcertContent content(const std::string& destination = "198.51.100.7") const {
    AuthcertContent c;
    c.id = new_authcert_id();
    c.user_fingerprint = user;
    c.destination = *Prefix::parse(destination);
    c.protocols = {Protocol::tcp};
    c.ports = {trust::PortRange{443, 443}};
    c.not_before = kNow - 3600;
    c.not_after = kNow + kDay;
    return c;
  }

  std::string signed_by(const TestCert& signer, const std::vector<const TestCert*>& chain,
                        const AuthcertContent& c) const {
    return raw_sign(format_authcert_content(c), signer, chain);
  }

  std::string good() const {
    auto pem = sign_authcert(content(), node.key_pem(), node.pem(), {inter.pem()});
    EXPECT_TRUE(pem.ok()) << pem.error().describe();
    return pem.ok() ? *pem : "";
  }

  // Verifies and returns the reason word ("ok" when accepted).
  std::string check(const std::string& bytes, const PkiStore& store, std::int64_t now = kNow,
                    VerifyOptions options = {}) const {
    auto v = verify_authcert(bytes, store, now, options);
    if (v.ok()) return "ok";
    last_message = v.error().message;
    return reason(v.error());
  }
  std::string check(const std::string& bytes) const { return check(bytes, pki); }

  TestCert root, inter, node;
  std::string user;
  PkiStore pki;
  mutable std::string last_message;
};

TEST_F(AuthcertVerify, SignThenVerifyRoundTrip) {
  auto c = content();
  c.rate_kbit = 5000;
  auto pem = sign_authcert(c, node.key_pem(), node.pem(), {inter.pem()});
  ASSERT_TRUE(pem.ok()) << pem.error().describe();
  EXPECT_EQ(pem->rfind("-----BEGIN CMS-----", 0), 0U);
  VerifyOptions opts;
  opts.expected_user_fingerprint = user;
  auto v = verify_authcert(*pem, pki, kNow, opts);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->content, c);
  EXPECT_EQ(v->id(), c.id);
  EXPECT_EQ(v->user_fingerprint(), user);
  EXPECT_EQ(v->destination().to_string(), "198.51.100.7/32");
  EXPECT_EQ(v->signer_subject, "CN=node-a");
  EXPECT_EQ(v->signer_fingerprint, cert_fingerprint(node.get()));
  EXPECT_EQ(v->signer_serial, serial_hex(node.get()));
  EXPECT_EQ(v->signer_addresses.size(), 2U);
  EXPECT_EQ(v->chain_not_after, kNow + 365 * kDay);  // the node and intermediate expire first
  EXPECT_EQ(v->effective_not_after, c.not_after);
}

TEST_F(AuthcertVerify, HoleNeverOutlivesTheSignerCertificate) {
  auto short_node = make_cert("node-short", node_extensions("IP:198.51.100.7"), &inter, kNow - kDay, kNow + 3600);
  auto c = content();
  c.not_after = kNow + 30 * kDay;
  auto v = verify_authcert(signed_by(short_node, {&inter}, c), pki, kNow);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->chain_not_after, kNow + 3600);
  EXPECT_EQ(v->effective_not_after, kNow + 3600);
}

TEST_F(AuthcertVerify, PemAndDerBothAccepted) {
  std::string pem = good();
  EXPECT_EQ(check(pem), "ok");
  EXPECT_EQ(check(pem_to_der(pem)), "ok");
  // Older tools label the same structure PKCS7.
  std::string pkcs7 = pem;
  for (auto [from, to] : {std::pair{"BEGIN CMS", "BEGIN PKCS7"}, std::pair{"END CMS", "END PKCS7"}}) {
    pkcs7.replace(pkcs7.find(from), std::string(from).size(), to);
  }
  EXPECT_EQ(check(pkcs7), "ok");
  EXPECT_EQ(check("\n  " + pem + "\n\n"), "ok") << last_message;
}

TEST_F(AuthcertVerify, Ipv6AndCoveredPrefix) {
  auto c = content("2001:db8:1::7");
  EXPECT_EQ(check(signed_by(node, {&inter}, c)), "ok");
  auto four =
      make_cert("node-b", node_extensions("IP:198.51.100.4,IP:198.51.100.5,IP:198.51.100.6,IP:198.51.100.7"), &inter);
  EXPECT_EQ(check(signed_by(four, {&inter}, content("198.51.100.4/30"))), "ok");
  EXPECT_EQ(check(signed_by(four, {&inter}, content("198.51.100.0/29"))), "address_not_covered");
}

// THREATS 8: a leaf used as a CA.
TEST_F(AuthcertVerify, LeafUsedAsCaFails) {
  auto forged = make_cert("forged", node_extensions("IP:198.51.100.9"), &node);
  EXPECT_EQ(check(signed_by(forged, {&node, &inter}, content("198.51.100.9"))), "invalid_ca");
  EXPECT_THAT(last_message, HasSubstr("node-a"));
  // A "CA" without keyCertSign fails the same way.
  auto no_certsign = make_cert(
      "Weak CA", {{NID_basic_constraints, "critical,CA:TRUE"}, {NID_key_usage, "critical,digitalSignature"}}, &root);
  auto below = make_cert("node-w", node_extensions("IP:198.51.100.7"), &no_certsign);
  EXPECT_EQ(check(signed_by(below, {&no_certsign}, content())), "invalid_ca");
  // pathlen:0 on the intermediate forbids another CA below it.
  auto sub = make_cert("Sub CA", ca_extensions(), &inter);
  auto under_sub = make_cert("node-s", node_extensions("IP:198.51.100.7"), &sub);
  EXPECT_EQ(check(signed_by(under_sub, {&sub, &inter}, content())), "invalid_ca");
}

// THREATS 8: wrong key usage or purpose.
TEST_F(AuthcertVerify, WrongKeyUsageOrPurposeFails) {
  auto enc_only = make_cert("enc", node_extensions("IP:198.51.100.7", "critical,keyEncipherment"), &inter);
  EXPECT_EQ(check(signed_by(enc_only, {&inter}, content())), "wrong_key_usage");
  EXPECT_THAT(last_message, HasSubstr("digitalSignature"));
  auto no_ku = make_cert("noku", node_extensions("IP:198.51.100.7", ""), &inter);
  EXPECT_EQ(check(signed_by(no_ku, {&inter}, content())), "wrong_key_usage");
  auto tls = make_cert("tls", node_extensions("IP:198.51.100.7", "critical,digitalSignature", "serverAuth"), &inter);
  EXPECT_EQ(check(signed_by(tls, {&inter}, content())), "wrong_purpose");
  EXPECT_THAT(last_message, HasSubstr(std::string(kAuthcertSigningEku)));
  auto ours = make_cert(
      "ours",
      node_extensions("IP:198.51.100.7", "critical,digitalSignature", "serverAuth," + std::string(kAuthcertSigningEku)),
      &inter);
  EXPECT_EQ(check(signed_by(ours, {&inter}, content())), "ok") << last_message;
  auto any =
      make_cert("any", node_extensions("IP:198.51.100.7", "critical,digitalSignature", "anyExtendedKeyUsage"), &inter);
  EXPECT_EQ(check(signed_by(any, {&inter}, content())), "ok") << last_message;
  // A CA certificate may not sign authcerts itself, even for addresses it may vouch for.
  auto ca_san = make_cert("CA with SAN",
                          {{NID_basic_constraints, "critical,CA:TRUE,pathlen:0"},
                           {NID_key_usage, "critical,keyCertSign,cRLSign,digitalSignature"},
                           {NID_subject_alt_name, "IP:198.51.100.7"}},
                          &root);
  EXPECT_EQ(check(signed_by(ca_san, {}, content())), "wrong_key_usage");
  EXPECT_THAT(last_message, HasSubstr("is a CA certificate"));
}

// THREATS 8: expired or not-yet-valid certificates and authcerts.
TEST_F(AuthcertVerify, ExpiredAndNotYetValidFail) {
  auto old_node = make_cert("old", node_extensions("IP:198.51.100.7"), &inter, kNow - 60 * kDay, kNow - kDay);
  EXPECT_EQ(check(signed_by(old_node, {&inter}, content())), "cert_expired");
  EXPECT_THAT(last_message, HasSubstr("renew"));
  auto future_node = make_cert("future", node_extensions("IP:198.51.100.7"), &inter, kNow + kDay, kNow + 60 * kDay);
  EXPECT_EQ(check(signed_by(future_node, {&inter}, content())), "cert_not_yet_valid");
  auto old_inter = make_cert("Old Intermediate", ca_extensions(kConstraints), &root, kNow - 60 * kDay, kNow - 1);
  auto under_old = make_cert("node-o", node_extensions("IP:198.51.100.7"), &old_inter);
  EXPECT_EQ(check(signed_by(under_old, {&old_inter}, content()), store_of({root.pem()})), "cert_expired");

  std::string pem = good();
  EXPECT_EQ(check(pem, pki, kNow + kDay), "expired");  // not-after is exclusive
  EXPECT_EQ(check(pem, pki, kNow + kDay - 1), "ok");
  EXPECT_EQ(check(pem, pki, kNow - 3600 - 301), "not_yet_valid");
  EXPECT_EQ(check(pem, pki, kNow - 3600 - 300), "ok");  // within the clock-skew allowance
  VerifyOptions strict;
  strict.clock_skew_seconds = 0;
  EXPECT_EQ(check(pem, pki, kNow - 3601, strict), "not_yet_valid");
}

// THREATS 8: wrong issuer.
TEST_F(AuthcertVerify, UntrustedIssuerFails) {
  auto other_root = make_cert("Other Root", ca_extensions(), nullptr);
  auto other_node = make_cert("node-x", node_extensions("IP:198.51.100.7"), &other_root);
  EXPECT_EQ(check(signed_by(other_node, {&other_root}, content())), "untrusted_chain");
  EXPECT_THAT(last_message, HasSubstr("trust anchors"));
  auto self = make_cert("self", node_extensions("IP:198.51.100.7"), nullptr);
  EXPECT_EQ(check(signed_by(self, {}, content())), "untrusted_chain");
  // The intermediate missing from the authcert: the chain cannot be built.
  EXPECT_EQ(check(signed_by(node, {}, content())), "untrusted_chain");
  // An impostor CA with the intermediate's name but its own key.
  auto impostor = make_cert("Test Intermediate CA", ca_extensions(kConstraints, "0"), nullptr);
  auto fake_node = make_cert("node-a", node_extensions("IP:198.51.100.7"), &impostor);
  EXPECT_EQ(check(signed_by(fake_node, {&impostor}, content())), "untrusted_chain");
  // Nothing trusted at all.
  EXPECT_EQ(check(good(), PkiStore()), "untrusted_chain");
}

// THREATS 8: broken name constraints.
TEST_F(AuthcertVerify, NameConstraintsAreEnforced) {
  auto narrow =
      make_cert("Narrow CA", ca_extensions(name_constraints_config({*Prefix::parse("203.0.113.0/24")})), &root);
  auto outside = make_cert("node-n", node_extensions("IP:198.51.100.7"), &narrow);
  EXPECT_EQ(check(signed_by(outside, {&narrow}, content()), store_of({root.pem()})), "name_constraints");
  EXPECT_THAT(last_message, HasSubstr("node-n"));
  auto inside = make_cert("node-i", node_extensions("IP:203.0.113.9"), &narrow);
  EXPECT_EQ(check(signed_by(inside, {&narrow}, content("203.0.113.9")), store_of({root.pem()})), "ok") << last_message;
  // The root's own constraints bind too (the host CA relies on this).
  auto nc_root = make_cert("NC Root", ca_extensions(kConstraints), nullptr);
  auto v6_out = make_cert("node-6", node_extensions("IP:2001:db8:2::1"), &nc_root);
  EXPECT_EQ(check(signed_by(v6_out, {}, content("2001:db8:2::1")), store_of({nc_root.pem()})), "name_constraints");
}

// THREATS 8: an authcert for another user's key, for another node's address.
TEST_F(AuthcertVerify, AnotherUsersKeyOrAnotherNodesAddressFails) {
  VerifyOptions opts;
  opts.expected_user_fingerprint = KeyPair::generate(KeyType::p256).value().public_key().fingerprint();
  EXPECT_EQ(check(good(), pki, kNow, opts), "wrong_user");
  EXPECT_THAT(last_message, HasSubstr(user));

  EXPECT_EQ(check(signed_by(node, {&inter}, content("198.51.100.8"))), "address_not_covered");
  EXPECT_THAT(last_message, HasSubstr("198.51.100.7"));
  EXPECT_EQ(check(signed_by(node, {&inter}, content("198.51.100.0/24"))), "address_not_covered");
  auto refused = sign_authcert(content("198.51.100.8"), node.key_pem(), node.pem(), {inter.pem()});
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.error().message, HasSubstr("address_not_covered"));
}

// THREATS 8: replayed after revocation.
TEST_F(AuthcertVerify, ReplayAfterRevocationFails) {
  std::string pem = good();
  EXPECT_EQ(check(pem), "ok");
  auto revoked = store_of({root.pem()}, {crl_of(root, {}), crl_of(inter, {serial_hex(node.get())})});
  EXPECT_EQ(check(pem, revoked), "revoked");
  EXPECT_THAT(last_message, HasSubstr(serial_hex(node.get())));
  // Revoking the intermediate voids everything below it.
  auto inter_revoked = store_of({root.pem()}, {crl_of(root, {serial_hex(inter.get())}), crl_of(inter, {})});
  EXPECT_EQ(check(pem, inter_revoked), "revoked");
}

TEST_F(AuthcertVerify, CrlModes) {
  std::string pem = good();
  // require_all: a CA without a CRL, or with a stale one, fails closed.
  EXPECT_EQ(check(pem, store_of({root.pem()}, {crl_of(root, {})})), "revocation_unknown");
  EXPECT_THAT(last_message, HasSubstr("Test Intermediate CA"));
  auto stale = store_of({root.pem()}, {crl_of(root, {}), crl_of(inter, {}, kNow - 10 * kDay, kNow - kDay)});
  EXPECT_EQ(check(pem, stale), "revocation_unknown");
  // when_present: only configured CRLs count, but a stale one still fails.
  EXPECT_EQ(check(pem, store_of({root.pem()}, {crl_of(root, {})}, CrlMode::when_present)), "ok") << last_message;
  EXPECT_EQ(
      check(pem, store_of({root.pem()}, {crl_of(inter, {}, kNow - 10 * kDay, kNow - kDay)}, CrlMode::when_present)),
      "revocation_unknown");
  EXPECT_EQ(check(pem, store_of({root.pem()}, {crl_of(inter, {serial_hex(node.get())})}, CrlMode::when_present)),
            "revoked");
  // No CRL at all: no revocation checking (the daemon warns about it).
  auto none = store_of({root.pem()});
  EXPECT_FALSE(none.revocation_checked());
  EXPECT_EQ(check(pem, none), "ok");
  // A CRL signed by someone else is not the CA's CRL.
  auto other = make_cert("Test Intermediate CA", ca_extensions(), nullptr);
  EXPECT_EQ(check(pem, store_of({root.pem()}, {crl_of(root, {}), crl_of(other, {})})), "revocation_unknown");
}

// THREATS 8: tampered content.
TEST_F(AuthcertVerify, TamperedContentFails) {
  std::string der = pem_to_der(good());
  auto pos = der.find("destination: 198.51.100.7");
  ASSERT_NE(pos, std::string::npos);
  std::string tampered = der;
  tampered[pos + std::string("destination: 198.51.100.").size()] = '8';
  EXPECT_EQ(check(tampered), "bad_signature");
  EXPECT_THAT(last_message, HasSubstr("altered"));
  // Any single byte of the signed text.
  auto start = der.find("surrogate-authcert");
  for (std::size_t i = start; i < start + 200; i += 17) {
    std::string flipped = der;
    flipped[i] ^= 0x01;
    EXPECT_EQ(check(flipped), "bad_signature") << "offset " << i;
  }
  // The signature itself.
  std::string sig_flipped = der;
  sig_flipped[der.size() - 5] ^= 0x40;
  EXPECT_NE(check(sig_flipped), "ok");
}

// THREATS 8: truncated or oversized input, and garbage.
TEST_F(AuthcertVerify, TruncatedOversizedAndGarbageFail) {
  std::string pem = good();
  std::string der = pem_to_der(pem);
  EXPECT_EQ(check(pem.substr(0, pem.size() / 2)), "truncated");
  EXPECT_EQ(check(pem.substr(0, 10)), "truncated");
  for (std::size_t n : {std::size_t{1}, std::size_t{3}, der.size() / 2, der.size() - 1}) {
    EXPECT_EQ(check(der.substr(0, n)), "truncated") << n;
  }
  EXPECT_EQ(check(der + "x"), "malformed");
  EXPECT_EQ(check(pem + "-----BEGIN CMS-----\n"), "malformed");
  EXPECT_EQ(check(std::string(kMaxAuthcertBytes + 1, 'A')), "too_large");
  EXPECT_EQ(check(pem + std::string(kMaxAuthcertBytes, '\n')), "too_large");
  EXPECT_EQ(check(""), "malformed");
  EXPECT_EQ(check("hello world"), "malformed");
  EXPECT_EQ(check(std::string("\x30\x03\x02\x01\x05", 5)), "malformed");
  EXPECT_EQ(check(node.pem()), "malformed");
  EXPECT_THAT(last_message, HasSubstr("PEM 'CERTIFICATE'"));
  EXPECT_EQ(check("-----BEGIN CMS-----\n!!!!\n-----END CMS-----\n"), "malformed");
  std::string random_bytes;
  for (int i = 0; i < 4096; ++i) random_bytes += static_cast<char>((i * 7919 + 13) & 0xff);
  EXPECT_NE(check(random_bytes), "ok");
  EXPECT_NE(check("\x30" + random_bytes), "ok");
}

TEST_F(AuthcertVerify, StructuralRequirements) {
  auto text = format_authcert_content(content());
  // Detached content.
  EXPECT_EQ(check(raw_sign(text, node, {&inter}, CMS_DETACHED)), "malformed");
  EXPECT_THAT(last_message, HasSubstr("-nodetach"));
  // No certificates embedded.
  EXPECT_EQ(check(raw_sign(text, node, {&inter}, CMS_NOCERTS)), "malformed");
  EXPECT_THAT(last_message, HasSubstr("signer's certificate"));
  // A valid signature over text that is no authcert.
  EXPECT_EQ(check(raw_sign("hello\n", node, {&inter})), "bad_content");
  EXPECT_THAT(last_message, HasSubstr("must start with the line"));
  // What `openssl cms -sign` without -binary signs (CRLF line ends) still reads the same.
  std::string crlf;
  for (char ch : text) crlf += ch == '\n' ? std::string("\r\n") : std::string(1, ch);
  EXPECT_EQ(check(raw_sign(crlf, node, {&inter})), "ok") << last_message;
}

TEST_F(AuthcertVerify, TwoSignersAreRefused) {
  auto text = format_authcert_content(content());
  ossl::Bio in(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  ossl::Cms cms(CMS_sign(nullptr, nullptr, nullptr, in.get(), CMS_BINARY | CMS_PARTIAL));
  ASSERT_TRUE(cms);
  auto node2 = make_cert("node-2", node_extensions("IP:198.51.100.7"), &inter);
  ASSERT_NE(CMS_add1_signer(cms.get(), node.get(), node.key.get(), EVP_sha256(), CMS_BINARY), nullptr);
  ASSERT_NE(CMS_add1_signer(cms.get(), node2.get(), node2.key.get(), EVP_sha256(), CMS_BINARY), nullptr);
  ossl::Bio data(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  ASSERT_EQ(CMS_final(cms.get(), data.get(), nullptr, CMS_BINARY), 1);
  ossl::Bio out(BIO_new(BIO_s_mem()));
  PEM_write_bio_CMS_stream(out.get(), cms.get(), nullptr, 0);
  char* p = nullptr;
  long len = BIO_get_mem_data(out.get(), &p);
  EXPECT_EQ(check(std::string(p, static_cast<std::size_t>(len))), "malformed");
  EXPECT_THAT(last_message, HasSubstr("exactly one signer"));
}

TEST_F(AuthcertVerify, SignRefusesWhatVerifyWouldRefuse) {
  auto other = make_cert("node-b", node_extensions("IP:198.51.100.8"), &inter);
  auto mismatch = sign_authcert(content(), other.key_pem(), node.pem(), {});
  ASSERT_FALSE(mismatch.ok());
  EXPECT_THAT(mismatch.error().message, HasSubstr("does not belong to the node certificate"));
  EXPECT_FALSE(sign_authcert(content(), "junk", node.pem(), {}).ok());
  EXPECT_FALSE(sign_authcert(content(), node.key_pem(), "junk", {}).ok());
  auto bad_chain = sign_authcert(content(), node.key_pem(), node.pem(), {"junk"});
  ASSERT_FALSE(bad_chain.ok());
  EXPECT_THAT(bad_chain.error().message, HasSubstr("chain file #1"));
  auto c = content();
  c.protocols = {Protocol::icmp};  // ports 443 with icmp only is ambiguous
  auto ambiguous = sign_authcert(c, node.key_pem(), node.pem(), {});
  ASSERT_FALSE(ambiguous.ok());
  EXPECT_THAT(ambiguous.error().message, HasSubstr("ports apply to tcp and udp only"));
  auto tls = make_cert("tls", node_extensions("IP:198.51.100.7", "critical,digitalSignature", "serverAuth"), &inter);
  auto wrong = sign_authcert(content(), tls.key_pem(), tls.pem(), {});
  ASSERT_FALSE(wrong.ok());
  EXPECT_THAT(wrong.error().message, HasSubstr("wrong_purpose"));
}

}  // namespace
}  // namespace sg::certs
