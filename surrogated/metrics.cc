#include "surrogated/metrics.h"

#include <cmath>
#include <cstdio>

namespace sg {

void LabeledCounter::add(const std::string& label, std::uint64_t n) {
  std::lock_guard lock(mu_);
  values_[label] += n;
}

std::map<std::string, std::uint64_t> LabeledCounter::snapshot() const {
  std::lock_guard lock(mu_);
  return values_;
}

// From 100 µs (one small netlink batch) to 10 s (a huge ruleset on a slow box).
LatencyHistogram::LatencyHistogram()
    : bounds_{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10},
      counts_(bounds_.size() + 1, 0) {}

void LatencyHistogram::observe(double seconds) {
  std::size_t i = 0;
  while (i < bounds_.size() && seconds > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += seconds;
  ++count_;
}

std::string LatencyHistogram::render(const std::string& name, const std::string& help) const {
  std::string out = prom_header(name, "histogram", help);
  std::uint64_t cumulative = 0;
  char le[32];
  for (std::size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    (void)std::snprintf(le, sizeof le, "%g", bounds_[i]);
    out += prom_line(name + "_bucket", {{"le", le}}, static_cast<double>(cumulative));
  }
  out += prom_line(name + "_bucket", {{"le", "+Inf"}}, static_cast<double>(count_));
  out += prom_line(name + "_sum", {}, sum_);
  out += prom_line(name + "_count", {}, static_cast<double>(count_));
  return out;
}

std::string prom_label_escape(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string prom_header(const std::string& name, const std::string& type, const std::string& help) {
  return "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

std::string prom_line(const std::string& name, const std::map<std::string, std::string>& labels, double value) {
  std::string out = name;
  if (!labels.empty()) {
    out += '{';
    bool first = true;
    for (const auto& [k, v] : labels) {
      out += (first ? "" : ",") + k + "=\"" + prom_label_escape(v) + "\"";
      first = false;
    }
    out += '}';
  }
  char buf[64];
  if (std::floor(value) == value && std::fabs(value) < 1e15) {
    (void)std::snprintf(buf, sizeof buf, " %.0f\n", value);
  } else {
    (void)std::snprintf(buf, sizeof buf, " %.9g\n", value);
  }
  return out + buf;
}

}  // namespace sg
