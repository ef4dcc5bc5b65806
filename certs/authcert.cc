#include "certs/authcert.h"

#include <openssl/asn1.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <ctime>
#include <map>
#include <memory>
#include <optional>

#include "certs/chain_cache.h"
#include "certs/identity.h"
#include "certs/x509.h"
#include "common/timeutil.h"

namespace sg::certs {

// ---------------------------------------------------------------------------
// Content text
// ---------------------------------------------------------------------------

std::string_view to_string(Protocol p) {
  switch (p) {
    case Protocol::any: return "any";
    case Protocol::tcp: return "tcp";
    case Protocol::udp: return "udp";
    case Protocol::icmp: return "icmp";
  }
  return "?";
}

namespace {

bool is_lower_hex(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool is_fingerprint(std::string_view s) {
  return s.size() == 7 + 64 && s.substr(0, 7) == "sha256:" && is_lower_hex(s.substr(7));
}

std::string trim(std::string_view s) {
  auto b = s.find_first_not_of(" \t");
  if (b == std::string_view::npos) return {};
  auto e = s.find_last_not_of(" \t");
  return std::string(s.substr(b, e - b + 1));
}

std::vector<std::string> split_commas(std::string_view text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (true) {
    auto comma = text.find(',', start);
    out.push_back(trim(text.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start)));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return out;
}

template <class T>
bool parse_number(std::string_view s, T& out) {
  if (s.empty() || s.size() > 20 || s.find_first_not_of("0123456789") != std::string_view::npos) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

// Exactly "YYYY-MM-DDTHH:MM:SSZ": one spelling per instant, so two parties
// can never read different times out of the same text.
Result<std::int64_t> parse_strict_utc(std::string_view s) {
  auto bad = [&] { return make_error("'" + std::string(s) + "' is not a UTC time of the form 2026-11-26T14:02:00Z"); };
  if (s.size() != 20) return bad();
  static constexpr std::string_view shape = "dddd-dd-ddTdd:dd:ddZ";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != shape[i]) return bad();
  }
  auto num = [&](std::size_t pos, std::size_t len) {
    int v = 0;
    for (std::size_t i = pos; i < pos + len; ++i) v = v * 10 + (s[i] - '0');
    return v;
  };
  std::tm tm{};
  tm.tm_year = num(0, 4) - 1900;
  tm.tm_mon = num(5, 2) - 1;
  tm.tm_mday = num(8, 2);
  tm.tm_hour = num(11, 2);
  tm.tm_min = num(14, 2);
  tm.tm_sec = num(17, 2);
  std::tm check = tm;
  auto t = static_cast<std::int64_t>(timegm(&check));
  // timegm normalises 2026-02-30 into March; a time that does not survive the round trip does not exist.
  if (check.tm_year != tm.tm_year || check.tm_mon != tm.tm_mon || check.tm_mday != tm.tm_mday ||
      check.tm_hour != tm.tm_hour || check.tm_min != tm.tm_min || check.tm_sec != tm.tm_sec) {
    return make_error("'" + std::string(s) + "' is not a valid date and time");
  }
  return t;
}

std::string format_destination(const Prefix& p) {
  return p.length == p.address.bit_length() ? p.address.to_string() : p.to_string();
}

bool has_tcp_or_udp(const std::vector<Protocol>& protocols) {
  return std::any_of(protocols.begin(), protocols.end(),
                     [](Protocol p) { return p == Protocol::tcp || p == Protocol::udp; });
}

bool all_ports(const std::vector<trust::PortRange>& ports) { return ports.size() == 1 && ports.front().all(); }

constexpr std::array<std::string_view, 8> kFields = {"id",    "user",      "destination", "protocols",
                                                     "ports", "rate-kbit", "not-before",  "not-after"};

std::string field_list() {
  std::string out;
  for (auto f : kFields) out += (out.empty() ? "" : ", ") + std::string(f);
  return out;
}

}  // namespace

std::string new_authcert_id() { return random_hex(16); }

std::string format_protocols(const std::vector<Protocol>& protocols) {
  std::string out;
  for (auto p : protocols) out += (out.empty() ? "" : ",") + std::string(to_string(p));
  return out.empty() ? "any" : out;
}

std::string format_port_ranges(const std::vector<trust::PortRange>& ports) {
  if (ports.empty() || std::any_of(ports.begin(), ports.end(), [](const auto& r) { return r.all(); })) return "*";
  std::string out;
  for (const auto& r : ports) {
    if (!out.empty()) out += ",";
    out += std::to_string(r.first);
    if (r.last != r.first) out += "-" + std::to_string(r.last);
  }
  return out;
}

Result<std::vector<Protocol>> parse_protocols(std::string_view text) {
  std::vector<Protocol> out;
  for (const auto& word : split_commas(text)) {
    Protocol p{};
    if (word == "any") {
      p = Protocol::any;
    } else if (word == "tcp") {
      p = Protocol::tcp;
    } else if (word == "udp") {
      p = Protocol::udp;
    } else if (word == "icmp") {
      p = Protocol::icmp;
    } else {
      return make_error("unknown protocol '" + word + "'; write tcp, udp, icmp (comma-separated) or any");
    }
    if (std::find(out.begin(), out.end(), p) != out.end()) {
      return make_error("protocol '" + word + "' is listed twice");
    }
    out.push_back(p);
  }
  if (out.size() > 1 && std::find(out.begin(), out.end(), Protocol::any) != out.end()) {
    return make_error("'any' already means every protocol; write it alone or list tcp, udp, icmp");
  }
  std::sort(out.begin(), out.end());
  return out;
}

Result<std::vector<trust::PortRange>> parse_port_ranges(std::string_view text) {
  if (trim(text) == "*") return std::vector<trust::PortRange>{trust::PortRange{}};
  std::vector<trust::PortRange> out;
  for (const auto& item : split_commas(text)) {
    auto dash = item.find('-');
    std::string a = item.substr(0, dash);
    std::string b = dash == std::string::npos ? a : item.substr(dash + 1);
    std::uint32_t first = 0, last = 0;
    if (!parse_number(a, first) || !parse_number(b, last) || first < 1 || last > 65535 || first > last) {
      return make_error("'" + item + "' is not a port or port range; write 443, 1000-2000 (ports 1 to 65535) or *");
    }
    out.push_back(trust::PortRange{static_cast<std::uint16_t>(first), static_cast<std::uint16_t>(last)});
  }
  std::sort(out.begin(), out.end());
  return out;
}

Result<AuthcertContent> parse_authcert_content(std::string_view text) {
  if (text.size() > kMaxContentBytes) {
    return make_error("authcert content is " + std::to_string(text.size()) + " bytes, more than the " +
                      std::to_string(kMaxContentBytes) + " allowed; it holds nine short lines at most");
  }
  for (std::size_t i = 0; i < text.size(); ++i) {
    auto c = static_cast<unsigned char>(text[i]);
    if ((c < 0x20 && c != '\n' && c != '\r' && c != '\t') || c > 0x7e) {
      return make_error("authcert content has a non-ASCII or control byte at offset " + std::to_string(i) +
                        "; write it as plain ASCII text");
    }
  }
  AuthcertContent c;
  c.protocols.clear();
  c.ports.clear();
  std::map<std::string, std::pair<std::string, int>> fields;  // key -> (value, line)
  std::size_t pos = 0;
  int line_no = 0;
  while (pos < text.size()) {
    auto nl = text.find('\n', pos);
    std::string_view line = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() : nl + 1;
    ++line_no;
    // CRLF is what `openssl cms -sign` without -binary turns LF into; accept it.
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find('\r') != std::string_view::npos) {
      return make_error("line " + std::to_string(line_no) + ": stray carriage return; use LF or CRLF line endings");
    }
    auto where = "line " + std::to_string(line_no) + ": ";
    if (line_no == 1) {
      if (line != kAuthcertMagic) {
        return make_error(where + "an authcert content must start with the line '" + std::string(kAuthcertMagic) +
                          "' (found '" + std::string(line.substr(0, 40)) + "')");
      }
      continue;
    }
    if (trim(line).empty() || line.front() == '#') continue;
    auto colon = line.find(':');
    if (colon == std::string_view::npos) {
      return make_error(where + "expected 'field: value' (fields: " + field_list() + ")");
    }
    std::string key(line.substr(0, colon));
    std::string value = trim(line.substr(colon + 1));
    if (std::find(kFields.begin(), kFields.end(), key) == kFields.end()) {
      return make_error(where + "unknown field '" + key + "' (fields are lowercase: " + field_list() + ")");
    }
    if (fields.count(key) != 0) {
      return make_error(where + "field '" + key + "' appears again (first on line " +
                        std::to_string(fields[key].second) + "); give every field once");
    }
    if (value.empty()) return make_error(where + "field '" + key + "' has no value");
    fields[key] = {value, line_no};
  }
  if (line_no == 0)
    return make_error("authcert content is empty; it must start with '" + std::string(kAuthcertMagic) + "'");

