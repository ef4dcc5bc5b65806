#include "trust/parse.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "certs/identity.h"

namespace sg::trust {

std::string Diagnostic::to_string() const {
  std::string out = file;
  if (line > 0) out += ":" + std::to_string(line) + ":" + std::to_string(column);
  out += ": " + message;
  if (!hint.empty()) out += "; " + hint;
  return out;
}

namespace {

// ---------------------------------------------------------------------------
// The schema: which keys each section knows. Used for unknown-key errors and
// for telling the owner where a key they put in the wrong place belongs.

using KeyList = std::vector<std::string_view>;

const KeyList kTopKeys = {"owner", "clients", "levels", "guardrails"};
const KeyList kOwnerKeys = {"only_listed_clients", "bandwidth_ceiling_mbit", "address_families"};
const KeyList kClientsKeys = {"default", "groups", "rules"};
const KeyList kRuleKeys = {"fingerprint", "group", "issuer_ca", "source", "any", "level", "name"};
const KeyList kLevelNames = {"trusted", "semi-trusted", "untrusted"};
const KeyList kLevelKeys = {"egress_mbit", "daily_quota", "per_destination",    "syn_per_second", "tcp", "udp",
                            "icmp",        "icmpv6",      "tcp_syn_only_ports", "protocols",      "dns", "spoof"};
const KeyList kPerDestinationKeys = {"kbit", "packets", "v4_prefix", "v6_prefix"};
const KeyList kDnsKeys = {"resolvers", "names"};
const KeyList kSpoofKeys = {"sources", "destinations"};
const KeyList kGuardrailKeys = {"reserved", "allow_reserved", "closed_ports", "block", "host_addresses"};

// Where each known key lives, for "'tcp' belongs in [levels.semi-trusted]".
const std::vector<std::pair<const KeyList*, std::string_view>> kSections = {
    {&kTopKeys, "the top level"},        {&kOwnerKeys, "[owner]"},
    {&kClientsKeys, "[clients]"},        {&kRuleKeys, "[[clients.rules]]"},
    {&kLevelKeys, "[levels.<level>]"},   {&kPerDestinationKeys, "[levels.<level>.per_destination]"},
    {&kDnsKeys, "[levels.<level>.dns]"}, {&kSpoofKeys, "[levels.<level>.spoof]"},
    {&kGuardrailKeys, "[guardrails]"},
};

// Names people reach for that the schema spells differently.
const std::map<std::string_view, std::string_view> kAliases = {
    {"default_level", "clients.default"},
    {"quota", "daily_quota"},
    {"egress", "egress_mbit"},
    {"bandwidth", "egress_mbit"},
    {"icmp6", "icmpv6"},
    {"syn_rate", "syn_per_second"},
    {"blocklist", "block"},
    {"block_list", "block"},
    {"blocked", "block"},
    {"fingerprints", "groups"},
    {"ca", "issuer_ca"},
    {"issuer", "issuer_ca"},
    {"prefix", "source"},
    {"trust", "level"},
    {"only_listed", "only_listed_clients"},
    {"families", "address_families"},
    {"rate", "per_destination"},
    {"syn_only_ports", "tcp_syn_only_ports"},
};

// Optimal string alignment distance: Levenshtein plus adjacent swaps, so
// "tpc" is one edit from "tcp".
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

std::optional<std::string> closest(std::string_view word, const std::vector<std::string_view>& candidates) {
  std::optional<std::string> best;
  std::size_t best_distance = 3;  // more than two edits away is a different word
  for (auto c : candidates) {
    std::size_t dist = edit_distance(word, c);
    if (dist < best_distance && dist < std::max<std::size_t>(word.size(), 2)) {
      best_distance = dist;
      best = std::string(c);
    }
  }
  return best;
}

std::string join(const std::vector<std::string_view>& words) {
  std::string out;
  for (auto w : words) {
    if (!out.empty()) out += ", ";
    out += w;
  }
  return out;
}

std::string type_phrase(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a decimal number";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::date:
    case toml::node_type::time:
    case toml::node_type::date_time: return "a date or time";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    case toml::node_type::none: break;
  }
  return "nothing";
}

SourceLocation where(const toml::source_region& region) {
  return SourceLocation{static_cast<int>(region.begin.line), static_cast<int>(region.begin.column)};
}

std::string short_fingerprint(const std::string& fp) { return fp.size() > 23 ? fp.substr(0, 23) + "..." : fp; }

std::string quoted(std::string_view s) { return "\"" + std::string(s) + "\""; }

// A prefix as the owner would write it: a bare address for a single host.
std::string prefix_text(const Prefix& p) {
  return p.length == p.address.bit_length() ? p.address.to_string() : p.to_string();
}

// Prefix::parse messages often carry the corrected text already; a generic
// example after them would only repeat "write".
std::string example_unless_fixed(const std::string& message) {
  if (message.find("write ") != std::string::npos) return "";
  return "write a prefix such as \"198.51.100.0/24\" or \"2001:db8::/32\"";
}

bool valid_group_name(std::string_view name) {
  return !name.empty() && name.size() <= 64 &&
         name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") ==
             std::string_view::npos;
}

bool valid_dns_name(std::string_view name) {
  if (name.substr(0, 2) == "*.") name.remove_prefix(2);
  if (name.empty() || name.size() > 253) return false;
  if (name.back() == '.') name.remove_suffix(1);
  std::size_t start = 0;
  while (start <= name.size()) {
    auto dot = name.find('.', start);
    auto label = name.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') return false;
    if (label.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-") != std::string_view::npos) return false;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return true;
}

template <class T>
struct Located {
  T value;
  SourceLocation location;
};

// ---------------------------------------------------------------------------

class Parser {
 public:
  explicit Parser(std::string filename) : filename_(std::move(filename)) {}

  ParseOutcome run(std::string_view text) {
    policy_ = default_policy();
    policy_.source_file = filename_;
    policy_.version = "sha256:" + certs::sha256_hex(text);
    if (text.size() > kMaxPolicyBytes) {
      report({},
             "the file is " + std::to_string(text.size()) + " bytes, more than the " + std::to_string(kMaxPolicyBytes) +
                 " a hand-written policy can need",
             "check that the right file is configured");
      return finish();
    }
    toml::table root;
    try {
      root = toml::parse(text, std::string_view(filename_));
    } catch (const toml::parse_error& e) {
      report(where(e.source()), "TOML syntax error: " + std::string(e.description()),
             "fix the syntax here (strings need double quotes, arrays square brackets, one key per line)");
      return finish();
    }
    parse_root(root);
    return finish();
  }

 private:
  void report(SourceLocation loc, std::string message, std::string hint) {
    diagnostics_.push_back(Diagnostic{filename_, loc.line, loc.column, std::move(message), std::move(hint)});
  }

  ParseOutcome finish() {
    ParseOutcome out;
    std::stable_sort(diagnostics_.begin(), diagnostics_.end(), [](const Diagnostic& a, const Diagnostic& b) {
      return std::tie(a.line, a.column) < std::tie(b.line, b.column);
    });
    out.diagnostics = std::move(diagnostics_);
    if (out.diagnostics.empty()) out.policy = std::move(policy_);
    return out;
  }

  static std::string key_path(const std::string& section, std::string_view key) {
    return section.empty() ? std::string(key) : section + "." + std::string(key);
  }
  static std::string section_name(const std::string& section) {
    return section.empty() ? "the top level" : "[" + section + "]";
  }

  // Reports every key of `table` that `known` does not list, with the most
  // useful suggestion we can find.
  void check_keys(const toml::table& table, const std::string& section, const KeyList& known) {
    for (auto&& [key, node] : table) {
      std::string_view k = key.str();
      if (std::find(known.begin(), known.end(), k) != known.end()) continue;
      std::string message = "unknown key '" + std::string(k) + "' in " + section_name(section);
      std::string hint;
      if (auto alias = kAliases.find(k); alias != kAliases.end()) {
        hint = "did you mean '" + std::string(alias->second) + "'?";
      } else if (auto near = closest(k, known)) {
        hint = "did you mean '" + *near + "'?";
      } else {
        for (const auto& [keys, name] : kSections) {
          if (keys != &known && std::find(keys->begin(), keys->end(), k) != keys->end()) {
            hint = "'" + std::string(k) + "' belongs in " + std::string(name);
            break;
          }
        }
        if (hint.empty()) hint = "known keys here: " + join(known);
      }
      report(where(key.source()), message, hint);
    }
  }

  // The node of `key` when it has type `want`; reports a wrong type.
  const toml::node* typed(const toml::table& table, std::string_view key, const std::string& section,
                          toml::node_type want, std::string_view expected, std::string_view example) {
    const toml::node* node = table.get(key);
    if (node == nullptr) return nullptr;
    if (node->type() == want) return node;
    report(where(node->source()),
           "'" + key_path(section, key) + "' must be " + std::string(expected) + ", not " + type_phrase(*node),
           "write " + std::string(key) + " = " + std::string(example));
    return nullptr;
  }

  const toml::table* sub_table(const toml::table& table, std::string_view key, const std::string& section) {
    const toml::node* node = typed(table, key, section, toml::node_type::table, "a table",
                                   "{ ... } or start a [" + key_path(section, key) + "] section");
    return node == nullptr ? nullptr : node->as_table();
  }

  const toml::array* array_of(const toml::table& table, std::string_view key, const std::string& section,
                              std::string_view example) {
    const toml::node* node = typed(table, key, section, toml::node_type::array, "an array", example);
    return node == nullptr ? nullptr : node->as_array();
  }

  std::optional<Located<std::string>> string_of(const toml::table& table, std::string_view key,
                                                const std::string& section, std::string_view example) {
    const toml::node* node = typed(table, key, section, toml::node_type::string, "a string", example);
    if (node == nullptr) return std::nullopt;
    return Located<std::string>{node->as_string()->get(), where(node->source())};
  }

  // A whole number in [min, max].
  std::optional<std::int64_t> integer_of(const toml::table& table, std::string_view key, const std::string& section,
                                         std::int64_t min, std::int64_t max, std::string_view example) {
    const toml::node* node = typed(table, key, section, toml::node_type::integer, "a whole number", example);
    if (node == nullptr) return std::nullopt;
    std::int64_t v = node->as_integer()->get();
    if (v < min || v > max) {
      report(where(node->source()),
             "'" + key_path(section, key) + "' is " + std::to_string(v) + ", outside " + std::to_string(min) + ".." +
                 std::to_string(max),
             "write " + std::string(key) + " = " + std::string(example));
      return std::nullopt;
    }
    return v;
  }

  // A positive rate written in `unit` (an integer or a decimal number),
  // returned in bits per second.
  std::optional<std::uint64_t> rate_of(const toml::table& table, std::string_view key, const std::string& section,
                                       double unit_bits, double max_units, std::string_view example) {
    const toml::node* node = table.get(key);
    if (node == nullptr) return std::nullopt;
    double value = 0;
    if (const auto* i = node->as_integer()) {
      value = static_cast<double>(i->get());
    } else if (const auto* f = node->as_floating_point()) {
      value = f->get();
    } else {
      report(where(node->source()), "'" + key_path(section, key) + "' must be a number, not " + type_phrase(*node),
             "write " + std::string(key) + " = " + std::string(example));
      return std::nullopt;
    }
    double bits = std::round(value * unit_bits);
    if (!std::isfinite(value) || value <= 0 || bits < 1 || value > max_units) {
      std::ostringstream shown;
      shown << value;
      report(where(node->source()),
             "'" + key_path(section, key) + "' is " + shown.str() + "; a rate must be more than 0 and at most " +
                 std::to_string(static_cast<std::int64_t>(max_units)),
             "write " + std::string(key) + " = " + std::string(example));
      return std::nullopt;
    }
    return static_cast<std::uint64_t>(bits);
  }

  std::optional<bool> bool_of(const toml::table& table, std::string_view key, const std::string& section) {
    const toml::node* node = typed(table, key, section, toml::node_type::boolean, "true or false", "true");
    if (node == nullptr) return std::nullopt;
    return node->as_boolean()->get();
  }

  // An array of prefix strings; duplicates are errors.
  std::vector<Located<Prefix>> prefix_list(const toml::table& table, std::string_view key, const std::string& section,
                                           std::string_view example) {
    std::vector<Located<Prefix>> out;
    const toml::array* arr = array_of(table, key, section, example);
    if (arr == nullptr) return out;
    for (const toml::node& el : *arr) {
      const auto* s = el.as_string();
      if (s == nullptr) {
        report(where(el.source()),
               "entries of '" + key_path(section, key) + "' must be prefix strings, not " + type_phrase(el),
               "write " + std::string(key) + " = " + std::string(example));
        continue;
      }
      auto p = Prefix::parse(s->get());
      if (!p) {
        report(where(el.source()), "bad prefix in '" + key_path(section, key) + "': " + p.error().message,
               example_unless_fixed(p.error().message));
        continue;
      }
      if (auto dup = std::find_if(out.begin(), out.end(), [&](const auto& o) { return o.value == *p; });
          dup != out.end()) {
        report(where(el.source()),
               "'" + key_path(section, key) + "' lists " + prefix_text(*p) + " twice (first on line " +
                   std::to_string(dup->location.line) + ")",
               "remove one of them");
        continue;
      }
      out.push_back({*p, where(el.source())});
    }
    return out;
  }

  static std::vector<Prefix> values(const std::vector<Located<Prefix>>& list) {
    std::vector<Prefix> out;
    out.reserve(list.size());
    for (const auto& l : list) out.push_back(l.value);
    return out;
  }

  // An array of ports: integers or "1000-2000" strings.
  std::vector<Located<PortRange>> port_list(const toml::table& table, std::string_view key,
                                            const std::string& section) {
    std::vector<Located<PortRange>> out;
    const toml::array* arr = array_of(table, key, section, "[33434, \"33435-33534\"]");
    if (arr == nullptr) return out;
    for (const toml::node& el : *arr) {
      Result<PortRange> range = make_error("");
      if (const auto* i = el.as_integer()) {
        std::int64_t v = i->get();
        if (v < 1 || v > 65535) {
          report(where(el.source()),
                 "port " + std::to_string(v) + " in '" + key_path(section, key) + "' is out of range",
                 "ports are 1-65535");
          continue;
        }
        range = PortRange{static_cast<std::uint16_t>(v), static_cast<std::uint16_t>(v)};
      } else if (const auto* s = el.as_string()) {
        range = PortRange::parse(s->get());
        if (!range) {
          report(where(el.source()), "bad port range in '" + key_path(section, key) + "': " + range.error().message,
                 "write a port such as 443 or a range such as \"1000-2000\"");
          continue;
        }
      } else {
        report(where(el.source()), "entries of '" + key_path(section, key) + "' must be ports, not " + type_phrase(el),
               "write " + std::string(key) + " = [443, \"1000-2000\"]");
        continue;
      }
      out.push_back({*range, where(el.source())});
    }
    return out;
  }

  // -------------------------------------------------------------------------

  void parse_root(const toml::table& root) {
    check_keys(root, "", kTopKeys);
    // Owner and guardrails first: the checks of levels and clients refer to them.
    if (const auto* t = sub_table(root, "owner", "")) parse_owner(*t);
    if (const auto* t = sub_table(root, "guardrails", "")) parse_guardrails(*t);
    if (const auto* t = sub_table(root, "levels", "")) parse_levels(*t);
    clamp_default_caps();
    if (const auto* t = sub_table(root, "clients", "")) parse_clients(*t);
  }

  void parse_owner(const toml::table& t) {
    const std::string section = "owner";
    check_keys(t, section, kOwnerKeys);
    if (auto v = bool_of(t, "only_listed_clients", section)) policy_.owner.only_listed_clients = *v;
    if (auto v = rate_of(t, "bandwidth_ceiling_mbit", section, 1e6, 1e6, "1000")) {
      policy_.owner.bandwidth_ceiling_bits_per_second = *v;
    }
    if (auto v = string_of(t, "address_families", section, "\"both\"")) {
      if (auto f = parse_address_families(v->value)) {
        policy_.owner.address_families = *f;
      } else {
        report(v->location, "'owner.address_families' is " + quoted(v->value) + "",
               "write \"ipv4\", \"ipv6\" or \"both\"");
      }
    }
  }

  // ---- guardrails ----

  void parse_guardrails(const toml::table& t) {
    const std::string section = "guardrails";
    check_keys(t, section, kGuardrailKeys);
    Guardrails& g = policy_.guardrails;
    const std::vector<Prefix> defaults = default_reserved_prefixes();

    std::vector<Located<Prefix>> allow = prefix_list(t, "allow_reserved", section, "[\"198.51.100.0/24\"]");
    if (t.get("reserved") != nullptr) {
      auto reserved = prefix_list(t, "reserved", section, "[\"10.0.0.0/8\", \"2001:db8::/32\"]");
      g.reserved = values(reserved);
      SourceLocation loc = where(t.get("reserved")->source());
      // Replacing the list may add entries freely; dropping a default entry
      // needs the explicit, visible opt-in of allow_reserved.
      if (t.get("reserved")->is_array()) {
        for (const Prefix& d : defaults) {
          bool kept = std::any_of(g.reserved.begin(), g.reserved.end(), [&](const Prefix& r) { return r.contains(d); });
          bool lifted = std::any_of(allow.begin(), allow.end(), [&](const auto& a) { return a.value.contains(d); });
          if (!kept && !lifted) {
            report(
                loc, "'guardrails.reserved' leaves out the default reserved prefix " + d.to_string(),
                "keep \"" + d.to_string() +
                    "\" in the list; to let VMs reach it in a test lab, add it to guardrails.allow_reserved instead");
          }
        }
      }
    }

    const std::vector<Prefix> unliftable = unliftable_reserved_prefixes();
    for (const auto& a : allow) {
      auto never =
          std::find_if(unliftable.begin(), unliftable.end(), [&](const Prefix& u) { return u.overlaps(a.value); });
      if (never != unliftable.end()) {
        report(a.location,
               "'guardrails.allow_reserved' cannot lift " + a.value.to_string() + ": it overlaps " +
                   never->to_string() +
                   " (unspecified, loopback, link-local, multicast or IPv4-mapped), which never leads to the internet",
               "remove it");
        continue;
      }
      auto inside = [&](const std::vector<Prefix>& list) {
        return std::any_of(list.begin(), list.end(), [&](const Prefix& r) { return r.contains(a.value); });
      };
      if (!inside(g.reserved) && !inside(defaults)) {
        report(a.location,
               "'guardrails.allow_reserved' lists " + a.value.to_string() +
                   ", which is not inside any reserved prefix, so it changes nothing",
               "remove it, or list a prefix inside one of guardrails.reserved");
        continue;
      }
      g.allow_reserved.push_back(a.value);
    }

    if (t.get("closed_ports") != nullptr) {
      g.closed_ports.clear();
      for (const auto& p : port_list(t, "closed_ports", section)) g.closed_ports.push_back(p.value);
    }
    g.block = values(prefix_list(t, "block", section, "[\"203.0.113.66\"]"));
    g.host_addresses = values(prefix_list(t, "host_addresses", section, "[\"198.51.100.1\"]"));
  }

  // ---- levels ----

  void parse_levels(const toml::table& t) {
    for (auto&& [key, node] : t) {
      auto level = parse_trust_level(key.str());
      if (!level) {
        std::string hint = "the levels are trusted, semi-trusted and untrusted";
        if (auto near = closest(key.str(), kLevelNames)) hint = "did you mean '" + *near + "'?";
        report(where(key.source()), "unknown trust level '" + std::string(key.str()) + "' in [levels]", hint);
        continue;
      }
      if (const auto* lt = sub_table(t, key.str(), "levels")) parse_level(*level, *lt);
    }
  }

  // Explains why `key` has no place in the section of `level`.
  static std::optional<std::pair<std::string, std::string>> misplaced_level_key(TrustLevel level,
                                                                                std::string_view key) {
    static const KeyList kSemiOnly = {"tcp", "udp", "icmp", "icmpv6", "tcp_syn_only_ports", "protocols"};
    bool semi_only = std::find(kSemiOnly.begin(), kSemiOnly.end(), key) != kSemiOnly.end();
    if (level == TrustLevel::trusted && semi_only) {
      return std::pair{"trusted VMs already reach every destination that passes the guardrails, so '" +
                           std::string(key) + "' has no effect in [levels.trusted]",
                       std::string("remove it, or move it to [levels.semi-trusted]")};
    }
    if (level == TrustLevel::untrusted && (semi_only || key == "dns" || key == "spoof")) {
      return std::pair{
          "untrusted VMs reach only their own client and nodes holding an authcert for the client's "
          "key; '" +
              std::string(key) + "' cannot widen that in [levels.untrusted]",
          std::string("remove it, or give the client the level semi-trusted")};
    }
    return std::nullopt;
  }

  void parse_level(TrustLevel level, const toml::table& t) {
    const std::string section = "levels." + std::string(to_string(level));
    check_keys(t, section, kLevelKeys);
    for (auto&& [key, node] : t) {
      if (auto why = misplaced_level_key(level, key.str())) report(where(key.source()), why->first, why->second);
    }
    LevelPolicy& lp = policy_.level(level);

    if (auto v = rate_of(t, "egress_mbit", section, 1e6, 1e6, "50")) {
      lp.egress_bits_per_second = *v;
      explicit_egress_[static_cast<std::size_t>(level)] = true;
      const auto& ceiling = policy_.owner.bandwidth_ceiling_bits_per_second;
      if (ceiling && *v > *ceiling) {
        report(where(t.get("egress_mbit")->source()),
               "'" + section + ".egress_mbit' (" + format_bit_rate(*v) +
                   ") is more than owner.bandwidth_ceiling_mbit (" + format_bit_rate(*ceiling) +
                   "), so a VM could never use it",
               "lower it to at most " + format_bit_rate(*ceiling) + " or raise the ceiling");
      }
    }
    if (const toml::node* q = t.get("daily_quota")) {
      if (const auto* s = q->as_string()) {
        auto bytes = parse_byte_size(s->get());
        if (!bytes) {
          report(where(q->source()), "'" + section + ".daily_quota': " + bytes.error().message, "");
        } else if (*bytes == 0) {
          report(where(q->source()), "'" + section + ".daily_quota' is 0, so no VM could send anything",
                 "write a size such as \"1GiB\"");
        } else {
          lp.daily_quota_bytes = *bytes;
        }
      } else {
        report(where(q->source()), "'" + section + ".daily_quota' must be a size string, not " + type_phrase(*q),
               "write daily_quota = \"10GiB\"");
      }
    }
    if (const auto* pd = sub_table(t, "per_destination", section)) parse_per_destination(lp, *pd, section);
    if (auto v = integer_of(t, "syn_per_second", section, 1, 1'000'000, "1")) {
      lp.tcp_syn_per_second = static_cast<std::uint32_t>(*v);
    }
    if (level == TrustLevel::untrusted) return;

    if (const auto* dns = sub_table(t, "dns", section)) parse_dns(level, lp, *dns, section + ".dns");
    if (const auto* spoof = sub_table(t, "spoof", section))
      parse_spoof(lp, *spoof, section + ".spoof", where(spoof->source()));
    if (level == TrustLevel::trusted) return;

    lp.tcp = destination_list(t, "tcp", section);
    lp.udp = destination_list(t, "udp", section);
    lp.icmp_types = icmp_list(t, "icmp", section, IcmpFamily::v4);
    lp.icmpv6_types = icmp_list(t, "icmpv6", section, IcmpFamily::v6);
    for (const auto& p : port_list(t, "tcp_syn_only_ports", section)) {
      if (ports_cover(policy_.guardrails.closed_ports, p.value)) {
        report(p.location,
               "port " + p.value.to_string() + " in '" + section +
                   ".tcp_syn_only_ports' is closed by guardrails.closed_ports, so no SYN could pass",
               "remove it, or take it out of guardrails.closed_ports");
        continue;
      }
      lp.tcp_syn_only_ports.push_back(p.value);
    }
    lp.ip_protocols = protocol_list(t, "protocols", section);
  }

  void parse_per_destination(LevelPolicy& lp, const toml::table& t, const std::string& level_section) {
    const std::string section = level_section + ".per_destination";
    check_keys(t, section, kPerDestinationKeys);
    if (auto v = rate_of(t, "kbit", section, 1e3, 1e7, "8")) lp.per_destination.bits_per_second = *v;
    if (auto v = integer_of(t, "packets", section, 1, 1'000'000, "2")) {
      lp.per_destination.packets_per_second = static_cast<std::uint32_t>(*v);
    }
    if (auto v = integer_of(t, "v4_prefix", section, 8, 32, "24"))
      lp.per_destination.v4_prefix_length = static_cast<int>(*v);
    if (auto v = integer_of(t, "v6_prefix", section, 16, 128, "48")) {
      lp.per_destination.v6_prefix_length = static_cast<int>(*v);
    }
  }

  // Reports why VMs could never reach `p` whatever the level allows; true when usable.
  bool check_reachable(const Prefix& p, SourceLocation loc, const std::string& what) {
    const Guardrails& g = policy_.guardrails;
    if (!policy_.owner.allows(p.family())) {
      report(loc,
             what + " " + prefix_text(p) + " is IPv" + (p.family() == Family::v4 ? "4" : "6") +
                 ", but owner.address_families is \"" + std::string(to_string(policy_.owner.address_families)) + "\"",
             "remove it, or set owner.address_families = \"both\"");
      return false;
    }
    for (const Prefix& r : g.reserved) {
      if (!r.contains(p)) continue;
      bool lifted =
          std::any_of(g.allow_reserved.begin(), g.allow_reserved.end(), [&](const Prefix& a) { return a.overlaps(p); });
      if (!lifted) {
        report(loc,
               what + " " + prefix_text(p) + " is inside the reserved prefix " + r.to_string() +
                   " (guardrail 'reserved prefixes'), so no VM can ever reach it",
               "remove it; only in a test lab that uses " + r.to_string() + " as a stand-in for the internet, add \"" +
                   r.to_string() + "\" to guardrails.allow_reserved");
        return false;
      }
    }
    for (const Prefix& b : g.block) {
      if (b.contains(p)) {
        report(loc,
               what + " " + prefix_text(p) + " is inside the block-list prefix " + prefix_text(b) +
                   " (guardrails.block), so no VM can ever reach it",
               "remove it here, or remove " + prefix_text(b) + " from guardrails.block");
        return false;
      }
    }
    return true;
  }

  std::vector<Destination> destination_list(const toml::table& t, std::string_view key, const std::string& section) {
    std::vector<Destination> out;
    const std::string example = "[\"203.0.113.0/24:80,443\", \"[2001:db8::/32]:22\"]";
    const toml::array* arr = array_of(t, key, section, example);
    if (arr == nullptr) return out;
    const std::string what = "'" + key_path(section, key) + "' entry";
    for (const toml::node& el : *arr) {
      SourceLocation loc = where(el.source());
      const auto* s = el.as_string();
      if (s == nullptr) {
        report(loc,
               "entries of '" + key_path(section, key) + "' must be \"prefix:ports\" strings, not " + type_phrase(el),
               "write " + std::string(key) + " = " + example);
        continue;
      }
      auto d = Destination::parse(s->get());
      if (!d) {
        report(loc, "bad destination in '" + key_path(section, key) + "': " + d.error().message, "");
        continue;
      }
      if (!check_reachable(d->prefix, loc, what)) continue;
      bool ports_ok = true;
      for (const PortRange& r : d->ports) {
        if (ports_cover(policy_.guardrails.closed_ports, r)) {
          report(loc,
                 what + " " + d->to_string() + ": port " + r.to_string() +
                     " is closed by guardrails.closed_ports, so it can never be reached",
                 "remove the port here, or take it out of guardrails.closed_ports");
          ports_ok = false;
        }
      }
      if (!ports_ok) continue;
      if (std::find(out.begin(), out.end(), *d) != out.end()) {
        report(loc, what + " " + d->to_string() + " is listed twice", "remove one of them");
        continue;
      }
      out.push_back(std::move(*d));
    }
    return out;
  }

  std::vector<std::uint8_t> icmp_list(const toml::table& t, std::string_view key, const std::string& section,
                                      IcmpFamily family) {
    std::vector<std::uint8_t> out;
    const toml::array* arr = array_of(t, key, section, "[\"echo-request\", \"time-exceeded\"]");
    if (arr == nullptr) return out;
    std::vector<std::string> names = icmp_type_names(family);
    std::vector<std::string_view> name_views(names.begin(), names.end());
    for (const toml::node& el : *arr) {
      SourceLocation loc = where(el.source());
      std::optional<std::uint8_t> type;
      if (const auto* i = el.as_integer()) {
        if (i->get() < 0 || i->get() > 255) {
          report(loc, "ICMP type " + std::to_string(i->get()) + " in '" + key_path(section, key) + "' is out of range",
                 "ICMP types are 0-255, or names such as \"echo-request\"");
          continue;
        }
        type = static_cast<std::uint8_t>(i->get());
      } else if (const auto* s = el.as_string()) {
        type = icmp_type_from_name(family, s->get());
        if (!type) {
          auto near = closest(s->get(), name_views);
          report(loc,
                 "unknown ICMP" + std::string(family == IcmpFamily::v6 ? "v6" : "") + " type '" + s->get() + "' in '" +
                     key_path(section, key) + "'",
                 near ? "did you mean '" + *near + "'?"
                      : "known names: " + join(name_views) + "; or write the type number");
          continue;
        }
      } else {
        report(loc,
               "entries of '" + key_path(section, key) + "' must be ICMP type names or numbers, not " + type_phrase(el),
               "write " + std::string(key) + " = [\"echo-request\"]");
        continue;
      }
      if (std::find(out.begin(), out.end(), *type) != out.end()) {
        report(loc, "'" + key_path(section, key) + "' lists " + icmp_type_name(family, *type) + " twice",
               "remove one of them");
        continue;
      }
      out.push_back(*type);
    }
    return out;
  }

  std::vector<std::uint8_t> protocol_list(const toml::table& t, std::string_view key, const std::string& section) {
    std::vector<std::uint8_t> out;
    const toml::array* arr = array_of(t, key, section, "[47, 50]");
    if (arr == nullptr) return out;
    for (const toml::node& el : *arr) {
      SourceLocation loc = where(el.source());
      const auto* i = el.as_integer();
      if (i == nullptr) {
        report(loc, "entries of '" + key_path(section, key) + "' must be IP protocol numbers, not " + type_phrase(el),
               "write " + std::string(key) + " = [47] (GRE)");
        continue;
      }
      std::int64_t v = i->get();
      if (v < 0 || v > 255) {
        report(loc, "IP protocol " + std::to_string(v) + " is out of range", "IP protocol numbers are 0-255");
        continue;
      }
      const std::map<std::int64_t, std::string> dedicated = {{1, "icmp"}, {6, "tcp"}, {17, "udp"}, {58, "icmpv6"}};
      if (auto d = dedicated.find(v); d != dedicated.end()) {
        report(loc, "IP protocol " + std::to_string(v) + " is " + d->second + ", which has its own key",
               "remove it here and use " + key_path(section, d->second));
        continue;
      }
      if (v == 0 || v == 43 || v == 44 || v == 60) {
        report(loc, "IP protocol " + std::to_string(v) + " is an IPv6 extension header, not a transport protocol",
               "remove it; extension headers are handled by the guardrails");
        continue;
      }
      if (std::find(out.begin(), out.end(), v) != out.end()) {
        report(loc, "'" + key_path(section, key) + "' lists protocol " + std::to_string(v) + " twice",
               "remove one of them");
        continue;
      }
      out.push_back(static_cast<std::uint8_t>(v));
    }
    return out;
  }

  void parse_dns(TrustLevel level, LevelPolicy& lp, const toml::table& t, const std::string& section) {
    check_keys(t, section, kDnsKeys);
    if (const toml::array* arr = array_of(t, "resolvers", section, "[\"gateway\", \"198.51.100.53\"]")) {
      for (const toml::node& el : *arr) {
        SourceLocation loc = where(el.source());
        const auto* s = el.as_string();
        if (s == nullptr) {
          report(loc, "entries of '" + section + ".resolvers' must be strings, not " + type_phrase(el),
                 "write resolvers = [\"gateway\"]");
          continue;
        }
        if (s->get() == "gateway") {
          if (lp.dns.gateway_resolver) report(loc, "'" + section + ".resolvers' lists \"gateway\" twice", "remove one");
          lp.dns.gateway_resolver = true;
          continue;
        }
        auto addr = IpAddress::parse(s->get());
        if (!addr) {
          report(loc, "bad resolver in '" + section + ".resolvers': " + addr.error().message,
                 "write \"gateway\" for the host's resolver, or a resolver's IP address");
          continue;
        }
        Prefix single{*addr, addr->bit_length()};
        if (!check_reachable(single, loc, "resolver")) continue;
        if (ports_contain(policy_.guardrails.closed_ports, 53)) {
          report(loc, "resolver " + addr->to_string() + " can never be reached: port 53 is in guardrails.closed_ports",
                 "take 53 out of guardrails.closed_ports, or use resolvers = [\"gateway\"]");
          continue;
        }
        if (std::find(lp.dns.resolvers.begin(), lp.dns.resolvers.end(), *addr) != lp.dns.resolvers.end()) {
          report(loc, "'" + section + ".resolvers' lists " + addr->to_string() + " twice", "remove one of them");
          continue;
        }
        lp.dns.resolvers.push_back(*addr);
      }
    }
    const toml::node* names_node = t.get("names");
    if (names_node == nullptr) return;
    SourceLocation names_loc = where(names_node->source());
    if (level == TrustLevel::trusted) {
      report(names_loc, "'" + section + ".names' cannot hold for trusted VMs: they reach every resolver directly",
             "remove it, or move it to [levels.semi-trusted.dns]");
      return;
    }
    const toml::array* arr = array_of(t, "names", section, "[\"example.org\", \"*.example.net\"]");
    if (arr == nullptr) return;
    for (const toml::node& el : *arr) {
      const auto* s = el.as_string();
      if (s == nullptr || !valid_dns_name(s->get())) {
        report(where(el.source()),
               "'" + section + ".names' entry " + (s ? quoted(s->get()) : type_phrase(el)) + " is not a DNS name",
               "write a lowercase name such as \"example.org\", or \"*.example.org\" for its subdomains");
        continue;
      }
      lp.dns.names.push_back(s->get());
    }
    // Only the host's own resolver can filter names; a VM allowed to ask any
    // other resolver would get every name from it.
    if (!lp.dns.names.empty() && (!lp.dns.gateway_resolver || !lp.dns.resolvers.empty())) {
      report(names_loc,
             "'" + section + ".names' can only be enforced when the only resolver is the host's (\"gateway\")",
             "set resolvers = [\"gateway\"], or remove names");
    }
  }

  void parse_spoof(LevelPolicy& lp, const toml::table& t, const std::string& section, SourceLocation loc) {
    check_keys(t, section, kSpoofKeys);
    auto sources = prefix_list(t, "sources", section, "[\"198.51.100.0/28\"]");
    auto destinations = prefix_list(t, "destinations", section, "[\"203.0.113.0/24\"]");
    bool ok = true;
    for (auto [list, key] : {std::pair{&sources, "sources"}, std::pair{&destinations, "destinations"}}) {
      if (list->size() > kMaxSpoofPrefixes) {
        report(where(t.get(key)->source()),
               "'" + section + "." + key + "' has " + std::to_string(list->size()) + " prefixes; at most " +
                   std::to_string(kMaxSpoofPrefixes) + " are allowed",
               "merge them into wider prefixes or drop some");
        ok = false;
      }
    }
    if (sources.empty() != destinations.empty()) {
      report(loc, "'" + section + "' needs both sources and destinations: spoofed packets may only go to listed places",
             "list up to 4 prefixes in each, or remove the section");
      ok = false;
    }
    const std::vector<Prefix> unliftable = unliftable_reserved_prefixes();
    for (const auto& s : sources) {
      auto bad =
          std::find_if(unliftable.begin(), unliftable.end(), [&](const Prefix& u) { return u.overlaps(s.value); });
      if (bad != unliftable.end()) {
        report(s.location,
               "spoofed source " + s.value.to_string() + " overlaps " + bad->to_string() +
                   ", which is never a valid source on the internet",
               "remove it");
        ok = false;
      }
    }
    for (const auto& d : destinations) ok = check_reachable(d.value, d.location, "spoof destination") && ok;
    if (!ok) return;
    lp.spoof.sources = values(sources);
    lp.spoof.destinations = values(destinations);
  }

  // Defaults higher than the owner's ceiling follow it down; only explicit
  // values above it are errors (reported in parse_level).
  void clamp_default_caps() {
    const auto& ceiling = policy_.owner.bandwidth_ceiling_bits_per_second;
    if (!ceiling) return;
    for (TrustLevel l : kAllLevels) {
      auto& lp = policy_.level(l);
      if (!explicit_egress_[static_cast<std::size_t>(l)])
        lp.egress_bits_per_second = std::min(lp.egress_bits_per_second, *ceiling);
    }
  }

  // ---- clients ----

  void parse_clients(const toml::table& t) {
    const std::string section = "clients";
    check_keys(t, section, kClientsKeys);
    if (auto v = string_of(t, "default", section, "\"untrusted\"")) {
      if (auto l = parse_trust_level(v->value)) {
        policy_.default_level = *l;
      } else {
        report(v->location, "'clients.default' is " + quoted(v->value) + ", not a trust level", level_hint(v->value));
      }
      if (policy_.owner.only_listed_clients) {
        report(v->location,
               "'clients.default' is never used: owner.only_listed_clients = true refuses unlisted clients",
               "remove clients.default, or set only_listed_clients = false");
      }
    }
    std::map<std::string, SourceLocation> group_locations;
    if (const auto* groups = sub_table(t, "groups", section)) parse_groups(*groups, group_locations);
    std::set<std::string> used_groups;
    if (const toml::node* rules = t.get("rules")) {
      if (const auto* arr = rules->as_array()) {
        for (const toml::node& el : *arr) {
          if (const auto* rt = el.as_table()) {
            parse_rule(*rt, used_groups);
          } else {
            report(where(el.source()), "each entry of 'clients.rules' must be a table, not " + type_phrase(el),
                   "write each rule as a [[clients.rules]] section");
          }
        }
      } else {
        report(where(rules->source()), "'clients.rules' must be an array of tables, not " + type_phrase(*rules),
               "write each rule as a [[clients.rules]] section");
      }
    }
    for (const auto& [name, loc] : group_locations) {
      if (!used_groups.contains(name)) {
        report(loc, "group '" + name + "' is defined but no client rule uses it, so it gives nobody a level",
               "add a [[clients.rules]] with group = \"" + name + "\", or remove the group");
      }
    }
    check_rule_order();
  }

  static std::string level_hint(const std::string& text) {
    if (auto near = closest(text, kLevelNames)) return "did you mean \"" + *near + "\"?";
    return "write \"trusted\", \"semi-trusted\" or \"untrusted\"";
  }

  void parse_groups(const toml::table& t, std::map<std::string, SourceLocation>& locations) {
    for (auto&& [key, node] : t) {
      std::string name(key.str());
      SourceLocation loc = where(key.source());
      if (!valid_group_name(name)) {
        report(loc, "group name '" + name + "' may only use letters, digits, '-' and '_'", "rename it, e.g. \"lab\"");
        continue;
      }
      const auto* arr = node.as_array();
      if (arr == nullptr) {
        report(where(node.source()), "group '" + name + "' must be an array of fingerprints, not " + type_phrase(node),
               "write " + name + " = [\"sha256:...\"]");
        continue;
      }
      std::vector<std::string> members;
      std::map<std::string, int> member_lines;
      for (const toml::node& el : *arr) {
        auto fp = fingerprint_of(el, "group '" + name + "'");
        if (!fp) continue;
        if (member_lines.contains(*fp)) {
          report(where(el.source()),
                 "group '" + name + "' lists " + short_fingerprint(*fp) + " twice (first on line " +
                     std::to_string(member_lines[*fp]) + ")",
                 "remove one of them");
          continue;
        }
        member_lines[*fp] = static_cast<int>(el.source().begin.line);
        members.push_back(*fp);
      }
      if (arr->empty()) {
        report(where(node.source()), "group '" + name + "' is empty, so a rule naming it can never match",
               "list fingerprints in it, or remove it");
      }
      locations[name] = loc;
      policy_.groups[name] = std::move(members);
    }
  }

  std::optional<std::string> fingerprint_of(const toml::node& node, const std::string& what) {
    const auto* s = node.as_string();
    if (s == nullptr) {
      report(where(node.source()), "a fingerprint in " + what + " must be a string, not " + type_phrase(node),
             "write \"sha256:\" followed by 64 hex digits");
      return std::nullopt;
    }
    std::string fp = s->get();
    if (is_valid_fingerprint(fp)) return fp;
    std::string lower = fp;
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
    std::string hint =
        "a fingerprint is \"sha256:\" followed by 64 lowercase hex digits (SHA-256 of the client's public key)";
    if (is_valid_fingerprint(lower)) {
      hint = "write it in lowercase: \"" + lower + "\"";
    } else if (is_valid_fingerprint("sha256:" + lower)) {
      hint = "write it with the algorithm: \"sha256:" + lower + "\"";
    }
    report(where(node.source()), quoted(short_fingerprint(fp)) + " in " + what + " is not a key fingerprint", hint);
    return std::nullopt;
  }

  void parse_rule(const toml::table& t, std::set<std::string>& used_groups) {
    const std::size_t number = policy_.rules.size() + 1;
    const std::string what = "client rule " + std::to_string(number);
    const std::string section = "clients.rules";
    SourceLocation loc = where(t.source());
    std::size_t before = diagnostics_.size();
    check_keys(t, section, kRuleKeys);

    ClientRule rule;
    rule.location = loc;
    std::vector<std::string_view> matchers;
    for (auto m : {"fingerprint", "group", "issuer_ca", "source", "any"}) {
      if (t.get(m) != nullptr) matchers.push_back(m);
    }
    if (matchers.empty()) {
      report(loc, what + " has nothing to match a client on",
             "add one of fingerprint = \"sha256:...\", group = \"name\", issuer_ca = \"sha256:...\", source = "
             "\"198.51.100.0/24\" or any = true");
    } else if (matchers.size() > 1) {
      report(loc, what + " has several matchers (" + join(matchers) + "); a rule matches on exactly one",
             "split it into one rule per matcher");
    } else if (matchers[0] == "fingerprint") {
      rule.match = ClientRule::Match::fingerprint;
      if (auto fp = fingerprint_of(*t.get("fingerprint"), what)) rule.value = *fp;
    } else if (matchers[0] == "issuer_ca") {
      rule.match = ClientRule::Match::issuer_ca;
      if (auto fp = fingerprint_of(*t.get("issuer_ca"), what)) rule.value = *fp;
    } else if (matchers[0] == "group") {
      rule.match = ClientRule::Match::group;
      if (auto g = string_of(t, "group", section, "\"lab\"")) {
        rule.value = g->value;
        used_groups.insert(g->value);
        if (!policy_.groups.contains(g->value)) {
          std::vector<std::string_view> names;
          for (const auto& [n, members] : policy_.groups) names.push_back(n);
          auto near = closest(g->value, names);
          report(g->location, what + " names group '" + g->value + "', which [clients.groups] does not define",
                 near ? "did you mean '" + *near + "'?"
                      : "define it under [clients.groups] as " + g->value + " = [\"sha256:...\"]");
        }
      }
    } else if (matchers[0] == "source") {
      rule.match = ClientRule::Match::source;
      if (auto s = string_of(t, "source", section, "\"198.51.100.0/24\"")) {
        auto p = Prefix::parse(s->value);
        if (p) {
          rule.source = *p;
        } else {
          report(s->location, what + ": bad source prefix: " + p.error().message,
                 example_unless_fixed(p.error().message));
        }
      }
    } else {
      rule.match = ClientRule::Match::any;
      if (auto b = bool_of(t, "any", section); b && !*b) {
        report(where(t.get("any")->source()), what + " has any = false, which matches nothing",
               "write any = true to match every client, or remove the rule");
      }
    }

    if (auto l = string_of(t, "level", section, "\"semi-trusted\"")) {
      if (auto level = parse_trust_level(l->value)) {
        rule.level = *level;
      } else {
        report(l->location, what + ": " + quoted(l->value) + " is not a trust level", level_hint(l->value));
      }
    } else if (t.get("level") == nullptr) {
      report(loc, what + " has no level", "add level = \"trusted\", \"semi-trusted\" or \"untrusted\"");
    }
    if (auto n = string_of(t, "name", section, "\"alice's laptop\"")) rule.name = n->value;

    if (policy_.owner.only_listed_clients && rule.match == ClientRule::Match::any && matchers.size() == 1) {
      report(loc, what + " matches every client, which contradicts owner.only_listed_clients = true",
             "remove the rule, or set only_listed_clients = false");
    }
    // Broken rules stay in the list (the policy is rejected anyway) so rule
    // numbers in later messages are the ones the owner counts.
    rule_valid_.push_back(diagnostics_.size() == before);
    policy_.rules.push_back(std::move(rule));
  }

  std::set<std::string> fingerprints_of(const ClientRule& r) const {
    if (r.match == ClientRule::Match::fingerprint) return {r.value};
    if (r.match == ClientRule::Match::group) {
      auto it = policy_.groups.find(r.value);
      if (it != policy_.groups.end()) return {it->second.begin(), it->second.end()};
    }
    return {};
  }

  static std::string rule_label(std::size_t index, const ClientRule& r) {
    return "client rule " + std::to_string(index + 1) + " (" + r.describe_match() + ", line " +
           std::to_string(r.location.line) + ")";
  }

  // First match wins, so a rule that an earlier one always pre-empts is dead
  // and a fingerprint given two levels is read differently by different people.
  void check_rule_order() {
    const auto& rules = policy_.rules;
    for (std::size_t j = 0; j < rules.size(); ++j) {
      if (!rule_valid_[j]) continue;
      const ClientRule& rj = rules[j];
      const std::string what = "client rule " + std::to_string(j + 1) + " (" + rj.describe_match() + ")";
      bool reported = false;
      for (std::size_t i = 0; i < j && !reported; ++i) {
        if (!rule_valid_[i]) continue;
        const ClientRule& ri = rules[i];
        if (ri.match == ClientRule::Match::any) {
          report(rj.location, what + " can never match: " + rule_label(i, ri) + " matches every client first",
                 "move it above rule " + std::to_string(i + 1) + ", or remove it");
          reported = true;
        } else if (ri.match == rj.match && ri.match == ClientRule::Match::issuer_ca && ri.value == rj.value) {
          report(rj.location, what + " can never match: " + rule_label(i, ri) + " names the same CA",
                 "remove one of the two rules");
          reported = true;
        } else if (ri.match == rj.match && ri.match == ClientRule::Match::source && ri.source.contains(rj.source)) {
          report(rj.location, what + " can never match: " + rule_label(i, ri) + " covers every address it names",
                 "move it above rule " + std::to_string(i + 1) + ", or remove it");
          reported = true;
        }
      }
      if (reported) continue;
      std::set<std::string> mine = fingerprints_of(rj);
      if (mine.empty()) continue;
      std::set<std::string> earlier;
      for (std::size_t i = 0; i < j && !reported; ++i) {
        if (!rule_valid_[i]) continue;
        std::set<std::string> theirs = fingerprints_of(rules[i]);
        for (const auto& fp : mine) {
          if (theirs.contains(fp) && rules[i].level != rj.level) {
            report(rj.location,
                   what + " gives " + short_fingerprint(fp) + " the level " + std::string(to_string(rj.level)) +
                       ", but " + rule_label(i, rules[i]) + " already gives it " +
                       std::string(to_string(rules[i].level)),
                   "a client must have one level: remove the fingerprint from one of the two rules");
            reported = true;
            break;
          }
        }
        earlier.insert(theirs.begin(), theirs.end());
      }
      if (reported) continue;
      if (std::all_of(mine.begin(), mine.end(), [&](const std::string& fp) { return earlier.contains(fp); })) {
        report(rj.location, what + " can never match: every fingerprint it names is matched by an earlier rule",
               "remove it");
      }
    }
  }

  std::string filename_;
  Policy policy_;
  std::vector<Diagnostic> diagnostics_;
  std::array<bool, 3> explicit_egress_{};
  std::vector<bool> rule_valid_;
};

}  // namespace

ParseOutcome parse_policy_detailed(std::string_view toml_text, const std::string& filename) {
  try {
    return Parser(filename).run(toml_text);
  } catch (const std::exception& e) {
    // Only allocation failures can get here; still no exception leaves the library.
    ParseOutcome out;
    out.diagnostics.push_back(Diagnostic{filename, 0, 0, std::string("could not parse: ") + e.what(), ""});
    return out;
  }
}

Result<Policy> parse_policy(std::string_view toml_text, const std::string& filename) {
  ParseOutcome outcome = parse_policy_detailed(toml_text, filename);
  if (outcome.ok()) return std::move(*outcome.policy);
  std::string message;
  for (const auto& d : outcome.diagnostics) {
    if (!message.empty()) message += "\n";
    message += d.to_string();
  }
  return make_error(message);
}

Result<Policy> load_policy_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_sys_error("cannot open trust policy " + path + " (check the path in surrogated.toml)");
  std::string text;
  char buf[65536];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    text.append(buf, static_cast<std::size_t>(in.gcount()));
    if (text.size() > kMaxPolicyBytes) break;  // parse_policy reports the size
  }
  if (in.bad()) return make_sys_error("cannot read trust policy " + path);
  return parse_policy(text, path);
}

}  // namespace sg::trust
