// The host owner's PKI: the CA certificates trusted to vouch for node
// addresses (trust anchors) and the CRLs that revoke what they issued. Files
// come from surrogated.toml; a reload builds a new store and the caller swaps
// it in only when it loaded, so a broken file never drops the running store.
// Each store owns a chain-verdict cache (certs/chain_cache.h) that lives and
// dies with it: a reload starts with an empty one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "certs/chain_cache.h"
#include "common/raii/openssl.h"
#include "common/result.h"

namespace sg::certs {

// How revocation is checked once any CRL is configured (with no CRL at all,
// nothing is checked and revocation_checked() is false so the daemon can warn).
enum class CrlMode {
  // Every certificate in a chain, root included, needs a current CRL from its
  // issuer; a missing or stale CRL rejects the authcert (fail closed).
  require_all,
  // Only CAs that have a CRL configured are checked; a stale CRL still rejects.
  when_present,
};

struct PkiConfig {
  std::vector<std::string> ca_files;   // PEM, each may hold several CA certificates
  std::vector<std::string> crl_files;  // PEM, each may hold several CRLs
  // In-memory additions (the host CA's certificate and CRL), same format.
  std::vector<std::string> extra_ca_pems;
  std::vector<std::string> extra_crl_pems;
  CrlMode crl_mode = CrlMode::require_all;
  // Bounds of the chain-verdict cache; 0 entries disables it (every
  // verification then parses and verifies the whole chain again).
  std::size_t chain_cache_entries = ChainCacheLimits{}.max_entries;
  std::size_t chain_cache_der_bytes = ChainCacheLimits{}.max_der_bytes;
};

struct AnchorInfo {
  std::string subject;
  std::string fingerprint;  // "sha256:" + hex of the DER certificate
  std::int64_t not_after = 0;
  std::string origin;  // file it came from
};

class PkiStore {
 public:
  // An empty store: trusts nothing, so every authcert fails as untrusted_chain.
  PkiStore();
  // Reads every file; any unreadable file, non-CA anchor or unparsable CRL is
  // an error naming the file (and nothing is half-loaded).
  static Result<PkiStore> load(const PkiConfig& config);
  // The same files again (after the owner replaced a CRL, say).
  [[nodiscard]] Result<PkiStore> reload() const { return load(config_); }

  [[nodiscard]] const PkiConfig& config() const { return config_; }
  [[nodiscard]] const std::vector<AnchorInfo>& anchors() const { return anchors_; }
  [[nodiscard]] std::size_t crl_count() const { return crl_count_; }
  [[nodiscard]] bool revocation_checked() const { return crl_count_ > 0; }
  [[nodiscard]] CrlMode crl_mode() const { return config_.crl_mode; }
  // Shared, never modified after load (do not add to it: the chain cache
  // would then stop being used); X509_STORE is safe to use from several
  // verifications at once.
  [[nodiscard]] X509_STORE* x509_store() const { return store_.get(); }
  // Different for every load (and reload): what the chain cache's verdicts
  // are stamped with.
  [[nodiscard]] std::uint64_t generation() const { return generation_; }
  // Shared by copies of this store (they share the X509_STORE too);
  // internally locked, so usable through a const store.
  [[nodiscard]] ChainCache& chain_cache() const { return *cache_; }
  [[nodiscard]] ChainCacheStats chain_cache_stats() const { return cache_->stats(); }

 private:
  PkiConfig config_;
  std::shared_ptr<X509_STORE> store_;
  std::uint64_t generation_ = 0;
  std::shared_ptr<ChainCache> cache_;
  std::vector<AnchorInfo> anchors_;
  std::size_t crl_count_ = 0;
};

}  // namespace sg::certs