  for (std::string_view required : {"id", "user", "destination", "not-before", "not-after"}) {
    if (fields.count(std::string(required)) == 0) {
      return make_error("authcert content lacks the required field '" + std::string(required) + "'");
    }
  }
  auto at = [&](const std::string& key) { return "line " + std::to_string(fields[key].second) + ": " + key + ": "; };

  c.id = fields["id"].first;
  if (c.id.size() != 32 || !is_lower_hex(c.id)) {
    return make_error(at("id") + "must be 32 lowercase hex digits (make one with 'openssl rand -hex 16')");
  }
  c.user_fingerprint = fields["user"].first;
  if (!is_fingerprint(c.user_fingerprint)) {
    return make_error(at("user") +
                      "must be 'sha256:' and 64 lowercase hex digits, the client key's fingerprint "
                      "(the client gets it from 'surrogatectl whoami')");
  }
  auto dest = Prefix::parse(fields["destination"].first);
  if (!dest) return make_error(at("destination") + dest.error().message);
  c.destination = *dest;

  if (fields.count("protocols") != 0) {
    auto protocols = parse_protocols(fields["protocols"].first);
    if (!protocols) return make_error(at("protocols") + protocols.error().message);
    c.protocols = *protocols;
  } else {
    c.protocols = {Protocol::any};
  }
  if (fields.count("ports") != 0) {
    auto ports = parse_port_ranges(fields["ports"].first);
    if (!ports) return make_error(at("ports") + ports.error().message);
    // With "any", a port list would be ambiguous: do ICMP and other protocols pass too?
    if (!has_tcp_or_udp(c.protocols) && !all_ports(*ports)) {
      return make_error(at("ports") + "ports apply to tcp and udp only; add 'protocols: tcp' (or udp, or tcp,udp)");
    }
    c.ports = *ports;
  } else {
    c.ports = {trust::PortRange{}};
  }
  if (fields.count("rate-kbit") != 0) {
    std::uint64_t rate = 0;
    if (!parse_number(fields["rate-kbit"].first, rate) || rate == 0 || rate > 1'000'000'000) {
      return make_error(at("rate-kbit") + "must be a whole number of kbit/s from 1 to 1000000000");
    }
    c.rate_kbit = rate;
  }
  auto nb = parse_strict_utc(fields["not-before"].first);
  if (!nb) return make_error(at("not-before") + nb.error().message);
  auto na = parse_strict_utc(fields["not-after"].first);
  if (!na) return make_error(at("not-after") + na.error().message);
  c.not_before = *nb;
  c.not_after = *na;
  if (c.not_after <= c.not_before) {
    return make_error(at("not-after") + "must be later than not-before (" + fields["not-before"].first + ")");
  }
  return c;
}

