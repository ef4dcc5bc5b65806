#include "trust/policy.h"

#include <netinet/in.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace sg::trust {

namespace {

Prefix must_prefix(std::string_view text) {
  // Only called with the compile-time lists below, which the unit tests parse.
  auto p = Prefix::parse(text);
  return p ? *p : Prefix{};
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

Result<std::uint16_t> parse_port(std::string_view text) {
  if (text.empty() || text.size() > 5 || text.find_first_not_of("0123456789") != std::string_view::npos) {
    return make_error("'" + std::string(text) + "' is not a port number (1-65535)");
  }
  unsigned long value = std::stoul(std::string(text));
  if (value < 1 || value > 65535) return make_error("port " + std::string(text) + " is out of range (1-65535)");
  return static_cast<std::uint16_t>(value);
}

struct IcmpName {
  std::string_view name;
  std::uint8_t type;
};

constexpr IcmpName kIcmpV4Names[] = {
    {"echo-reply", 0},           {"destination-unreachable", 3}, {"redirect", 5},       {"echo-request", 8},
    {"router-advertisement", 9}, {"router-solicitation", 10},    {"time-exceeded", 11}, {"parameter-problem", 12},
    {"timestamp-request", 13},   {"timestamp-reply", 14},
};

constexpr IcmpName kIcmpV6Names[] = {
    {"destination-unreachable", 1},
    {"packet-too-big", 2},
    {"time-exceeded", 3},
    {"parameter-problem", 4},
    {"echo-request", 128},
    {"echo-reply", 129},
    {"router-solicitation", 133},
    {"router-advertisement", 134},
    {"neighbor-solicitation", 135},
    {"neighbor-advertisement", 136},
    {"redirect", 137},
};

template <std::size_t N>
const IcmpName* find_icmp(const IcmpName (&table)[N], std::string_view name) {
  for (const auto& entry : table) {
    if (entry.name == name) return &entry;
  }
  return nullptr;
}

}  // namespace

std::string_view to_string(TrustLevel level) {
  switch (level) {
    case TrustLevel::trusted: return "trusted";
    case TrustLevel::semi_trusted: return "semi-trusted";
    case TrustLevel::untrusted: return "untrusted";
  }
  return "untrusted";
}

std::optional<TrustLevel> parse_trust_level(std::string_view text) {
  for (TrustLevel l : kAllLevels) {
    if (to_string(l) == text) return l;
  }
  return std::nullopt;
}

std::string_view to_string(AddressFamilies families) {
  switch (families) {
    case AddressFamilies::ipv4: return "ipv4";
    case AddressFamilies::ipv6: return "ipv6";
    case AddressFamilies::both: return "both";
  }
  return "both";
}

std::optional<AddressFamilies> parse_address_families(std::string_view text) {
  for (auto f : {AddressFamilies::ipv4, AddressFamilies::ipv6, AddressFamilies::both}) {
    if (to_string(f) == text) return f;
  }
  return std::nullopt;
}

std::string PortRange::to_string() const {
  if (first == last) return std::to_string(first);
  return std::to_string(first) + "-" + std::to_string(last);
}

Result<PortRange> PortRange::parse(std::string_view text) {
  text = trim(text);
  auto dash = text.find('-');
  auto first = parse_port(trim(text.substr(0, dash)));
  if (!first) return first.error();
  if (dash == std::string_view::npos) return PortRange{*first, *first};
  auto last = parse_port(trim(text.substr(dash + 1)));
  if (!last) return last.error();
  if (*last < *first) {
    return make_error("port range '" + std::string(text) + "' ends before it starts; write " + std::to_string(*last) +
                      "-" + std::to_string(*first));
  }
  return PortRange{*first, *last};
}

bool ports_contain(const std::vector<PortRange>& ranges, std::uint16_t port) {
  return std::any_of(ranges.begin(), ranges.end(), [&](const PortRange& r) { return r.contains(port); });
}

bool ports_cover(const std::vector<PortRange>& ranges, const PortRange& range) {
  // Walk the range, jumping to the end of whichever listed range holds the
  // current port; at most one step per listed range.
  std::uint32_t port = range.first;
  while (port <= range.last) {
    auto it = std::find_if(ranges.begin(), ranges.end(),
                           [&](const PortRange& r) { return r.contains(static_cast<std::uint16_t>(port)); });
    if (it == ranges.end()) return false;
    port = static_cast<std::uint32_t>(it->last) + 1;
  }
  return true;
}

std::string format_ports(const std::vector<PortRange>& ranges) {
  if (ranges.size() == 1 && ranges.front().all()) return "*";
  std::string out;
  for (const auto& r : ranges) {
    if (!out.empty()) out += ",";
    out += r.to_string();
  }
  return out;
}

Result<std::vector<PortRange>> parse_ports(std::string_view text) {
  text = trim(text);
  if (text == "*") return std::vector<PortRange>{PortRange{1, 65535}};
  if (text.empty()) return make_error("no ports given; write a port list such as 80,443 or 1000-2000, or * for all");
  std::vector<PortRange> out;
  while (true) {
    auto comma = text.find(',');
    auto range = PortRange::parse(text.substr(0, comma));
    if (!range) return range.error();
    out.push_back(*range);
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return out;
}

std::string Destination::to_string() const {
  std::string prefix_text =
      prefix.length == prefix.address.bit_length() ? prefix.address.to_string() : prefix.to_string();
  if (prefix.family() == Family::v6) prefix_text = "[" + prefix_text + "]";
  return prefix_text + ":" + format_ports(ports);
}

Result<Destination> Destination::parse(std::string_view text) {
  std::string original(text);
  std::string_view prefix_text;
  std::string_view ports_text;
  bool has_ports = false;
  if (!text.empty() && text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos) {
      return make_error("'" + original + "' opens '[' but never closes it; write [2001:db8::/32]:22");
    }
    prefix_text = text.substr(1, close - 1);
    std::string_view rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        return make_error("'" + original + "': expected ':' and ports after ']'; write [" + std::string(prefix_text) +
                          "]:443");
      }
      has_ports = true;
      ports_text = rest.substr(1);
    }
  } else {
    auto colons = std::count(text.begin(), text.end(), ':');
    if (colons > 1) {
      return make_error("'" + original + "' looks like IPv6 without brackets; put the prefix in brackets: [" +
                        std::string(text.substr(0, text.rfind(':'))) +
                        "]:" + std::string(text.substr(text.rfind(':') + 1)));
    }
    auto colon = text.find(':');
    prefix_text = text.substr(0, colon);
    if (colon != std::string_view::npos) {
      has_ports = true;
      ports_text = text.substr(colon + 1);
    }
  }
  auto prefix = Prefix::parse(trim(prefix_text));
  if (!prefix) return prefix.error();
  if (prefix->family() == Family::v4 && !text.empty() && text.front() == '[') {
    return make_error("'" + original + "': brackets are for IPv6 only; write " + prefix->to_string() + ":" +
                      std::string(ports_text));
  }
  if (!has_ports) {
    std::string shown =
        prefix->family() == Family::v6 ? "[" + std::string(prefix_text) + "]" : std::string(prefix_text);
    return make_error("'" + original + "' has no ports; write " + shown + ":443 for one port or " + shown +
                      ":* for every port");
  }
  auto ports = parse_ports(ports_text);
  if (!ports) return with_context("'" + original + "'", ports.error());
  return Destination{*prefix, std::move(*ports)};
}

