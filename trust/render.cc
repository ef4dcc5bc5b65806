#include "trust/render.h"

namespace sg::trust {

namespace {

using nlohmann::json;

std::string prefix_text(const Prefix& p) {
  return p.length == p.address.bit_length() ? p.address.to_string() : p.to_string();
}

// A rate in the unit the file uses: an integer when exact, so the golden
// output does not depend on how doubles print.
json rate_in(std::uint64_t bits_per_second, std::uint64_t unit) {
  if (bits_per_second % unit == 0) return bits_per_second / unit;
  return static_cast<double>(bits_per_second) / static_cast<double>(unit);
}

json prefixes(const std::vector<Prefix>& list) {
  json out = json::array();
  for (const auto& p : list) out.push_back(prefix_text(p));
  return out;
}

// Single ports as numbers, ranges as "a-b" strings: the way the file writes them.
json ports(const std::vector<PortRange>& list) {
  json out = json::array();
  for (const auto& r : list) {
    if (r.first == r.last) {
      out.push_back(r.first);
    } else {
      out.push_back(r.to_string());
    }
  }
  return out;
}

json icmp(IcmpFamily family, const std::vector<std::uint8_t>& types) {
  json out = json::array();
  for (auto t : types) out.push_back(icmp_type_name(family, t));
  return out;
}

std::string reach_of(TrustLevel level) {
  switch (level) {
    case TrustLevel::trusted: return "any destination that passes the guardrails";
    case TrustLevel::semi_trusted: return "only what this section lists, after the guardrails";
    case TrustLevel::untrusted:
      return "only the client's own address and nodes holding an authcert for the client's key";
  }
  return "";
}

json level_json(const LevelPolicy& lp) {
  json j;
  j["reach"] = reach_of(lp.level);
  j["egress_mbit"] = rate_in(lp.egress_bits_per_second, 1'000'000);
  j["daily_quota"] = format_byte_size(lp.daily_quota_bytes);
  j["daily_quota_bytes"] = lp.daily_quota_bytes;
  j["per_destination"] = {{"kbit", rate_in(lp.per_destination.bits_per_second, 1'000)},
                          {"packets", lp.per_destination.packets_per_second},
                          {"v4_prefix", lp.per_destination.v4_prefix_length},
                          {"v6_prefix", lp.per_destination.v6_prefix_length}};
  j["syn_per_second"] = lp.tcp_syn_per_second;
  if (lp.level == TrustLevel::untrusted) return j;

  json resolvers = json::array();
  if (lp.dns.gateway_resolver) resolvers.push_back("gateway");
  for (const auto& r : lp.dns.resolvers) resolvers.push_back(r.to_string());
  j["dns"] = {{"resolvers", resolvers}};
  j["spoof"] = {{"sources", prefixes(lp.spoof.sources)}, {"destinations", prefixes(lp.spoof.destinations)}};
  if (lp.level == TrustLevel::trusted) return j;

  j["dns"]["names"] = lp.dns.names;
  for (auto [key, list] : {std::pair{"tcp", &lp.tcp}, std::pair{"udp", &lp.udp}}) {
    json arr = json::array();
    for (const auto& d : *list) arr.push_back(d.to_string());
    j[key] = arr;
  }
  j["icmp"] = icmp(IcmpFamily::v4, lp.icmp_types);
  j["icmpv6"] = icmp(IcmpFamily::v6, lp.icmpv6_types);
  j["tcp_syn_only_ports"] = ports(lp.tcp_syn_only_ports);
  j["protocols"] = lp.ip_protocols;
  return j;
}

std::string join(const std::vector<std::string>& items, const std::string& sep = ", ") {
  std::string out;
  for (const auto& s : items) {
    if (!out.empty()) out += sep;
    out += s;
  }
  return out.empty() ? "none" : out;
}

std::vector<std::string> prefix_strings(const std::vector<Prefix>& list) {
  std::vector<std::string> out;
  out.reserve(list.size());
  for (const auto& p : list) out.push_back(prefix_text(p));
  return out;
}

}  // namespace

json to_json(const Policy& policy) {
  json j;
  j["source_file"] = policy.source_file;
  j["version"] = policy.version;

  json owner;
  owner["only_listed_clients"] = policy.owner.only_listed_clients;
  owner["bandwidth_ceiling_mbit"] = policy.owner.bandwidth_ceiling_bits_per_second
                                        ? rate_in(*policy.owner.bandwidth_ceiling_bits_per_second, 1'000'000)
                                        : json(nullptr);
  owner["address_families"] = std::string(to_string(policy.owner.address_families));
  j["owner"] = owner;

  json clients;
  clients["default"] = std::string(to_string(policy.default_level));
  clients["groups"] = json::object();
  for (const auto& [name, members] : policy.groups) clients["groups"][name] = members;
  clients["rules"] = json::array();
  for (std::size_t i = 0; i < policy.rules.size(); ++i) {
    const ClientRule& r = policy.rules[i];
    json rule;
    rule["rule"] = i + 1;
    rule["line"] = r.location.line;
    if (!r.name.empty()) rule["name"] = r.name;
    switch (r.match) {
      case ClientRule::Match::fingerprint: rule["fingerprint"] = r.value; break;
      case ClientRule::Match::group: rule["group"] = r.value; break;
      case ClientRule::Match::issuer_ca: rule["issuer_ca"] = r.value; break;
      case ClientRule::Match::source: rule["source"] = prefix_text(r.source); break;
      case ClientRule::Match::any: rule["any"] = true; break;
    }
    rule["level"] = std::string(to_string(r.level));
    clients["rules"].push_back(rule);
  }
  j["clients"] = clients;

  json levels;
  for (TrustLevel l : kAllLevels) levels[std::string(to_string(l))] = level_json(policy.level(l));
  j["levels"] = levels;

  const Guardrails& g = policy.guardrails;
  j["guardrails"] = {{"reserved", prefixes(g.reserved)},
                     {"allow_reserved", prefixes(g.allow_reserved)},
                     {"closed_ports", ports(g.closed_ports)},
                     {"block", prefixes(g.block)},
                     {"host_addresses", prefixes(g.host_addresses)}};
  return j;
}

std::string to_text(const Policy& policy) {
  std::string out;
  out += "trust policy " + policy.source_file + " (version " + policy.version.substr(0, 19) + ")\n\n";

  const OwnerOptions& o = policy.owner;
  out += "owner:\n";
  out += std::string("  unlisted clients: ") +
         (o.only_listed_clients ? "refused (only_listed_clients)" : "get the default level") + "\n";
  out += "  bandwidth ceiling, all VMs: " +
         (o.bandwidth_ceiling_bits_per_second ? format_bit_rate(*o.bandwidth_ceiling_bits_per_second)
                                              : std::string("none")) +
         "\n";
  out += "  address families: " + std::string(to_string(o.address_families)) + "\n\n";

  out += "clients (first match wins):\n";
  for (std::size_t i = 0; i < policy.rules.size(); ++i) {
    const ClientRule& r = policy.rules[i];
    out += "  " + std::to_string(i + 1) + ". " + r.describe_match() + " -> " + std::string(to_string(r.level));
    if (!r.name.empty()) out += "  ('" + r.name + "')";
    out += "\n";
  }
  out += o.only_listed_clients ? "  otherwise: refused\n"
                               : "  otherwise: " + std::string(to_string(policy.default_level)) + " (default)\n";
  for (const auto& [name, members] : policy.groups) {
    out += "  group '" + name + "': " + std::to_string(members.size()) + " key(s)\n";
  }

  out += "\nguardrails (every level, checked first, in this order):\n";
  out += "  anti-spoofing: a VM sends only from its own address and MAC\n";
  out += "  host: a VM sends the host only ICMP errors, and DNS to its gateway when the level lists \"gateway\"\n";
  const Guardrails& g = policy.guardrails;
  out += "  reserved prefixes dropped: " + join(prefix_strings(g.reserved)) + "\n";
  if (!g.allow_reserved.empty()) out += "  ... except (lab use only): " + join(prefix_strings(g.allow_reserved)) + "\n";
  out += "  block list: " + join(prefix_strings(g.block)) + "\n";
  out +=
      "  closed TCP/UDP ports: " + (g.closed_ports.empty() ? std::string("none") : format_ports(g.closed_ports)) + "\n";
  if (!g.host_addresses.empty()) out += "  host addresses: " + join(prefix_strings(g.host_addresses)) + "\n";

  for (TrustLevel l : kAllLevels) {
    const LevelPolicy& lp = policy.level(l);
    out += "\n" + std::string(to_string(l)) + ": " + reach_of(l) + "\n";
    if (l == TrustLevel::semi_trusted) {
      std::vector<std::string> tcp, udp;
      for (const auto& d : lp.tcp) tcp.push_back(d.to_string());
      for (const auto& d : lp.udp) udp.push_back(d.to_string());
      out += "  tcp: " + join(tcp) + "\n";
      out += "  udp: " + join(udp) + "\n";
      std::vector<std::string> icmp4, icmp6, protos;
      for (auto t : lp.icmp_types) icmp4.push_back(icmp_type_name(IcmpFamily::v4, t));
      for (auto t : lp.icmpv6_types) icmp6.push_back(icmp_type_name(IcmpFamily::v6, t));
      for (auto p : lp.ip_protocols) protos.push_back(std::to_string(p));
      out += "  icmp: " + join(icmp4) + "\n";
      out += "  icmpv6: " + join(icmp6) + "\n";
      out += "  bare SYN to any destination on ports: " +
             (lp.tcp_syn_only_ports.empty() ? std::string("none") : format_ports(lp.tcp_syn_only_ports)) + "\n";
      out += "  other IP protocols: " + join(protos) + "\n";
    }
    if (l != TrustLevel::untrusted) {
      std::vector<std::string> resolvers;
      if (lp.dns.gateway_resolver) resolvers.emplace_back("gateway");
      for (const auto& r : lp.dns.resolvers) resolvers.push_back(r.to_string());
      out += "  dns resolvers: " + join(resolvers);
      if (!lp.dns.names.empty()) out += " (names: " + join(lp.dns.names) + ")";
      out += "\n";
      if (lp.spoof.enabled()) {
        out += "  spoofed sources " + join(prefix_strings(lp.spoof.sources)) + " allowed towards " +
               join(prefix_strings(lp.spoof.destinations)) + "\n";
      }
    }
    const DestinationRate& r = lp.per_destination;
    out += "  egress " + format_bit_rate(lp.egress_bits_per_second) + ", quota " +
           format_byte_size(lp.daily_quota_bytes) + "/day, per destination /" + std::to_string(r.v4_prefix_length) +
           " (IPv6 /" + std::to_string(r.v6_prefix_length) + "): " + format_bit_rate(r.bits_per_second) + " and " +
           std::to_string(r.packets_per_second) + " packets/s, TCP SYN " + std::to_string(lp.tcp_syn_per_second) +
           "/s\n";
  }
  return out;
}

}  // namespace sg::trust