std::string format_authcert_content(const AuthcertContent& c) {
  std::string out(kAuthcertMagic);
  out += "\n";
  out += "id: " + c.id + "\n";
  out += "user: " + c.user_fingerprint + "\n";
  out += "destination: " + format_destination(c.destination) + "\n";
  if (!(c.protocols.size() == 1 && c.protocols.front() == Protocol::any) && !c.protocols.empty()) {
    out += "protocols: " + format_protocols(c.protocols) + "\n";
  }
  if (!c.ports.empty() && !all_ports(c.ports)) out += "ports: " + format_port_ranges(c.ports) + "\n";
  if (c.rate_kbit) out += "rate-kbit: " + std::to_string(*c.rate_kbit) + "\n";
  out += "not-before: " + format_utc(c.not_before) + "\n";
  out += "not-after: " + format_utc(c.not_after) + "\n";
  return out;
}

// ---------------------------------------------------------------------------
// Reject reasons
// ---------------------------------------------------------------------------

std::string_view to_string(RejectReason reason) {
  switch (reason) {
    case RejectReason::too_large: return "too_large";
    case RejectReason::truncated: return "truncated";
    case RejectReason::malformed: return "malformed";
    case RejectReason::bad_content: return "bad_content";
    case RejectReason::bad_signature: return "bad_signature";
    case RejectReason::untrusted_chain: return "untrusted_chain";
    case RejectReason::invalid_ca: return "invalid_ca";
    case RejectReason::name_constraints: return "name_constraints";
    case RejectReason::revoked: return "revoked";
    case RejectReason::revocation_unknown: return "revocation_unknown";
    case RejectReason::cert_expired: return "cert_expired";
    case RejectReason::cert_not_yet_valid: return "cert_not_yet_valid";
    case RejectReason::wrong_key_usage: return "wrong_key_usage";
    case RejectReason::wrong_purpose: return "wrong_purpose";
    case RejectReason::address_not_covered: return "address_not_covered";
    case RejectReason::expired: return "expired";
    case RejectReason::not_yet_valid: return "not_yet_valid";
    case RejectReason::wrong_user: return "wrong_user";
  }
  return "unknown";
}

std::vector<RejectReason> all_reject_reasons() {
  std::vector<RejectReason> out;
  for (int r = 0; r <= static_cast<int>(RejectReason::wrong_user); ++r) out.push_back(static_cast<RejectReason>(r));
  return out;
}

std::optional<RejectReason> reject_reason_of(const Error& error) {
  auto colon = error.message.find(": ");
  if (colon == std::string::npos) return std::nullopt;
  std::string_view word(error.message.data(), colon);
  for (auto r : all_reject_reasons()) {
    if (to_string(r) == word) return r;
  }
  return std::nullopt;
}