std::optional<std::uint8_t> icmp_type_from_name(IcmpFamily family, std::string_view name) {
  const IcmpName* found = family == IcmpFamily::v4 ? find_icmp(kIcmpV4Names, name) : find_icmp(kIcmpV6Names, name);
  if (found == nullptr) return std::nullopt;
  return found->type;
}

std::string icmp_type_name(IcmpFamily family, std::uint8_t type) {
  auto search = [&](const auto& table) -> std::string {
    for (const auto& entry : table) {
      if (entry.type == type) return std::string(entry.name);
    }
    return std::to_string(type);
  };
  return family == IcmpFamily::v4 ? search(kIcmpV4Names) : search(kIcmpV6Names);
}

std::vector<std::string> icmp_type_names(IcmpFamily family) {
  std::vector<std::string> out;
  auto collect = [&](const auto& table) {
    for (const auto& entry : table) out.emplace_back(entry.name);
  };
  family == IcmpFamily::v4 ? collect(kIcmpV4Names) : collect(kIcmpV6Names);
  return out;
}

const Prefix* Guardrails::allow_reserved_for(const IpAddress& address) const {
  for (const auto& p : allow_reserved) {
    if (p.contains(address)) return &p;
  }
  return nullptr;
}

const Prefix* Guardrails::reserved_prefix_for(const IpAddress& address) const {
  if (allow_reserved_for(address) != nullptr) return nullptr;
  // The most specific entry explains best ("192.0.2.0/24" rather than a wider one).
  const Prefix* best = nullptr;
  for (const auto& p : reserved) {
    if (p.contains(address) && (best == nullptr || p.length > best->length)) best = &p;
  }
  return best;
}

