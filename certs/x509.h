// Small X.509 helpers shared by the PKI store, authcerts and the host CA:
// PEM in and out, fingerprints, times, iPAddress subjectAltNames, and a
// certificate / CRL builder (used by the host CA and by the tests, which
// need to make deliberately broken certificates).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/net.h"
#include "common/raii/openssl.h"
#include "common/result.h"

namespace sg::certs {

// Every certificate in a PEM text, in order. `origin` names the source in errors.
Result<std::vector<ossl::X509Ptr>> certs_from_pem(std::string_view pem, const std::string& origin);
// Exactly one certificate (the first one when the text holds several).
Result<ossl::X509Ptr> cert_from_pem(std::string_view pem, const std::string& origin);
Result<std::vector<ossl::X509Crl>> crls_from_pem(std::string_view pem, const std::string& origin);
std::string cert_to_pem(X509* cert);
std::string crl_to_pem(X509_CRL* crl);
std::string private_key_to_pem(EVP_PKEY* key);
Result<ossl::PKey> private_key_from_pem(std::string_view pem, const std::string& origin);

// "sha256:" + hex SHA-256 of the certificate's DER encoding (what
// `openssl x509 -noout -fingerprint -sha256` prints, in lowercase without colons).
std::string cert_fingerprint(X509* cert);
// RFC 2253 form: "CN=node-a,O=Example".
std::string subject_text(X509* cert);
std::string issuer_text(X509* cert);
std::string crl_issuer_text(X509_CRL* crl);
// Lowercase hex, no leading zeros except for zero itself.
std::string serial_hex(X509* cert);
std::string serial_hex(const ASN1_INTEGER* serial);
// ASN1 times to unix seconds; nullopt when the time cannot be represented.
std::optional<std::int64_t> asn1_time_to_unix(const ASN1_TIME* t);
std::int64_t cert_not_before(X509* cert);
std::int64_t cert_not_after(X509* cert);
// The iPAddress entries of the subjectAltName (4- and 16-byte ones; anything
// else is skipped, so a malformed entry can never widen what a cert covers).
std::vector<IpAddress> san_addresses(X509* cert);
// True when every address of `destination` is one of `addresses`. X.509
// iPAddress SANs hold single addresses, so a prefix is covered only when each
// of its addresses is listed (practical up to a /24 or /120).
bool addresses_cover(const std::vector<IpAddress>& addresses, const Prefix& destination);

// A random positive 127-bit serial as lowercase hex: never reused in practice
// and never negative (X509_V_FLAG_X509_STRICT refuses negative serials).
std::string random_serial_hex();
// Lowercase hex of `n` random bytes.
std::string random_hex(std::size_t bytes);

// Extension values in OpenSSL's config syntax (the same text `openssl x509
// -extfile` takes), built from prefixes and addresses.
// "IP:198.51.100.7,IP:2001:db8::7"
std::string san_config(const std::vector<IpAddress>& addresses);
// "critical,permitted;IP:203.0.113.0/255.255.255.0,..."
std::string name_constraints_config(const std::vector<Prefix>& permitted);
// The prefixes permitted by a CA's iPAddress nameConstraints (empty when it has none).
std::vector<Prefix> permitted_ip_subtrees(X509* cert);

struct CertSpec {
  std::string common_name;
  std::string serial_hex;  // empty: random_serial_hex()
  std::int64_t not_before = 0;
  std::int64_t not_after = 0;
  // (NID, value in OpenSSL config syntax), e.g. {NID_key_usage, "critical,digitalSignature"}.
  // subjectKeyIdentifier and authorityKeyIdentifier are always added (X509_STRICT needs them).
  std::vector<std::pair<int, std::string>> extensions;
};

// Signs a certificate for `subject_key` with `issuer_key`; `issuer` null means self-signed.
Result<ossl::X509Ptr> build_cert(const CertSpec& spec, EVP_PKEY* subject_key, X509* issuer, EVP_PKEY* issuer_key);

struct RevokedEntry {
  std::string serial_hex;
  std::int64_t revoked_at = 0;
};
// A v2 CRL of `issuer` listing `revoked`, valid from `this_update` to `next_update`.
Result<ossl::X509Crl> build_crl(X509* issuer, EVP_PKEY* issuer_key, const std::vector<RevokedEntry>& revoked,
                                std::int64_t this_update, std::int64_t next_update, std::uint64_t crl_number);

}  // namespace sg::certs