namespace {

Error reject(RejectReason reason, const std::string& message) {
  return make_error(std::string(to_string(reason)) + ": " + message);
}

// The checks on the signing certificate itself, shared by sign (to refuse
// early) and verify.
Status check_signer(X509* signer, const Prefix& destination) {
  std::string who = "the signer certificate '" + subject_text(signer) + "'";
  if (X509_check_ca(signer) != 0) {
    return reject(RejectReason::wrong_key_usage,
                  who +
                      " is a CA certificate; authcerts are signed with a node certificate "
                      "(basicConstraints CA:FALSE) that a CA issued for the node's address");
  }
  std::uint32_t ku = X509_get_key_usage(signer);
  if (ku == UINT32_MAX || (ku & KU_DIGITAL_SIGNATURE) == 0) {
    return reject(RejectReason::wrong_key_usage,
                  who + (ku == UINT32_MAX ? " has no keyUsage extension" : " lacks keyUsage digitalSignature") +
                      "; the node owner needs a certificate with 'keyUsage = critical, digitalSignature'");
  }
  if ((X509_get_extension_flags(signer) & EXFLAG_XKUSAGE) != 0) {
    int crit = 0;
    ossl::ExtendedKeyUsage eku(
        static_cast<EXTENDED_KEY_USAGE*>(X509_get_ext_d2i(signer, NID_ext_key_usage, &crit, nullptr)));
    bool fit = false;
    for (int i = 0; eku && i < sk_ASN1_OBJECT_num(eku.get()); ++i) {
      const ASN1_OBJECT* obj = sk_ASN1_OBJECT_value(eku.get(), i);
      char oid[128] = {};
      OBJ_obj2txt(oid, sizeof oid, obj, 1);
      if (OBJ_obj2nid(obj) == NID_anyExtendedKeyUsage || std::string_view(oid) == kAuthcertSigningEku) fit = true;
    }
    if (!fit) {
      return reject(RejectReason::wrong_purpose,
                    who +
                        " has an extendedKeyUsage that does not allow signing authcerts; the node owner needs a "
                        "certificate without extendedKeyUsage, or with " +
                        std::string(kAuthcertSigningEku) + " (authcert signing) or anyExtendedKeyUsage");
    }
  }
  auto addresses = san_addresses(signer);
  if (!addresses_cover(addresses, destination)) {
    std::string listed;
    for (const auto& a : addresses) listed += (listed.empty() ? "" : ", ") + a.to_string();
    return reject(RejectReason::address_not_covered,
                  "destination " + destination.to_string() + " is not covered by " + who +
                      ", whose iPAddress subjectAltNames are [" + listed +
                      "]; a node may only grant access to its own addresses (every address of a prefix must be "
                      "listed)");
  }
  return {};
}

Error chain_error(X509_STORE_CTX* ctx) {
  int err = X509_STORE_CTX_get_error(ctx);
  int depth = X509_STORE_CTX_get_error_depth(ctx);
  X509* cert = X509_STORE_CTX_get_current_cert(ctx);
  std::string who = cert != nullptr ? "certificate '" + subject_text(cert) + "'" : std::string("a certificate");
  who += depth == 0 ? " (the signer)" : " (chain depth " + std::to_string(depth) + ")";
  std::string ossl_text = X509_verify_cert_error_string(err);
  switch (err) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
      return reject(RejectReason::cert_expired, who + " expired at " + format_utc(cert_not_after(cert)) +
                                                    "; the node owner must renew it and sign a new authcert");
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return reject(RejectReason::cert_not_yet_valid,
                    who + " is valid only from " + format_utc(cert_not_before(cert)) +
                        "; check the clocks of the host and the CA, or submit it again later");
    case X509_V_ERR_CERT_REVOKED:
      return reject(RejectReason::revoked, who + " (serial " + serial_hex(cert) +
                                               ") is revoked in its issuer's CRL, so every authcert it signed is "
                                               "void; the node owner needs a new certificate and a new authcert");
    case X509_V_ERR_UNABLE_TO_GET_CRL:
    case X509_V_ERR_UNABLE_TO_GET_CRL_ISSUER:
    case X509_V_ERR_CRL_HAS_EXPIRED:
    case X509_V_ERR_CRL_NOT_YET_VALID:
    case X509_V_ERR_CRL_SIGNATURE_FAILURE:
    case X509_V_ERR_UNABLE_TO_DECRYPT_CRL_SIGNATURE:
    case X509_V_ERR_ERROR_IN_CRL_LAST_UPDATE_FIELD:
    case X509_V_ERR_ERROR_IN_CRL_NEXT_UPDATE_FIELD:
    case X509_V_ERR_KEYUSAGE_NO_CRL_SIGN:
    case X509_V_ERR_DIFFERENT_CRL_SCOPE:
    case X509_V_ERR_CRL_PATH_VALIDATION_ERROR:
      return reject(RejectReason::revocation_unknown,
                    "cannot tell whether " + who + " is revoked: " + ossl_text + " (issuer '" +
                        (cert != nullptr ? issuer_text(cert) : std::string("?")) +
                        "'); the host owner must install a current CRL of that issuer in the CRL files of "
                        "surrogated.toml and reload");
    case X509_V_ERR_INVALID_CA:
    case X509_V_ERR_PATH_LENGTH_EXCEEDED:
    case X509_V_ERR_KEYUSAGE_NO_CERTSIGN:
    case X509_V_ERR_CA_BCONS_NOT_CRITICAL:
    case X509_V_ERR_CA_CERT_MISSING_KEY_USAGE:
    case X509_V_ERR_INVALID_NON_CA:
      return reject(RejectReason::invalid_ca, who + " issued a certificate but may not: " + ossl_text +
                                                  "; only CA certificates (basicConstraints CA:TRUE, keyUsage "
                                                  "keyCertSign) may issue node certificates");
    case X509_V_ERR_PERMITTED_VIOLATION:
    case X509_V_ERR_EXCLUDED_VIOLATION:
    case X509_V_ERR_SUBTREE_MINMAX:
    case X509_V_ERR_UNSUPPORTED_CONSTRAINT_TYPE:
    case X509_V_ERR_UNSUPPORTED_CONSTRAINT_SYNTAX:
    case X509_V_ERR_UNSUPPORTED_NAME_SYNTAX:
      return reject(RejectReason::name_constraints,
                    who + " has a name outside what an issuing CA's nameConstraints permit (" + ossl_text +
                        "); the node certificate must come from a CA allowed to vouch for that address");
    default:
      return reject(RejectReason::untrusted_chain,
                    who + " does not chain to a trusted CA: " + ossl_text +
                        "; the node's CA must be among the trust anchors in surrogated.toml, and the authcert "
                        "must carry the intermediate CAs (openssl cms -sign ... -certfile chain.pem)");
  }
}

