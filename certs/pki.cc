#include "certs/pki.h"

#include <atomic>
#include <fstream>
#include <sstream>

#include "certs/identity.h"
#include "certs/x509.h"

namespace sg::certs {
namespace {

constexpr std::size_t kMaxPkiFile = 64 * 1024 * 1024;

Result<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_sys_error("cannot read " + path + " (check the path in surrogated.toml and its permissions)");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (ss.str().size() > kMaxPkiFile) return make_error(path + " is larger than 64 MiB; this is not a PKI file");
  return ss.str();
}

std::shared_ptr<X509_STORE> new_store() { return {X509_STORE_new(), X509_STORE_free}; }

std::uint64_t next_generation() {
  static std::atomic<std::uint64_t> counter{0};
  return ++counter;
}

// A fresh generation and an empty chain cache for the store's current
// contents: every time X509_verify_cert compares the verification time with
// (certificate notBefore/notAfter, CRL lastUpdate/nextUpdate).
std::shared_ptr<ChainCache> new_cache(const PkiConfig& config, X509_STORE* store, std::uint64_t generation) {
  std::vector<std::int64_t> times;
  bool known = true;
  auto add = [&](const ASN1_TIME* t) {
    if (t == nullptr) return;
    if (auto v = asn1_time_to_unix(t)) {
      times.push_back(*v);
    } else {
      known = false;
    }
  };
  STACK_OF(X509_OBJECT)* objects = X509_STORE_get0_objects(store);
  for (int i = 0; objects != nullptr && i < sk_X509_OBJECT_num(objects); ++i) {
    X509_OBJECT* obj = sk_X509_OBJECT_value(objects, i);
    if (X509* cert = X509_OBJECT_get0_X509(obj); cert != nullptr) {
      add(X509_get0_notBefore(cert));
      add(X509_get0_notAfter(cert));
    } else if (X509_CRL* crl = X509_OBJECT_get0_X509_CRL(obj); crl != nullptr) {
      add(X509_CRL_get0_lastUpdate(crl));
      add(X509_CRL_get0_nextUpdate(crl));
    } else {
      known = false;  // an object kind this code does not know the times of
    }
  }
  ChainCacheLimits limits{config.chain_cache_entries, config.chain_cache_der_bytes};
  return std::make_shared<ChainCache>(limits, generation, store, std::move(times), known);
}

}  // namespace

PkiStore::PkiStore()
    : store_(new_store()), generation_(next_generation()), cache_(new_cache(config_, store_.get(), generation_)) {}

Result<PkiStore> PkiStore::load(const PkiConfig& config) {
  PkiStore pki;
  pki.config_ = config;

  auto add_anchors = [&](std::string_view pem, const std::string& origin) -> Status {
    auto certs = certs_from_pem(pem, origin);
    if (!certs) return certs.error();
    for (auto& cert : *certs) {
      // A non-CA anchor would let one node certificate vouch for others.
      if (X509_check_ca(cert.get()) == 0) {
        return make_error(origin + ": '" + subject_text(cert.get()) +
                          "' is not a CA certificate (no basicConstraints CA:TRUE); list only CA "
                          "certificates as trust anchors, never node certificates");
      }
      if (X509_STORE_add_cert(pki.store_.get(), cert.get()) != 1) {
        auto err = openssl_error();
        // The same CA listed twice is harmless.
        if (err.find("cert already in hash table") == std::string::npos) {
          return make_error(origin + ": cannot add '" + subject_text(cert.get()) + "': " + err);
        }
      }
      pki.anchors_.push_back(
          AnchorInfo{subject_text(cert.get()), cert_fingerprint(cert.get()), cert_not_after(cert.get()), origin});
    }
    return {};
  };
  auto add_crls = [&](std::string_view pem, const std::string& origin) -> Status {
    auto crls = crls_from_pem(pem, origin);
    if (!crls) return crls.error();
    for (auto& crl : *crls) {
      if (X509_CRL_get0_nextUpdate(crl.get()) == nullptr) {
        // Without nextUpdate nobody can tell a stale CRL from a current one.
        return make_error(origin + ": the CRL of '" + crl_issuer_text(crl.get()) +
                          "' has no nextUpdate; issue CRLs with a nextUpdate (openssl ca -gencrl -crldays N)");
      }
      if (X509_STORE_add_crl(pki.store_.get(), crl.get()) != 1) {
        return make_error(origin + ": cannot add CRL: " + openssl_error());
      }
      ++pki.crl_count_;
    }
    return {};
  };

  for (const auto& path : config.ca_files) {
    auto text = read_file(path);
    if (!text) return with_context("trust anchors", text.error());
    if (auto st = add_anchors(*text, path); !st) return st.error();
  }
  for (std::size_t i = 0; i < config.extra_ca_pems.size(); ++i) {
    if (auto st = add_anchors(config.extra_ca_pems[i], "built-in CA #" + std::to_string(i + 1)); !st) {
      return st.error();
    }
  }
  for (const auto& path : config.crl_files) {
    auto text = read_file(path);
    if (!text) return with_context("CRLs", text.error());
    if (auto st = add_crls(*text, path); !st) return st.error();
  }
  for (std::size_t i = 0; i < config.extra_crl_pems.size(); ++i) {
    if (auto st = add_crls(config.extra_crl_pems[i], "built-in CRL #" + std::to_string(i + 1)); !st) {
      return st.error();
    }
  }
  // The contents are final: a new generation, and a cache that knows them.
  pki.generation_ = next_generation();
  pki.cache_ = new_cache(config, pki.store_.get(), pki.generation_);
  return pki;
}

}  // namespace sg::certs
