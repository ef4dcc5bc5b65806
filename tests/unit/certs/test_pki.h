// A throwaway PKI for the certs tests, built with the OpenSSL API: a root, a
// name-constrained intermediate and node certificates, plus the helpers to
// make deliberately broken ones.
#pragma once

#include <gtest/gtest.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "certs/authcert.h"
#include "certs/identity.h"
#include "certs/pki.h"
#include "certs/x509.h"

namespace sg::certs::testing {

// 2027-01-15T08:00:00Z: fixed so every validity window is deterministic.
inline constexpr std::int64_t kNow = 1'800'000'000;
inline constexpr std::int64_t kDay = 86400;

struct TestCert {
  ossl::PKey key;
  ossl::X509Ptr cert;
  [[nodiscard]] std::string pem() const { return cert_to_pem(cert.get()); }
  [[nodiscard]] std::string key_pem() const { return private_key_to_pem(key.get()); }
  [[nodiscard]] X509* get() const { return cert.get(); }
};

inline ossl::PKey p256() { return ossl::PKey(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256")); }

// Signs with a fresh P-256 key; `issuer` null makes it self-signed.
inline TestCert make_cert(const std::string& cn, std::vector<std::pair<int, std::string>> extensions,
                          const TestCert* issuer, std::int64_t not_before = kNow - 30 * kDay,
                          std::int64_t not_after = kNow + 365 * kDay) {
  TestCert t;
  t.key = p256();
  CertSpec spec;
  spec.common_name = cn;
  spec.not_before = not_before;
  spec.not_after = not_after;
  spec.extensions = std::move(extensions);
  auto cert = build_cert(spec, t.key.get(), issuer != nullptr ? issuer->get() : nullptr,
                         issuer != nullptr ? issuer->key.get() : t.key.get());
  EXPECT_TRUE(cert.ok()) << cert.error().describe();
  if (cert.ok()) t.cert = std::move(*cert);
  return t;
}

inline std::vector<std::pair<int, std::string>> ca_extensions(const std::string& name_constraints = "",
                                                              const std::string& pathlen = "") {
  std::vector<std::pair<int, std::string>> ext = {
      {NID_basic_constraints, "critical,CA:TRUE" + (pathlen.empty() ? "" : ",pathlen:" + pathlen)},
      {NID_key_usage, "critical,keyCertSign,cRLSign"}};
  if (!name_constraints.empty()) ext.emplace_back(NID_name_constraints, name_constraints);
  return ext;
}

inline std::vector<std::pair<int, std::string>> node_extensions(
    const std::string& san, const std::string& key_usage = "critical,digitalSignature", const std::string& eku = "") {
  std::vector<std::pair<int, std::string>> ext = {{NID_basic_constraints, "critical,CA:FALSE"}};
  if (!key_usage.empty()) ext.emplace_back(NID_key_usage, key_usage);
  if (!san.empty()) ext.emplace_back(NID_subject_alt_name, san);
  if (!eku.empty()) ext.emplace_back(NID_ext_key_usage, eku);
  return ext;
}

inline std::string crl_of(const TestCert& ca, const std::vector<std::string>& revoked_serials,
                          std::int64_t this_update = kNow - kDay, std::int64_t next_update = kNow + 7 * kDay) {
  std::vector<RevokedEntry> entries;
  entries.reserve(revoked_serials.size());
  for (const auto& s : revoked_serials) entries.push_back({s, this_update});
  auto crl = build_crl(ca.get(), ca.key.get(), entries, this_update, next_update, 1);
  EXPECT_TRUE(crl.ok()) << crl.error().describe();
  return crl.ok() ? crl_to_pem(crl->get()) : std::string();
}

inline PkiStore store_of(std::vector<std::string> anchors, std::vector<std::string> crls = {},
                         CrlMode mode = CrlMode::require_all) {
  PkiConfig config;
  config.extra_ca_pems = std::move(anchors);
  config.extra_crl_pems = std::move(crls);
  config.crl_mode = mode;
  auto store = PkiStore::load(config);
  EXPECT_TRUE(store.ok()) << store.error().describe();
  return store.ok() ? std::move(*store) : PkiStore();
}

// CMS SignedData over arbitrary bytes, bypassing sign_authcert's own checks
// (a forger or a sloppy node owner is not bound by them).
inline std::string raw_sign(std::string_view text, const TestCert& signer, const std::vector<const TestCert*>& chain,
                            unsigned int extra_flags = 0) {
  ossl::X509StackView stack(sk_X509_new_null());
  for (const auto* c : chain) sk_X509_push(stack.get(), c->get());
  ossl::Bio in(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  ossl::Cms cms(CMS_sign(signer.get(), signer.key.get(), stack.get(), in.get(), CMS_BINARY | extra_flags));
  EXPECT_TRUE(cms) << openssl_error();
  ossl::Bio out(BIO_new(BIO_s_mem()));
  PEM_write_bio_CMS_stream(out.get(), cms.get(), nullptr, 0);
  char* data = nullptr;
  long len = BIO_get_mem_data(out.get(), &data);
  return {data, static_cast<std::size_t>(len)};
}

// PEM CMS -> DER bytes.
inline std::string pem_to_der(const std::string& pem) {
  ossl::Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  char* name = nullptr;
  char* header = nullptr;
  unsigned char* data = nullptr;
  long len = 0;
  EXPECT_EQ(PEM_read_bio(bio.get(), &name, &header, &data, &len), 1);
  std::string der(reinterpret_cast<char*>(data), static_cast<std::size_t>(len));
  OPENSSL_free(name);
  OPENSSL_free(header);
  OPENSSL_free(data);
  return der;
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/sg-certs-XXXXXX";
    path_ = ::mkdtemp(tmpl) != nullptr ? tmpl : "";
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] std::string file(const std::string& name) const { return path_ + "/" + name; }
  std::string write(const std::string& name, const std::string& content) const {
    std::ofstream(file(name), std::ios::binary) << content;
    return file(name);
  }
  [[nodiscard]] std::string read(const std::string& name) const {
    std::ifstream in(file(name), std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  std::string path_;
};

inline std::string reason(const Error& e) {
  auto r = reject_reason_of(e);
  return r ? std::string(to_string(*r)) : "(no reason) " + e.message;
}

}  // namespace sg::certs::testing
