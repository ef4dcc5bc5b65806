// The chain-verdict cache of a PkiStore: what verify_authcert learnt about an
// authcert's embedded certificates (parsed once, and whether the signer
// chains to a trust anchor), reused by later authcerts that carry exactly the
// same certificates. See docs/authcert.md, "Verification cache".
//
// Why it is exact, not an approximation: X509_verify_cert is a function of
// the trust store (anchors and CRLs), the untrusted certificates, the signer,
// the flags and depth, and the verification time. The store never changes
// under one cache (a reload builds a new PkiStore, hence a new cache; a
// generation number and the store's object count guard that), the
// certificates are identified by the SHA-256 of their exact DER bytes, and
// the flags and depth are part of the key. The time enters only through
// comparisons with the notBefore/notAfter of certificates and the
// lastUpdate/nextUpdate of CRLs. So a verdict is stored with the interval
// around the verification time in which none of those comparisons, for any
// certificate or CRL in the store or in the authcert, can change its outcome;
// inside that interval a new X509_verify_cert would give the same answer.
//
// Only successful chain verifications are stored. Every check on the
// authcert itself (its signature, content, validity window, the signer's key
// usage and address coverage, the user) runs on every verification.
//
// Bounded: at most `max_entries` certificate sets and `max_der_bytes` bytes
// of certificate DER, least recently used evicted first, so submitting many
// distinct certificates cannot grow memory; and a certificate set enters the
// cache only after its chain verified, so junk cannot evict good entries.
//
// Thread-safe: every member takes an internal mutex; the cached certificate
// objects are only read once inserted. (The daemon is single-threaded.)
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/raii/openssl.h"

namespace sg::certs {

// SHA-256 of the CMS certificates field (every embedded certificate's DER, in order).
using CertSetKey = std::array<unsigned char, 32>;
// nullopt only if SHA-256 is unavailable (then nothing is cached).
std::optional<CertSetKey> cert_set_key(std::string_view certificates_der);

// The embedded certificates of an authcert, parsed. Immutable once built.
class CertSet {
 public:
  // Parses each DER certificate; null when one does not parse exactly (the
  // caller then takes the ordinary path, which reports the error).
  static std::shared_ptr<const CertSet> parse(const std::vector<std::string_view>& ders);

  // Owns a reference to every certificate, in the authcert's order.
  [[nodiscard]] STACK_OF(X509) * stack() const { return stack_.get(); }
  [[nodiscard]] int index_of(const X509* cert) const;
  [[nodiscard]] std::size_t der_bytes() const { return der_bytes_; }
  // Every notBefore and notAfter, sorted; empty with times_known() false
  // when one could not be read (then no verdict is ever cached for the set).
  [[nodiscard]] const std::vector<std::int64_t>& times() const { return times_; }
  [[nodiscard]] bool times_known() const { return times_known_; }

 private:
  ossl::X509Stack stack_;
  std::size_t der_bytes_ = 0;
  std::vector<std::int64_t> times_;
  bool times_known_ = true;
};

struct ChainCacheLimits {
  std::size_t max_entries = 1024;                            // 0 disables the cache
  std::size_t max_der_bytes = std::size_t{4} * 1024 * 1024;  // certificate DER held, summed over entries
};

struct ChainCacheStats {
  std::size_t entries = 0;
  std::size_t der_bytes = 0;
  std::uint64_t chain_hits = 0;    // X509_verify_cert skipped: a stored verdict applied
  std::uint64_t chain_misses = 0;  // looked up, no applicable verdict: X509_verify_cert ran
  std::uint64_t cert_hits = 0;     // the embedded certificates were not parsed again
  std::uint64_t evictions = 0;
};

// The interval [from, until) around `now` in which `now`'s order relative to
// every value of `sorted_times` (compared as "<", "<=", ">" or ">=") stays
// the same.
struct TimeWindow {
  std::int64_t from = INT64_MIN;
  std::int64_t until = INT64_MAX;
};
TimeWindow stable_window(const std::vector<std::int64_t>& sorted_times, std::int64_t now);

class ChainCache {
 public:
  // `store_times`: sorted notBefore/notAfter of every certificate and
  // lastUpdate/nextUpdate of every CRL in `store`; `store_times_known` false
  // when one could not be read (then nothing is ever cached).
  ChainCache(ChainCacheLimits limits, std::uint64_t generation, X509_STORE* store,
             std::vector<std::int64_t> store_times, bool store_times_known);

  // False when configured off (0 entries) or unusable; verify_authcert then
  // takes exactly the path it took before the cache existed.
  [[nodiscard]] bool enabled() const;
  // The parsed certificates with this key, if cached (marks them recently used).
  std::shared_ptr<const CertSet> find_certs(const CertSetKey& key);
  // The chain's earliest notAfter when the chain of certificate `signer` of
  // set `key`, verified with `max_depth` in this store's `generation`, is
  // known to verify at `now`.
  std::optional<std::int64_t> find_verdict(const CertSetKey& key, int signer, int max_depth, std::uint64_t generation,
                                           std::int64_t now);
  // Records that X509_verify_cert accepted that chain at `now`.
  void remember(const CertSetKey& key, const std::shared_ptr<const CertSet>& certs, int signer, int max_depth,
                std::uint64_t generation, std::int64_t now, std::int64_t chain_not_after);
  void clear();
  [[nodiscard]] ChainCacheStats stats() const;

 private:
  struct Verdict {
    int signer = 0;
    int max_depth = 0;
    std::uint64_t generation = 0;
    TimeWindow window;
    std::int64_t chain_not_after = 0;
  };
  struct Entry {
    std::string key;
    std::shared_ptr<const CertSet> certs;
    std::vector<Verdict> verdicts;
  };
  using List = std::list<Entry>;

  // False (and the cache emptied) when the store is not the one it was built
  // for any more: then the cache is not used at all.
  bool usable_locked(std::uint64_t generation);
  void evict_locked();

  mutable std::mutex mu_;
  ChainCacheLimits limits_;
  std::uint64_t generation_;
  X509_STORE* store_;  // not owned; the PkiStore keeps it alive
  int store_objects_;
  std::vector<std::int64_t> store_times_;
  bool store_times_known_;
  List lru_;  // most recently used first
  std::unordered_map<std::string, List::iterator> index_;
  std::size_t der_bytes_ = 0;
  ChainCacheStats stats_;
};

}  // namespace sg::certs