const Prefix* Guardrails::block_prefix_for(const IpAddress& address) const {
  for (const auto& p : block) {
    if (p.contains(address)) return &p;
  }
  return nullptr;
}

bool Guardrails::forbid(const IpAddress& dst, std::uint8_t protocol, std::uint16_t dport) const {
  if (reserved_prefix_for(dst) != nullptr || block_prefix_for(dst) != nullptr) return true;
  if (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP) return false;
  return ports_contain(closed_ports, dport);
}

bool Guardrails::same_drops(const Guardrails& other) const {
  return reserved == other.reserved && allow_reserved == other.allow_reserved && closed_ports == other.closed_ports &&
         block == other.block;
}

std::vector<Prefix> default_reserved_prefixes() {
  // IANA special-purpose registries and the usual bogon lists. Documentation
  // ranges are in here too: a test lab that uses them as "internet" must say
  // so with guardrails.allow_reserved.
  static constexpr std::string_view kText[] = {
      // IPv4
      "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
      "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
      "224.0.0.0/3",
      // IPv6: unspecified, loopback, v4-mapped and v4-compatible (both would
      // smuggle IPv4 destinations past the IPv4 rules), NAT64, discard,
      // Teredo, ORCHID, documentation, 6to4, ULA, site-local, link-local, multicast.
      "::/128", "::1/128", "::ffff:0:0/96", "::/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001::/32",
      "2001:10::/28", "2001:20::/28", "2001:db8::/32", "2002::/16", "3fff::/20", "fc00::/7", "fe80::/10", "fec0::/10",
      "ff00::/8"};
  std::vector<Prefix> out;
  for (auto t : kText) out.push_back(must_prefix(t));
  return out;
}

std::vector<Prefix> unliftable_reserved_prefixes() {
  static constexpr std::string_view kText[] = {"0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3",
                                               "::/128",    "::1/128",     "::ffff:0:0/96",  "::/96",
                                               "fe80::/10", "ff00::/8"};
  std::vector<Prefix> out;
  for (auto t : kText) out.push_back(must_prefix(t));
  return out;
}

std::vector<PortRange> default_closed_ports() {
  // Privileged ports except DNS, HTTP, NTP and HTTPS, and the classic backdoor port.
  return {{1, 52}, {54, 79}, {81, 122}, {124, 442}, {444, 1023}, {31337, 31337}};
}

LevelPolicy default_level_policy(TrustLevel level) {
  LevelPolicy p;
  p.level = level;
  switch (level) {
    case TrustLevel::untrusted:
      p.egress_bits_per_second = 10'000'000;
      p.daily_quota_bytes = 1ULL << 30U;
      break;
    case TrustLevel::semi_trusted:
      p.egress_bits_per_second = 50'000'000;
      p.daily_quota_bytes = 10ULL << 30U;
      break;
    case TrustLevel::trusted:
      p.egress_bits_per_second = 100'000'000;
      p.daily_quota_bytes = 100ULL << 30U;
      break;
  }
  return p;
}