int crl_when_present_cb(int ok, X509_STORE_CTX* ctx) {
  // CrlMode::when_present: a CA without a configured CRL is accepted; every other failure stands.
  if (ok == 0 && X509_STORE_CTX_get_error(ctx) == X509_V_ERR_UNABLE_TO_GET_CRL) return 1;
  return ok;
}

// PEM to DER, telling a cut-off file from a damaged one.
Result<std::string> to_der(std::string_view bytes) {
  auto begin = bytes.find_first_not_of(" \t\r\n");
  if (begin == std::string_view::npos || bytes.substr(begin, 5) != "-----") return std::string(bytes);
  bytes.remove_prefix(begin);  // PEM_read_bio wants the BEGIN line at the start of a line
  begin = 0;
  if (bytes.size() < 11 || bytes.substr(0, 11) != "-----BEGIN ") {
    if (std::string_view("-----BEGIN ").substr(0, bytes.size()) == bytes) {
      return reject(RejectReason::truncated, "the input ends inside the PEM header line");
    }
    return reject(RejectReason::malformed, "not a PEM authcert (expected '-----BEGIN CMS-----')");
  }
  auto label_end = bytes.find("-----", begin + 11);
  if (label_end == std::string_view::npos) {
    return reject(RejectReason::truncated, "the input ends inside the PEM header line");
  }
  std::string label(bytes.substr(begin + 11, label_end - begin - 11));
  if (label != "CMS" && label != "PKCS7") {
    return reject(RejectReason::malformed, "this is a PEM '" + label +
                                               "', not an authcert; an authcert starts with "
                                               "'-----BEGIN CMS-----'");
  }
  std::string end_line = "-----END " + label + "-----";
  auto end = bytes.find(end_line);
  if (end == std::string_view::npos) {
    return reject(RejectReason::truncated,
                  "the PEM text has no '" + end_line + "' line: the file is cut off; copy the whole authcert");
  }
  if (bytes.find_first_not_of(" \t\r\n", end + end_line.size()) != std::string_view::npos) {
    return reject(RejectReason::malformed, "unexpected text after '" + end_line + "'; submit one authcert per file");
  }
  ossl::Bio bio(BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size())));
  char* name = nullptr;
  char* header = nullptr;
  unsigned char* data = nullptr;
  long len = 0;
  if (PEM_read_bio(bio.get(), &name, &header, &data, &len) != 1) {
    ERR_clear_error();
    return reject(RejectReason::malformed, "the PEM text is not valid base64; get an intact copy of the authcert");
  }
  std::string der(reinterpret_cast<char*>(data), static_cast<std::size_t>(len));
  OPENSSL_free(name);
  OPENSSL_free(header);
  OPENSSL_free(data);
  return der;
}

// The outer DER header says how long the whole structure is: shorter input was cut off.
Status check_der_length(std::string_view der) {
  auto u = [&](std::size_t i) { return static_cast<unsigned char>(der[i]); };
  if (der.empty()) return reject(RejectReason::malformed, "the input is empty");
  if (u(0) != 0x30) {
    return reject(RejectReason::malformed,
                  "not an authcert: neither PEM ('-----BEGIN CMS-----') nor DER CMS (which starts with byte 0x30)");
  }
  if (der.size() < 2) return reject(RejectReason::truncated, "the input ends inside the first DER header");
  std::size_t len = u(1);
  std::size_t header = 2;
  if (len == 0x80) return {};  // indefinite-length BER: the parser finds the end
  if (len > 0x80) {
    std::size_t n = len & 0x7fU;
    if (n > 4) return reject(RejectReason::malformed, "the DER length field is too large for an authcert");
    if (der.size() < 2 + n) return reject(RejectReason::truncated, "the input ends inside the first DER header");
    len = 0;
    for (std::size_t i = 0; i < n; ++i) len = (len << 8U) | u(2 + i);
    header += n;
  }
  if (header + len > der.size()) {
    return reject(RejectReason::truncated, "the input is " + std::to_string(der.size()) +
                                               " bytes but its DER header announces " + std::to_string(header + len) +
                                               ": the file is cut off; copy the whole authcert");
  }
  if (header + len < der.size()) {
    return reject(RejectReason::malformed, std::to_string(der.size() - header - len) +
                                               " extra bytes after the CMS structure; submit one authcert per file");
  }
  return {};
}

// ---------------------------------------------------------------------------
// The certificates of an authcert, taken out of the CMS before it is parsed
// ---------------------------------------------------------------------------
//
// Parsing a certificate is costly with OpenSSL 3.0 (decoding its public key
// goes through the provider decoders), and an authcert carries the node's
// whole chain. So when the CMS is plain DER, its certificates field is cut
// out: the certificates are identified by the SHA-256 of their bytes and
// parsed once (ChainCache), and the rest of the CMS is parsed without them.
// CMS_set1_signers_certs and X509_verify_cert then get the same certificates,
// in the same order, as the CMS would have given them. Anything unexpected
// (BER indefinite lengths, other certificate choices, a certificate that does
// not parse) takes the ordinary path, which parses everything and reports the
// error exactly as before.

struct Tlv {
  unsigned char tag = 0;
  std::string_view value;  // contents
  std::string_view all;    // tag, length and contents
};

