#include "certs/chain_cache.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <algorithm>

#include "certs/x509.h"

namespace sg::certs {

namespace {

// Verdicts kept per certificate set: one per (signer, depth, generation) in
// practice; more only when a set is used with several signers or depths.
constexpr std::size_t kMaxVerdictsPerEntry = 8;

std::string key_string(const CertSetKey& key) { return {reinterpret_cast<const char*>(key.data()), key.size()}; }

void add_times(std::vector<std::int64_t>& out, bool& known, const ASN1_TIME* a, const ASN1_TIME* b) {
  for (const ASN1_TIME* t : {a, b}) {
    if (t == nullptr) continue;  // a CRL without nextUpdate: nothing to compare with
    auto v = asn1_time_to_unix(t);
    if (!v) {
      known = false;
      return;
    }
    out.push_back(*v);
  }
}

int object_count(X509_STORE* store) {
  STACK_OF(X509_OBJECT)* objects = X509_STORE_get0_objects(store);
  return objects == nullptr ? 0 : sk_X509_OBJECT_num(objects);
}

}  // namespace

std::optional<CertSetKey> cert_set_key(std::string_view certificates_der) {
  CertSetKey key{};
  unsigned int len = 0;
  if (EVP_Digest(certificates_der.data(), certificates_der.size(), key.data(), &len, EVP_sha256(), nullptr) != 1 ||
      len != key.size()) {
    ERR_clear_error();
    return std::nullopt;
  }
  return key;
}

std::shared_ptr<const CertSet> CertSet::parse(const std::vector<std::string_view>& ders) {
  std::shared_ptr<CertSet> set(new CertSet());
  set->stack_.reset(sk_X509_new_null());
  if (!set->stack_) return nullptr;
  for (auto der : ders) {
    const auto* p = reinterpret_cast<const unsigned char*>(der.data());
    ossl::X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
    if (!cert || p != reinterpret_cast<const unsigned char*>(der.data()) + der.size()) {
      ERR_clear_error();
      return nullptr;
    }
    add_times(set->times_, set->times_known_, X509_get0_notBefore(cert.get()), X509_get0_notAfter(cert.get()));
    if (sk_X509_push(set->stack_.get(), cert.get()) <= 0) return nullptr;
    (void)cert.release();  // the stack owns it now
    set->der_bytes_ += der.size();
  }
  std::sort(set->times_.begin(), set->times_.end());
  if (!set->times_known_) set->times_.clear();
  return set;
}

int CertSet::index_of(const X509* cert) const {
  for (int i = 0; i < sk_X509_num(stack_.get()); ++i) {
    if (sk_X509_value(stack_.get(), i) == cert) return i;
  }
  return -1;
}

TimeWindow stable_window(const std::vector<std::int64_t>& sorted_times, std::int64_t now) {
  TimeWindow w;
  auto it = std::lower_bound(sorted_times.begin(), sorted_times.end(), now);  // first value >= now
  if (it != sorted_times.end() && *it == now) {
    // "now < t" and "now <= t" disagree here: only this very second.
    w.from = now;
    w.until = now + 1;
    return w;
  }
  if (it != sorted_times.begin()) w.from = *std::prev(it) + 1;  // every earlier value stays "< now"
  if (it != sorted_times.end()) w.until = *it;                  // every later value stays "> now"
  return w;
}

ChainCache::ChainCache(ChainCacheLimits limits, std::uint64_t generation, X509_STORE* store,
                       std::vector<std::int64_t> store_times, bool store_times_known)
    : limits_(limits),
      generation_(generation),
      store_(store),
      store_objects_(object_count(store)),
      store_times_(std::move(store_times)),
      store_times_known_(store_times_known) {
  std::sort(store_times_.begin(), store_times_.end());
}

bool ChainCache::usable_locked(std::uint64_t generation) {
  if (limits_.max_entries == 0 || !store_times_known_) return false;
  if (generation != generation_ || object_count(store_) != store_objects_) {
    // Someone changed the store under this cache, or asked with another
    // store's generation: trust nothing cached, and stop caching.
    lru_.clear();
    index_.clear();
    der_bytes_ = 0;
    store_times_known_ = false;
    return false;
  }
  return true;
}

bool ChainCache::enabled() const {
  std::lock_guard lock(mu_);
  return limits_.max_entries > 0 && store_times_known_;
}

std::shared_ptr<const CertSet> ChainCache::find_certs(const CertSetKey& key) {
  std::lock_guard lock(mu_);
  if (limits_.max_entries == 0 || !store_times_known_) return nullptr;
  auto it = index_.find(key_string(key));
  if (it == index_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second);
  ++stats_.cert_hits;
  return it->second->certs;
}

std::optional<std::int64_t> ChainCache::find_verdict(const CertSetKey& key, int signer, int max_depth,
                                                     std::uint64_t generation, std::int64_t now) {
  std::lock_guard lock(mu_);
  if (!usable_locked(generation)) return std::nullopt;
  auto it = index_.find(key_string(key));
  if (it != index_.end()) {
    for (const auto& v : it->second->verdicts) {
      if (v.signer == signer && v.max_depth == max_depth && v.generation == generation && v.window.from <= now &&
          now < v.window.until) {
        lru_.splice(lru_.begin(), lru_, it->second);
        ++stats_.chain_hits;
        return v.chain_not_after;
      }
    }
  }
  ++stats_.chain_misses;
  return std::nullopt;
}

void ChainCache::remember(const CertSetKey& key, const std::shared_ptr<const CertSet>& certs, int signer, int max_depth,
                          std::uint64_t generation, std::int64_t now, std::int64_t chain_not_after) {
  std::lock_guard lock(mu_);
  if (!certs || !certs->times_known() || !usable_locked(generation)) return;
  if (certs->der_bytes() > limits_.max_der_bytes) return;
  TimeWindow store_w = stable_window(store_times_, now);
  TimeWindow certs_w = stable_window(certs->times(), now);
  Verdict v{signer, max_depth, generation,
            TimeWindow{std::max(store_w.from, certs_w.from), std::min(store_w.until, certs_w.until)}, chain_not_after};
  if (!(v.window.from <= now && now < v.window.until)) return;  // cannot happen; never store what would not apply

  std::string k = key_string(key);
  auto it = index_.find(k);
  if (it == index_.end()) {
    lru_.push_front(Entry{k, certs, {}});
    index_.emplace(std::move(k), lru_.begin());
    der_bytes_ += certs->der_bytes();
    it = index_.find(lru_.front().key);
  } else {
    lru_.splice(lru_.begin(), lru_, it->second);
  }
  auto& verdicts = it->second->verdicts;
  // One verdict per (signer, depth): the newest window replaces the old one.
  verdicts.erase(std::remove_if(verdicts.begin(), verdicts.end(),
                                [&](const Verdict& old) { return old.signer == signer && old.max_depth == max_depth; }),
                 verdicts.end());
  if (verdicts.size() >= kMaxVerdictsPerEntry) verdicts.erase(verdicts.begin());
  verdicts.push_back(v);
  evict_locked();
}

void ChainCache::evict_locked() {
  while (!lru_.empty() && (lru_.size() > limits_.max_entries || der_bytes_ > limits_.max_der_bytes)) {
    der_bytes_ -= lru_.back().certs->der_bytes();
    index_.erase(lru_.back().key);
    lru_.pop_back();
    ++stats_.evictions;
  }
}

void ChainCache::clear() {
  std::lock_guard lock(mu_);
  lru_.clear();
  index_.clear();
  der_bytes_ = 0;
}

ChainCacheStats ChainCache::stats() const {
  std::lock_guard lock(mu_);
  ChainCacheStats s = stats_;
  s.entries = lru_.size();
  s.der_bytes = der_bytes_;
  return s;
}

}  // namespace sg::certs
