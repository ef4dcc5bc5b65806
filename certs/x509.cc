#include "certs/x509.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <algorithm>
#include <ctime>
#include <set>

#include "certs/identity.h"

namespace sg::certs {
namespace {

constexpr std::size_t kMaxPem = 1024 * 1024;

std::string bio_text(BIO* bio) {
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  if (len <= 0 || data == nullptr) return {};
  return {data, static_cast<std::size_t>(len)};
}

ossl::Bio mem_bio(std::string_view text) {
  return ossl::Bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

// Ed25519 signs the message itself; every other key type signs a SHA-256 digest.
const EVP_MD* digest_for(EVP_PKEY* key) {
  return EVP_PKEY_get_base_id(key) == EVP_PKEY_ED25519 ? nullptr : EVP_sha256();
}

Result<ossl::Asn1Integer> serial_from_hex(const std::string& hex) {
  BIGNUM* raw = nullptr;
  if (hex.empty() || BN_hex2bn(&raw, hex.c_str()) != static_cast<int>(hex.size())) {
    BN_free(raw);
    return make_error("serial '" + hex + "' is not a hex number");
  }
  ossl::Bignum bn(raw);
  ossl::Asn1Integer serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
  if (!serial) return make_error("cannot encode serial: " + openssl_error());
  return serial;
}

Status add_extension(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  ossl::X509Ext ext(X509V3_EXT_nconf_nid(nullptr, ctx, nid, value.c_str()));
  if (!ext) {
    return make_error(std::string("cannot build extension ") + OBJ_nid2sn(nid) + " = '" + value +
                      "': " + openssl_error());
  }
  if (X509_add_ext(cert, ext.get(), -1) != 1) return make_error("cannot add extension: " + openssl_error());
  return {};
}

int mask_length(const unsigned char* mask, int len) {
  int bits = 0;
  bool ended = false;
  for (int i = 0; i < len; ++i) {
    for (int b = 7; b >= 0; --b) {
      bool one = ((mask[i] >> b) & 1U) != 0;
      if (one && ended) return -1;  // not contiguous: not a prefix
      if (one) ++bits;
      if (!one) ended = true;
    }
  }
  return bits;
}

}  // namespace

Result<std::vector<ossl::X509Ptr>> certs_from_pem(std::string_view pem, const std::string& origin) {
  if (pem.size() > kMaxPem) return make_error(origin + ": too large for a certificate file (over 1 MiB)");
  auto bio = mem_bio(pem);
  std::vector<ossl::X509Ptr> out;
  while (true) {
    ossl::X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!cert) break;
    out.push_back(std::move(cert));
  }
  ERR_clear_error();  // the loop always ends with "no start line"
  if (out.empty()) {
    return make_error(origin + ": no PEM certificate found (expected '-----BEGIN CERTIFICATE-----')");
  }
  return out;
}

Result<ossl::X509Ptr> cert_from_pem(std::string_view pem, const std::string& origin) {
  auto all = certs_from_pem(pem, origin);
  if (!all) return all.error();
  return std::move(all->front());
}

Result<std::vector<ossl::X509Crl>> crls_from_pem(std::string_view pem, const std::string& origin) {
  if (pem.size() > 64 * kMaxPem) return make_error(origin + ": too large for a CRL file (over 64 MiB)");
  auto bio = mem_bio(pem);
  std::vector<ossl::X509Crl> out;
  while (true) {
    ossl::X509Crl crl(PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr));
    if (!crl) break;
    out.push_back(std::move(crl));
  }
  ERR_clear_error();
  if (out.empty()) return make_error(origin + ": no PEM CRL found (expected '-----BEGIN X509 CRL-----')");
  return out;
}

std::string cert_to_pem(X509* cert) {
  ossl::Bio bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), cert);
  return bio_text(bio.get());
}

std::string crl_to_pem(X509_CRL* crl) {
  ossl::Bio bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509_CRL(bio.get(), crl);
  return bio_text(bio.get());
}

std::string private_key_to_pem(EVP_PKEY* key) {
  ossl::Bio bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  return bio_text(bio.get());
}

Result<ossl::PKey> private_key_from_pem(std::string_view pem, const std::string& origin) {
  if (pem.size() > 64 * 1024) return make_error(origin + ": too large to be a private key");
  auto bio = mem_bio(pem);
  ossl::PKey key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) {
    ERR_clear_error();
    return make_error(origin + ": not an unencrypted PEM private key (expected '-----BEGIN PRIVATE KEY-----')");
  }
  return key;
}

std::string cert_fingerprint(X509* cert) {
  unsigned char* der = nullptr;
  int len = i2d_X509(cert, &der);
  if (len <= 0) return "sha256:invalid";
  std::string fp = "sha256:" + sha256_hex(std::string_view(reinterpret_cast<char*>(der), static_cast<size_t>(len)));
  OPENSSL_free(der);
  return fp;
}