// One definite-length TLV with a single-byte tag from the front of `in`.
std::optional<Tlv> read_tlv(std::string_view& in) {
  auto u = [&](std::size_t i) { return static_cast<unsigned char>(in[i]); };
  if (in.size() < 2 || (u(0) & 0x1fU) == 0x1fU) return std::nullopt;
  std::size_t len = u(1);
  std::size_t header = 2;
  if (len == 0x80) return std::nullopt;  // indefinite length (BER)
  if (len > 0x80) {
    std::size_t n = len & 0x7fU;
    if (n > 4 || in.size() < 2 + n) return std::nullopt;
    len = 0;
    for (std::size_t i = 0; i < n; ++i) len = (len << 8U) | u(2 + i);
    header += n;
  }
  if (len > in.size() - header) return std::nullopt;
  Tlv t{u(0), in.substr(header, len), in.substr(0, header + len)};
  in.remove_prefix(header + len);
  return t;
}

void append_tlv(std::string& out, unsigned char tag, std::string_view value) {
  out.push_back(static_cast<char>(tag));
  std::size_t len = value.size();
  if (len < 0x80) {
    out.push_back(static_cast<char>(len));
  } else {
    unsigned char buf[sizeof(std::size_t)];
    std::size_t n = 0;
    for (std::size_t l = len; l != 0; l >>= 8U) buf[n++] = static_cast<unsigned char>(l & 0xffU);
    out.push_back(static_cast<char>(0x80U | n));
    while (n > 0) out.push_back(static_cast<char>(buf[--n]));
  }
  out.append(value);
}

struct SplitCms {
  std::string without_certs;            // the same ContentInfo minus SignedData.certificates
  std::string_view certs_field;         // the contents of certificates [0]
  std::vector<std::string_view> certs;  // each certificate's DER, in order
};

// ContentInfo { contentType id-signedData, [0] EXPLICIT SignedData { version,
// digestAlgorithms, encapContentInfo, [0] IMPLICIT certificates, rest } }
std::optional<SplitCms> split_certificates(std::string_view der) {
  static constexpr std::string_view kSignedDataOid("\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02", 11);
  std::string_view in = der;
  auto outer = read_tlv(in);
  if (!outer || outer->tag != 0x30 || !in.empty()) return std::nullopt;
  std::string_view body = outer->value;
  auto type = read_tlv(body);
  if (!type || type->all != kSignedDataOid) return std::nullopt;
  auto explicit0 = read_tlv(body);
  if (!explicit0 || explicit0->tag != 0xa0 || !body.empty()) return std::nullopt;
  std::string_view sd_in = explicit0->value;
  auto sd = read_tlv(sd_in);
  if (!sd || sd->tag != 0x30 || !sd_in.empty()) return std::nullopt;
  std::string_view fields = sd->value;
  for (unsigned char tag : {0x02, 0x31, 0x30}) {  // version, digestAlgorithms, encapContentInfo
    auto f = read_tlv(fields);
    if (!f || f->tag != tag) return std::nullopt;
  }
  std::string_view head = sd->value.substr(0, sd->value.size() - fields.size());
  auto certs = read_tlv(fields);
  if (!certs || certs->tag != 0xa0) return std::nullopt;
  SplitCms split;
  split.certs_field = certs->value;
  for (std::string_view c = certs->value; !c.empty();) {
    auto cert = read_tlv(c);
    if (!cert || cert->tag != 0x30) return std::nullopt;  // only plain certificates, no other CertificateChoices
    split.certs.push_back(cert->all);
  }
  if (split.certs.empty()) return std::nullopt;

  std::string sd_fields;
  sd_fields.reserve(head.size() + fields.size());
  sd_fields.append(head).append(fields);
  std::string sd_tlv;
  append_tlv(sd_tlv, 0x30, sd_fields);
  std::string content;
  content.append(type->all);
  append_tlv(content, 0xa0, sd_tlv);
  append_tlv(split.without_certs, 0x30, content);
  return split;
}

// The CMS parsed without its certificates, which come from `certs` (cached
// or parsed here); nullopt sends the caller down the ordinary path.
struct CmsWithCertSet {
  ossl::Cms cms;
  CertSetKey key{};
  std::shared_ptr<const CertSet> certs;
};

std::optional<CmsWithCertSet> parse_with_cert_set(std::string_view der, ChainCache& cache) {
  auto split = split_certificates(der);
  if (!split) return std::nullopt;
  auto key = cert_set_key(split->certs_field);
  if (!key) return std::nullopt;
  CmsWithCertSet out;
  out.key = *key;
  out.certs = cache.find_certs(*key);
  if (!out.certs) out.certs = CertSet::parse(split->certs);
  if (!out.certs) return std::nullopt;
  const auto* p = reinterpret_cast<const unsigned char*>(split->without_certs.data());
  out.cms.reset(d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(split->without_certs.size())));
  if (!out.cms ||
      p != reinterpret_cast<const unsigned char*>(split->without_certs.data()) + split->without_certs.size()) {
    ERR_clear_error();
    return std::nullopt;
  }
  return out;
}

}  // namespace

