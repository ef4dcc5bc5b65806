// Authcerts: node A's signed statement "surrogates of the user with key K may
// talk to me (destination, protocols, ports, rate) from not-before to
// not-after". The statement is a small "key: value" text (docs/authcert.md)
// inside CMS SignedData, signed by A's key and carrying A's certificate
// chain, so a node owner can make and check one with the stock `openssl cms`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "certs/pki.h"
#include "common/net.h"
#include "common/result.h"
#include "trust/policy.h"

namespace sg::certs {

// The first line of every authcert content: format name and version.
inline constexpr std::string_view kAuthcertMagic = "surrogate-authcert: 1";
inline constexpr std::size_t kMaxAuthcertBytes = 64 * 1024;
inline constexpr std::size_t kMaxContentBytes = 4 * 1024;
// Extended key usage that marks a certificate as fit to sign authcerts, a
// UUID-based OID (ITU-T X.667, arc 2.25) so it needs no registration.
// A node certificate needs no EKU at all; if it has one, it must list this
// OID or anyExtendedKeyUsage (2.5.29.37.0).
inline constexpr std::string_view kAuthcertSigningEku = "2.25.145503267659348829530937311459280111739";

enum class Protocol : std::uint8_t { any, tcp, udp, icmp };
std::string_view to_string(Protocol p);

struct AuthcertContent {
  std::string id;                                     // 32 lowercase hex digits (128 random bits)
  std::string user_fingerprint;                       // "sha256:" + 64 hex: the client key whose surrogates may connect
  Prefix destination;                                 // the node's address or prefix
  std::vector<Protocol> protocols = {Protocol::any};  // {any} or a subset of tcp, udp, icmp
  std::vector<trust::PortRange> ports = {trust::PortRange{}};  // tcp/udp destination ports; {1-65535} = all
  std::optional<std::uint64_t> rate_kbit;                      // kbit/s cap the node asks for
  std::int64_t not_before = 0;                                 // unix seconds, UTC
  std::int64_t not_after = 0;

  friend bool operator==(const AuthcertContent&, const AuthcertContent&) = default;
};

// A fresh random id for AuthcertContent::id.
std::string new_authcert_id();
// Parses the text inside the CMS; errors name the line and the field.
Result<AuthcertContent> parse_authcert_content(std::string_view text);
// The canonical text, which parse_authcert_content reads back unchanged.
std::string format_authcert_content(const AuthcertContent& content);
// "tcp,udp", "any"; "80,443,1000-2000", "*".
std::string format_protocols(const std::vector<Protocol>& protocols);
std::string format_port_ranges(const std::vector<trust::PortRange>& ports);
Result<std::vector<Protocol>> parse_protocols(std::string_view text);
Result<std::vector<trust::PortRange>> parse_port_ranges(std::string_view text);

// Why an authcert was refused. Stable words, used as log fields and metric
// labels: every rejection message starts with "<reason>: ".
enum class RejectReason : std::uint8_t {
  too_large,            // over kMaxAuthcertBytes
  truncated,            // input ends inside the structure
  malformed,            // not CMS SignedData with embedded content, one signer and its certificate
  bad_content,          // the signed text is not a valid authcert content
  bad_signature,        // signature does not match the content (tampered) or the signer's key
  untrusted_chain,      // the signer's chain does not lead to a configured trust anchor
  invalid_ca,           // a certificate that is not a CA (or may not sign certs) issued one in the chain
  name_constraints,     // a CA's name constraints do not permit a name in the certificate below it
  revoked,              // a certificate in the chain is listed in its issuer's CRL
  revocation_unknown,   // CRL checking is on and a CA's CRL is missing, stale or unusable
  cert_expired,         // a certificate in the chain is past notAfter
  cert_not_yet_valid,   // a certificate in the chain is before notBefore
  wrong_key_usage,      // signer's keyUsage lacks digitalSignature, or the signer is a CA
  wrong_purpose,        // signer's extendedKeyUsage excludes authcert signing
  address_not_covered,  // the destination is not within the signer's iPAddress subjectAltName
  expired,              // the authcert itself is past not-after
  not_yet_valid,        // the authcert itself is before not-before (beyond the clock-skew allowance)
  wrong_user,           // made for another user's key than the expected one
};
std::string_view to_string(RejectReason reason);
// Every reason, for registering counters.
std::vector<RejectReason> all_reject_reasons();
// The reason of an error returned by verify_authcert; nullopt for other errors.
std::optional<RejectReason> reject_reason_of(const Error& error);

struct VerifyOptions {
  // When set, an authcert for any other user key fails with wrong_user.
  std::optional<std::string> expected_user_fingerprint;
  // Tolerated clock difference for the authcert's not-before only: a
  // node's clock running ahead must not delay access, while expiry is exact.
  std::int64_t clock_skew_seconds = 300;
  int max_chain_depth = 6;
};

struct VerifiedAuthcert {
  AuthcertContent content;
  std::string signer_subject;
  std::string signer_fingerprint;           // "sha256:" + hex of the signer certificate's DER
  std::string signer_serial;                // hex
  std::vector<IpAddress> signer_addresses;  // the signer's iPAddress SANs
  std::int64_t chain_not_after = 0;         // earliest notAfter of every certificate in the chain
  // min(content.not_after, chain_not_after): the hole must close by then.
  std::int64_t effective_not_after = 0;

  // Convenience accessors.
  [[nodiscard]] const std::string& id() const { return content.id; }
  [[nodiscard]] const std::string& user_fingerprint() const { return content.user_fingerprint; }
  [[nodiscard]] const Prefix& destination() const { return content.destination; }
};

// Pure: the result depends only on the arguments. Accepts PEM ("-----BEGIN
// CMS-----" or "-----BEGIN PKCS7-----") and DER.
Result<VerifiedAuthcert> verify_authcert(std::string_view bytes, const PkiStore& pki, std::int64_t now,
                                         const VerifyOptions& options = {});

// Signs `content` with the node's key; refuses (before signing) when the key
// does not match the certificate, the certificate cannot sign authcerts or
// does not cover the destination. `chain_pems` are the intermediate CA
// certificates to embed (PEM, several per string allowed). Returns PEM CMS.
Result<std::string> sign_authcert(const AuthcertContent& content, std::string_view node_key_pem,
                                  std::string_view node_cert_pem, const std::vector<std::string>& chain_pems);

}  // namespace sg::certs