namespace {
std::string name_text(const X509_NAME* name) {
  ossl::Bio bio(BIO_new(BIO_s_mem()));
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
  return bio_text(bio.get());
}
}  // namespace

std::string subject_text(X509* cert) { return name_text(X509_get_subject_name(cert)); }
std::string issuer_text(X509* cert) { return name_text(X509_get_issuer_name(cert)); }
std::string crl_issuer_text(X509_CRL* crl) { return name_text(X509_CRL_get_issuer(crl)); }

std::string serial_hex(const ASN1_INTEGER* serial) {
  ossl::Bignum bn(ASN1_INTEGER_to_BN(serial, nullptr));
  if (!bn) return "?";
  char* hex = BN_bn2hex(bn.get());
  std::string out(hex);
  OPENSSL_free(hex);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  auto nz = out.find_first_not_of('0');
  if (nz == std::string::npos) return "0";
  return out.substr(nz);
}

std::string serial_hex(X509* cert) { return serial_hex(X509_get0_serialNumber(cert)); }

std::optional<std::int64_t> asn1_time_to_unix(const ASN1_TIME* t) {
  std::tm tm{};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) return std::nullopt;
  return static_cast<std::int64_t>(timegm(&tm));
}

std::int64_t cert_not_before(X509* cert) { return asn1_time_to_unix(X509_get0_notBefore(cert)).value_or(INT64_MAX); }
std::int64_t cert_not_after(X509* cert) { return asn1_time_to_unix(X509_get0_notAfter(cert)).value_or(0); }

std::vector<IpAddress> san_addresses(X509* cert) {
  std::vector<IpAddress> out;
  int crit = 0;
  ossl::GeneralNames names(static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, &crit, nullptr)));
  if (!names) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names.get(), i);
    if (gn->type != GEN_IPADD) continue;
    const ASN1_OCTET_STRING* ip = gn->d.iPAddress;
    IpAddress a;
    if (ip->length == 4) {
      a.family = Family::v4;
    } else if (ip->length == 16) {
      a.family = Family::v6;
    } else {
      continue;
    }
    std::copy_n(ip->data, ip->length, a.bytes.begin());
    out.push_back(a);
  }
  return out;
}

bool addresses_cover(const std::vector<IpAddress>& addresses, const Prefix& destination) {
  int host_bits = destination.address.bit_length() - destination.length;
  if (host_bits > 16) return false;  // nobody lists 65536 addresses one by one
  std::set<IpAddress> inside;
  for (const auto& a : addresses) {
    if (a.family == destination.family() && destination.contains(a)) inside.insert(a);
  }
  return inside.size() == (std::size_t{1} << host_bits);
}

std::string random_hex(std::size_t bytes) {
  std::vector<unsigned char> buf(bytes);
  if (RAND_bytes(buf.data(), static_cast<int>(buf.size())) != 1) std::abort();  // no entropy: nothing is safe
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : buf) {
    out += hex[c >> 4U];
    out += hex[c & 0xfU];
  }
  return out;
}

std::string random_serial_hex() {
  std::string hex = random_hex(16);
  // Clear the top bit (positive) and set the next one (always 16 bytes long, never zero).
  static const char* first = "4567";
  hex[0] = first[(hex[0] - '0') & 3];
  return hex;
}

std::string san_config(const std::vector<IpAddress>& addresses) {
  std::string out;
  for (const auto& a : addresses) {
    if (!out.empty()) out += ",";
    out += "IP:" + a.to_string();
  }
  return out;
}

std::string name_constraints_config(const std::vector<Prefix>& permitted) {
  std::string out = "critical";
  for (const auto& p : permitted) {
    IpAddress mask;
    mask.family = p.family();
    for (int bit = 0; bit < p.length; ++bit) mask.bytes[bit / 8] |= static_cast<std::uint8_t>(0x80U >> (bit % 8));
    out += ",permitted;IP:" + p.address.to_string() + "/" + mask.to_string();
  }
  return out;
}

std::vector<Prefix> permitted_ip_subtrees(X509* cert) {
  std::vector<Prefix> out;
  int crit = 0;
  ossl::NameConstraints nc(
      static_cast<NAME_CONSTRAINTS*>(X509_get_ext_d2i(cert, NID_name_constraints, &crit, nullptr)));
  if (!nc || nc->permittedSubtrees == nullptr) return out;
  for (int i = 0; i < sk_GENERAL_SUBTREE_num(nc->permittedSubtrees); ++i) {
    const GENERAL_SUBTREE* st = sk_GENERAL_SUBTREE_value(nc->permittedSubtrees, i);
    if (st->base->type != GEN_IPADD) continue;
    const ASN1_OCTET_STRING* ip = st->base->d.iPAddress;
    if (ip->length != 8 && ip->length != 32) continue;
    int half = ip->length / 2;
    int len = mask_length(ip->data + half, half);
    if (len < 0) continue;
    Prefix p;
    p.address.family = half == 4 ? Family::v4 : Family::v6;
    std::copy_n(ip->data, half, p.address.bytes.begin());
    p.length = len;
    out.push_back(p);
  }
  return out;
}