Policy default_policy() {
  Policy p;
  for (TrustLevel l : kAllLevels) p.level(l) = default_level_policy(l);
  p.guardrails.reserved = default_reserved_prefixes();
  p.guardrails.closed_ports = default_closed_ports();
  return p;
}

std::string ClientRule::describe_match() const {
  // 16 hex digits tell keys apart for a reader; the rule number finds the rest.
  auto shortened = [](const std::string& fp) { return fp.size() > 23 ? fp.substr(0, 23) + "..." : fp; };
  switch (match) {
    case Match::fingerprint: return "fingerprint " + shortened(value);
    case Match::group: return "group '" + value + "'";
    case Match::issuer_ca: return "issuer CA " + shortened(value);
    case Match::source: return "source " + source.to_string();
    case Match::any: return "any client";
  }
  return "?";
}

namespace {

struct ByteUnit {
  std::string_view name;
  std::uint64_t factor;
};
// Largest first, so formatting picks the biggest exact unit.
constexpr ByteUnit kByteUnits[] = {
    {"TiB", 1ULL << 40U}, {"TB", 1'000'000'000'000ULL}, {"GiB", 1ULL << 30U}, {"GB", 1'000'000'000ULL},
    {"MiB", 1ULL << 20U}, {"MB", 1'000'000ULL},         {"KiB", 1ULL << 10U}, {"KB", 1'000ULL},
    {"B", 1ULL},
};
// A petabyte a day is far beyond any uplink; anything larger is a typo.
constexpr std::uint64_t kMaxQuotaBytes = 1ULL << 50U;

}  // namespace

Result<std::uint64_t> parse_byte_size(std::string_view text) {
  std::string original(text);
  text = trim(text);
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  const std::string hint =
      " (write a whole number and a unit, e.g. \"10GiB\", \"500MB\"; units B, KB, MB, GB, TB, "
      "KiB, MiB, GiB, TiB)";
  if (digits == 0) return make_error("'" + original + "' is not a byte size" + hint);
  if (digits > 16) return make_error("'" + original + "' is too large" + hint);
  std::uint64_t number = std::stoull(std::string(text.substr(0, digits)));
  std::string_view unit = trim(text.substr(digits));
  if (unit.empty()) unit = "B";
  for (const auto& u : kByteUnits) {
    if (u.name != unit) continue;
    if (number > kMaxQuotaBytes / u.factor) return make_error("'" + original + "' is more than 1PiB" + hint);
    return number * u.factor;
  }
  return make_error("'" + original + "' has an unknown unit '" + std::string(unit) + "'" + hint);
}

std::string format_byte_size(std::uint64_t bytes) {
  if (bytes == 0) return "0B";
  for (const auto& u : kByteUnits) {
    if (bytes % u.factor == 0) return std::to_string(bytes / u.factor) + std::string(u.name);
  }
  return std::to_string(bytes) + "B";
}

std::string format_bit_rate(std::uint64_t bps) {
  auto with_unit = [](std::uint64_t value, std::uint64_t factor, const char* unit) {
    if (value % factor == 0) return std::to_string(value / factor) + " " + unit;
    char buf[64];
    (void)std::snprintf(buf, sizeof buf, "%.3g %s", static_cast<double>(value) / static_cast<double>(factor), unit);
    return std::string(buf);
  };
  if (bps >= 1'000'000'000 && bps % 1'000'000'000 == 0) return with_unit(bps, 1'000'000'000, "Gbit/s");
  if (bps >= 1'000'000) return with_unit(bps, 1'000'000, "Mbit/s");
  if (bps >= 1'000) return with_unit(bps, 1'000, "kbit/s");
  return std::to_string(bps) + " bit/s";
}

bool is_valid_fingerprint(std::string_view text) {
  constexpr std::string_view kPrefix = "sha256:";
  if (text.size() != kPrefix.size() + 64 || text.substr(0, kPrefix.size()) != kPrefix) return false;
  return text.substr(kPrefix.size()).find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

}  // namespace sg::trust
