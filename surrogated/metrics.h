// Counters and a latency histogram for /metrics (Prometheus text format,
// docs/web.md). Counters may be bumped from any thread (the HTTPS API's
// workers count statuses); the histogram lives on the event loop.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace sg {

// A set of counters keyed by a label value, safe to bump from any thread.
class LabeledCounter {
 public:
  void add(const std::string& label, std::uint64_t n = 1);
  [[nodiscard]] std::map<std::string, std::uint64_t> snapshot() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::uint64_t> values_;
};

// Cumulative buckets as Prometheus histograms have them (seconds).
class LatencyHistogram {
 public:
  LatencyHistogram();
  void observe(double seconds);
  // "# HELP/# TYPE" and the _bucket, _sum and _count lines.
  [[nodiscard]] std::string render(const std::string& name, const std::string& help) const;
  [[nodiscard]] std::uint64_t count() const { return count_; }

 private:
  std::vector<double> bounds_;
  std::vector<std::uint64_t> counts_;  // per bucket, not cumulative
  double sum_ = 0;
  std::uint64_t count_ = 0;
};

// Daemon-wide counters that no other component keeps.
struct DaemonMetrics {
  LabeledCounter authcerts;     // "accepted", or the reject reason
  LabeledCounter api_requests;  // by HTTP status
};

// Prometheus text helpers.
std::string prom_label_escape(const std::string& value);
std::string prom_header(const std::string& name, const std::string& type, const std::string& help);
std::string prom_line(const std::string& name, const std::map<std::string, std::string>& labels, double value);

}  // namespace sg