Result<VerifiedAuthcert> verify_authcert(std::string_view bytes, const PkiStore& pki, std::int64_t now,
                                         const VerifyOptions& options) {
  if (bytes.size() > kMaxAuthcertBytes) {
    return reject(RejectReason::too_large, "the input is " + std::to_string(bytes.size()) + " bytes, more than the " +
                                               std::to_string(kMaxAuthcertBytes) +
                                               " an authcert may have; check that the file is an authcert and that "
                                               "it carries only the node's own certificate chain");
  }
  auto der = to_der(bytes);
  if (!der) return der.error();
  if (auto st = check_der_length(*der); !st) return st.error();

  // Plain DER with plain certificates: the certificates come from the
  // PkiStore's cache (or are parsed once for it); otherwise (or with the
  // cache off) the whole CMS is parsed as it comes.
  ChainCache& cache = pki.chain_cache();
  std::optional<CmsWithCertSet> cached;
  if (cache.enabled()) cached = parse_with_cert_set(*der, cache);
  ossl::Cms cms;
  ossl::X509Stack embedded_owned;  // the ordinary path's certificates
  STACK_OF(X509)* embedded_certs = nullptr;
  if (cached) {
    cms = std::move(cached->cms);
    embedded_certs = cached->certs->stack();
  } else {
    const auto* p = reinterpret_cast<const unsigned char*>(der->data());
    cms.reset(d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(der->size())));
    if (!cms) {
      unsigned long e = ERR_peek_last_error();
      ERR_clear_error();
      int r = ERR_GET_REASON(e);
      if (ERR_GET_LIB(e) == ERR_LIB_ASN1 && (r == ASN1_R_TOO_LONG || r == ASN1_R_HEADER_TOO_LONG)) {
        return reject(RejectReason::truncated, "the CMS structure ends early: the file is cut off");
      }
      return reject(RejectReason::malformed,
                    "not a CMS structure; produce authcerts with 'surrogatectl authcert "
                    "sign' or 'openssl cms -sign -binary -nodetach'");
    }
    if (p != reinterpret_cast<const unsigned char*>(der->data()) + der->size()) {
      return reject(RejectReason::malformed, "extra bytes after the CMS structure; submit one authcert per file");
    }
  }
  if (OBJ_obj2nid(CMS_get0_type(cms.get())) != NID_pkcs7_signed) {
    return reject(RejectReason::malformed, "the CMS structure is not SignedData; sign with 'openssl cms -sign'");
  }
  if (OBJ_obj2nid(CMS_get0_eContentType(cms.get())) != NID_pkcs7_data) {
    return reject(RejectReason::malformed, "the signed content is not plain data (id-data)");
  }
  ASN1_OCTET_STRING** embedded = CMS_get0_content(cms.get());
  if (embedded == nullptr || *embedded == nullptr) {
    return reject(RejectReason::malformed,
                  "the content is detached; sign with 'openssl cms -sign -nodetach' so the authcert carries it");
  }
  STACK_OF(CMS_SignerInfo)* infos = CMS_get0_SignerInfos(cms.get());
  if (infos == nullptr || sk_CMS_SignerInfo_num(infos) != 1) {
    return reject(RejectReason::malformed, "an authcert must have exactly one signer (it has " +
                                               std::to_string(infos == nullptr ? 0 : sk_CMS_SignerInfo_num(infos)) +
                                               ")");
  }
  // Matches the signer to an embedded certificate (the first one that
  // matches, in the authcert's order, either way); the signature is checked below.
  CMS_set1_signers_certs(cms.get(), embedded_certs, 0);
  ERR_clear_error();
  X509* signer = nullptr;
  CMS_SignerInfo_get0_algs(sk_CMS_SignerInfo_value(infos, 0), nullptr, &signer, nullptr, nullptr);
  if (signer == nullptr) {
    return reject(RejectReason::malformed,
                  "the authcert does not carry the signer's certificate; sign with '-signer node.pem' and without "
                  "'-nocerts'");
  }
  if (!cached) {
    embedded_owned.reset(CMS_get1_certs(cms.get()));
    embedded_certs = embedded_owned.get();
  }

  ossl::Bio content_bio(BIO_new(BIO_s_mem()));
  if (CMS_verify(cms.get(), nullptr, nullptr, nullptr, content_bio.get(), CMS_NO_SIGNER_CERT_VERIFY | CMS_BINARY) !=
      1) {
    std::string why = openssl_error();
    ERR_clear_error();
    return reject(RejectReason::bad_signature,
                  "the signature does not match the signed content (" + why +
                      "): the authcert was altered after signing or damaged; get a fresh copy from the node owner");
  }
  char* content_data = nullptr;
  long content_len = BIO_get_mem_data(content_bio.get(), &content_data);
  std::string_view content_text(content_data, content_len > 0 ? static_cast<std::size_t>(content_len) : 0);

  // The chain: from the signer to a trust anchor, at `now`, strict, with CRLs.
  // A verdict cached for exactly these certificates, this signer and depth,
  // in this store, valid at `now`, stands for X509_verify_cert (chain_cache.h).
  VerifiedAuthcert v;
  int signer_index = cached ? cached->certs->index_of(signer) : -1;
  std::optional<std::int64_t> known_chain_not_after;
  if (signer_index >= 0) {
    known_chain_not_after =
        cache.find_verdict(cached->key, signer_index, options.max_chain_depth, pki.generation(), now);
  }
  if (known_chain_not_after) {
    v.chain_not_after = *known_chain_not_after;
  } else {
    ossl::X509StoreCtx ctx(X509_STORE_CTX_new());
    if (!ctx || X509_STORE_CTX_init(ctx.get(), pki.x509_store(), signer, embedded_certs) != 1) {
      return reject(RejectReason::untrusted_chain, "cannot set up certificate verification: " + openssl_error());
    }
    X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
    X509_VERIFY_PARAM_set_time(param, static_cast<time_t>(now));
    unsigned long flags = X509_V_FLAG_X509_STRICT;
    if (pki.revocation_checked()) flags |= X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL;
    X509_VERIFY_PARAM_set_flags(param, flags);
    X509_VERIFY_PARAM_set_depth(param, options.max_chain_depth);
    if (pki.revocation_checked() && pki.crl_mode() == CrlMode::when_present) {
      X509_STORE_CTX_set_verify_cb(ctx.get(), crl_when_present_cb);
    }
    if (X509_verify_cert(ctx.get()) != 1) {
      auto e = chain_error(ctx.get());
      ERR_clear_error();
      return e;  // never cached
    }
    v.chain_not_after = INT64_MAX;
    STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(ctx.get());
    for (int i = 0; i < sk_X509_num(chain); ++i) {
      v.chain_not_after = std::min(v.chain_not_after, cert_not_after(sk_X509_value(chain, i)));
    }
    if (signer_index >= 0) {
      cache.remember(cached->key, cached->certs, signer_index, options.max_chain_depth, pki.generation(), now,
                     v.chain_not_after);
    }
  }

  auto content = parse_authcert_content(content_text);
  if (!content) {
    return reject(RejectReason::bad_content,
                  content.error().message + " (the signature is fine: the node owner wrote an invalid authcert)");
  }
  if (auto st = check_signer(signer, content->destination); !st) return st.error();

  if (now + options.clock_skew_seconds < content->not_before) {
    return reject(RejectReason::not_yet_valid,
                  "the authcert is valid only from " + format_utc(content->not_before) + " (now " + format_utc(now) +
                      "); submit it again then, or ask the node owner for one that starts earlier");
  }
  if (now >= content->not_after) {
    return reject(RejectReason::expired, "the authcert expired at " + format_utc(content->not_after) + " (now " +
                                             format_utc(now) + "); ask the node owner for a new one");
  }
  if (options.expected_user_fingerprint && *options.expected_user_fingerprint != content->user_fingerprint) {
    return reject(RejectReason::wrong_user, "the authcert is for the user key " + content->user_fingerprint +
                                                ", not for " + *options.expected_user_fingerprint +
                                                "; ask the node owner to sign one for your key's fingerprint");
  }
  v.content = *content;
  v.signer_subject = subject_text(signer);
  v.signer_fingerprint = cert_fingerprint(signer);
  v.signer_serial = serial_hex(signer);
  v.signer_addresses = san_addresses(signer);
  v.effective_not_after = std::min(v.content.not_after, v.chain_not_after);
  return v;
}