Result<ossl::X509Ptr> build_cert(const CertSpec& spec, EVP_PKEY* subject_key, X509* issuer, EVP_PKEY* issuer_key) {
  ossl::X509Ptr cert(X509_new());
  if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1) return make_error("cannot make a certificate");
  auto serial = serial_from_hex(spec.serial_hex.empty() ? random_serial_hex() : spec.serial_hex);
  if (!serial) return serial.error();
  X509_set_serialNumber(cert.get(), serial->get());
  ossl::X509Name name(X509_NAME_new());
  if (X509_NAME_add_entry_by_txt(name.get(), "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(spec.common_name.c_str()), -1, -1, 0) != 1) {
    return make_error("cannot set the certificate name '" + spec.common_name + "': " + openssl_error());
  }
  X509_set_subject_name(cert.get(), name.get());
  X509_set_issuer_name(cert.get(), issuer != nullptr ? X509_get_subject_name(issuer) : name.get());
  if (ASN1_TIME_set(X509_getm_notBefore(cert.get()), static_cast<time_t>(spec.not_before)) == nullptr ||
      ASN1_TIME_set(X509_getm_notAfter(cert.get()), static_cast<time_t>(spec.not_after)) == nullptr) {
    return make_error("cannot set the certificate validity: " + openssl_error());
  }
  X509_set_pubkey(cert.get(), subject_key);
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer != nullptr ? issuer : cert.get(), cert.get(), nullptr, nullptr, 0);
  if (auto st = add_extension(cert.get(), &ctx, NID_subject_key_identifier, "hash"); !st) return st.error();
  if (auto st = add_extension(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always"); !st) return st.error();
  for (const auto& [nid, value] : spec.extensions) {
    if (auto st = add_extension(cert.get(), &ctx, nid, value); !st) return st.error();
  }
  if (X509_sign(cert.get(), issuer_key, digest_for(issuer_key)) <= 0) {
    return make_error("cannot sign the certificate: " + openssl_error());
  }
  return cert;
}

Result<ossl::X509Crl> build_crl(X509* issuer, EVP_PKEY* issuer_key, const std::vector<RevokedEntry>& revoked,
                                std::int64_t this_update, std::int64_t next_update, std::uint64_t crl_number) {
  ossl::X509Crl crl(X509_CRL_new());
  if (!crl || X509_CRL_set_version(crl.get(), X509_CRL_VERSION_2) != 1 ||
      X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(issuer)) != 1) {
    return make_error("cannot make a CRL: " + openssl_error());
  }
  ossl::Asn1Time last(ASN1_TIME_set(nullptr, static_cast<time_t>(this_update)));
  ossl::Asn1Time next(ASN1_TIME_set(nullptr, static_cast<time_t>(next_update)));
  if (!last || !next || X509_CRL_set1_lastUpdate(crl.get(), last.get()) != 1 ||
      X509_CRL_set1_nextUpdate(crl.get(), next.get()) != 1) {
    return make_error("cannot set the CRL dates: " + openssl_error());
  }
  for (const auto& r : revoked) {
    auto serial = serial_from_hex(r.serial_hex);
    if (!serial) return serial.error();
    ossl::X509Revoked entry(X509_REVOKED_new());
    ossl::Asn1Time when(ASN1_TIME_set(nullptr, static_cast<time_t>(r.revoked_at)));
    if (!entry || !when || X509_REVOKED_set_serialNumber(entry.get(), serial->get()) != 1 ||
        X509_REVOKED_set_revocationDate(entry.get(), when.get()) != 1 ||
        X509_CRL_add0_revoked(crl.get(), entry.get()) != 1) {
      return make_error("cannot add a revoked serial to the CRL: " + openssl_error());
    }
    (void)entry.release();  // the CRL owns it now
  }
  ossl::Asn1Integer number(ASN1_INTEGER_new());
  ASN1_INTEGER_set_uint64(number.get(), crl_number);
  if (X509_CRL_add1_ext_i2d(crl.get(), NID_crl_number, number.get(), 0, 0) != 1) {
    return make_error("cannot add the CRL number: " + openssl_error());
  }
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, nullptr, nullptr, crl.get(), 0);
  ossl::X509Ext akid(X509V3_EXT_nconf_nid(nullptr, &ctx, NID_authority_key_identifier, "keyid:always"));
  if (!akid || X509_CRL_add_ext(crl.get(), akid.get(), -1) != 1) {
    return make_error("cannot add the CRL authority key identifier: " + openssl_error());
  }
  X509_CRL_sort(crl.get());
  if (X509_CRL_sign(crl.get(), issuer_key, digest_for(issuer_key)) <= 0) {
    return make_error("cannot sign the CRL: " + openssl_error());
  }
  return crl;
}

}  // namespace sg::certs