Result<std::string> sign_authcert(const AuthcertContent& content, std::string_view node_key_pem,
                                  std::string_view node_cert_pem, const std::vector<std::string>& chain_pems) {
  std::string text = format_authcert_content(content);
  auto reread = parse_authcert_content(text);
  if (!reread) return with_context("cannot sign this authcert", reread.error());
  if (!(*reread == content)) {
    return make_error(
        "cannot sign this authcert: its fields do not survive formatting (ports need protocols tcp or udp, "
        "protocols must be sorted, ports sorted); fix the request");
  }
  auto key = private_key_from_pem(node_key_pem, "node key");
  if (!key) return key.error();
  auto cert = cert_from_pem(node_cert_pem, "node certificate");
  if (!cert) return cert.error();
  if (X509_check_private_key(cert->get(), key->get()) != 1) {
    ERR_clear_error();
    return make_error(
        "the node key does not belong to the node certificate; pass the key the certificate was "
        "issued for");
  }
  if (auto st = check_signer(cert->get(), content.destination); !st) {
    return with_context("this node certificate cannot sign the authcert", st.error());
  }
  ossl::X509Stack chain(sk_X509_new_null());
  for (std::size_t i = 0; i < chain_pems.size(); ++i) {
    auto certs = certs_from_pem(chain_pems[i], "chain file #" + std::to_string(i + 1));
    if (!certs) return certs.error();
    for (auto& c : *certs) {
      if (sk_X509_push(chain.get(), c.get()) <= 0) return make_error("out of memory");
      (void)c.release();  // the stack owns it now
    }
  }
  ossl::Bio in(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  ossl::Cms cms(CMS_sign(cert->get(), key->get(), chain.get(), in.get(), CMS_BINARY | CMS_NOSMIMECAP));
  if (!cms) {
    return make_error("signing failed: " + openssl_error() +
                      " (OpenSSL 3.0 cannot make CMS signatures with Ed25519 keys; use an ECDSA P-256 node key)");
  }
  ossl::Bio out(BIO_new(BIO_s_mem()));
  // Without CMS_STREAM this writes the finished structure (PEM_write_bio_CMS needs pem.h before cms.h).
  if (PEM_write_bio_CMS_stream(out.get(), cms.get(), nullptr, 0) != 1)
    return make_error("cannot encode the authcert: " + openssl_error());
  char* data = nullptr;
  long len = BIO_get_mem_data(out.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

}  // namespace sg::certs
