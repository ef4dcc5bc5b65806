#include "trust/explain.h"

#include <algorithm>

namespace sg::trust {

std::string_view to_string(Protocol protocol) {
  switch (protocol) {
    case Protocol::tcp: return "tcp";
    case Protocol::udp: return "udp";
    case Protocol::icmp: return "icmp";
    case Protocol::other: return "other";
  }
  return "other";
}

std::optional<Protocol> parse_protocol(std::string_view text) {
  for (auto p : {Protocol::tcp, Protocol::udp, Protocol::icmp, Protocol::other}) {
    if (to_string(p) == text) return p;
  }
  if (text == "icmpv6") return Protocol::icmp;
  return std::nullopt;
}

std::string_view to_string(Verdict verdict) { return verdict == Verdict::allowed ? "allowed" : "denied"; }

std::string_view to_string(StepOutcome outcome) {
  switch (outcome) {
    case StepOutcome::passed: return "passed";
    case StepOutcome::allowed: return "allowed";
    case StepOutcome::denied: return "denied";
    case StepOutcome::skipped: return "skipped";
  }
  return "skipped";
}

namespace {

IcmpFamily icmp_family(const IpAddress& a) { return a.family == Family::v4 ? IcmpFamily::v4 : IcmpFamily::v6; }

// ICMP errors a VM legitimately sends to the host that forwards its traffic.
bool is_icmp_error(const IpAddress& destination, std::uint8_t type) {
  if (destination.family == Family::v4) return type == 3 || type == 11 || type == 12;
  return type >= 1 && type <= 4;
}

std::string prefix_text(const Prefix& p) {
  return p.length == p.address.bit_length() ? p.address.to_string() : p.to_string();
}

std::string list_icmp(IcmpFamily family, const std::vector<std::uint8_t>& types) {
  std::string out;
  for (auto t : types) {
    if (!out.empty()) out += ", ";
    out += icmp_type_name(family, t);
  }
  return out;
}

// Walks the checks in ruleset order, recording each.
class Walk {
 public:
  Walk(const Policy& policy, TrustLevel level, const ExplainQuery& q, const ExplainContext& c)
      : policy_(policy), lp_(policy.level(level)), q_(q), c_(c) {
    out_.level = level;
    level_key_ = "levels." + std::string(to_string(level));
  }

  Explanation run() {
    if (anti_spoofing() || address_family() || host_protection() || reserved() || block_list() || closed_ports() ||
        level_allowance()) {
      if (out_.verdict == Verdict::allowed) add_limits();
    }
    return std::move(out_);
  }

 private:
  const std::string& dest() {
    if (dest_text_.empty()) dest_text_ = q_.destination.to_string();
    return dest_text_;
  }

  void pass(std::string check, std::string detail) {
    out_.steps.push_back({std::move(check), StepOutcome::passed, std::move(detail)});
  }
  void skip(std::string check, std::string detail) {
    out_.steps.push_back({std::move(check), StepOutcome::skipped, std::move(detail)});
  }
  // Ends the walk with a verdict.
  bool decide(Verdict verdict, std::string check, std::string decided_by, std::string reason) {
    // The step's outcome already says allowed/denied; its detail need not repeat it.
    std::string detail = reason;
    for (std::string_view lead : {"allowed: ", "denied: "}) {
      if (detail.rfind(lead, 0) == 0) detail.erase(0, lead.size());
    }
    out_.steps.push_back(
        {std::move(check), verdict == Verdict::allowed ? StepOutcome::allowed : StepOutcome::denied, detail});
    out_.verdict = verdict;
    out_.decided_by = std::move(decided_by);
    out_.reason = std::move(reason);
    return true;
  }

  bool has_port_protocol() const { return q_.protocol == Protocol::tcp || q_.protocol == Protocol::udp; }

  bool anti_spoofing() {
    const std::string check = "anti-spoofing";
    if (!q_.source) {
      skip(check, "no source address given; a VM may only send from its own address and MAC");
      return false;
    }
    if (c_.vm_address && *q_.source == *c_.vm_address) {
      pass(check, "source " + q_.source->to_string() + " is the VM's own address");
      return false;
    }
    const SpoofAllowance& spoof = lp_.spoof;
    bool src_ok = std::any_of(spoof.sources.begin(), spoof.sources.end(),
                              [&](const Prefix& p) { return p.contains(*q_.source); });
    bool dst_ok = std::any_of(spoof.destinations.begin(), spoof.destinations.end(),
                              [&](const Prefix& p) { return p.contains(q_.destination); });
    if (src_ok && dst_ok) {
      pass(check, "source " + q_.source->to_string() + " is not the VM's own, but " + level_key_ +
                      ".spoof allows it towards " + dest());
      return false;
    }
    if (!c_.vm_address) {
      skip(check, "the VM's own address is not known here, so source " + q_.source->to_string() + " cannot be checked");
      return false;
    }
    std::string reason = "denied: source " + q_.source->to_string() + " is not the VM's own address " +
                         c_.vm_address->to_string() + " (guardrail 'anti-spoofing')";
    if (src_ok) reason += "; " + level_key_ + ".spoof allows this source only towards its listed destinations";
    return decide(Verdict::denied, check, "guardrail 'anti-spoofing'", reason);
  }

  bool address_family() {
    const std::string check = "address family";
    const std::string name = q_.destination.family == Family::v4 ? "IPv4" : "IPv6";
    if (policy_.owner.allows(q_.destination.family)) {
      pass(check, name + " is enabled (owner.address_families = \"" +
                      std::string(to_string(policy_.owner.address_families)) + "\")");
      return false;
    }
    return decide(Verdict::denied, check, "owner.address_families",
                  "denied: " + name + " is turned off (owner.address_families = \"" +
                      std::string(to_string(policy_.owner.address_families)) + "\")");
  }

  bool host_protection() {
    const std::string check = "host protection";
    bool is_gateway = c_.gateway && *c_.gateway == q_.destination;
    bool is_host =
        is_gateway ||
        std::find(c_.host_addresses.begin(), c_.host_addresses.end(), q_.destination) != c_.host_addresses.end() ||
        std::any_of(policy_.guardrails.host_addresses.begin(), policy_.guardrails.host_addresses.end(),
                    [&](const Prefix& p) { return p.contains(q_.destination); });
    if (!is_host) {
      if (!c_.gateway && c_.host_addresses.empty()) {
        pass(check, dest() + " is not in guardrails.host_addresses (the host's own addresses were not given)");
      } else {
        pass(check, dest() + " is not the host");
      }
      return false;
    }
    const std::string what = is_gateway ? "the VM's gateway" : "the host itself";
    if (q_.protocol == Protocol::icmp && q_.icmp_type && is_icmp_error(q_.destination, *q_.icmp_type)) {
      return decide(Verdict::allowed, check, "guardrail 'host protection'",
                    "allowed: ICMP " + icmp_type_name(icmp_family(q_.destination), *q_.icmp_type) + " to " + what +
                        " is an error report a VM needs to send");
    }
    if (is_gateway && q_.protocol == Protocol::icmp && q_.icmp_type &&
        *q_.icmp_type == (q_.destination.family == Family::v4 ? 8 : 128)) {
      return decide(Verdict::allowed, check, "guardrail 'host protection'",
                    "allowed: a ping to the VM's own gateway (a VM needs to check its link)");
    }
    bool dns = has_port_protocol() && q_.port == 53;
    if (is_gateway && dns && lp_.dns.gateway_resolver) {
      return decide(Verdict::allowed, check, level_key_ + ".dns.resolvers",
                    "allowed: DNS to the gateway resolver (" + level_key_ + ".dns.resolvers lists \"gateway\")");
    }
    std::string reason = "denied: " + dest() + " is " + what +
                         " (guardrail 'host protection'); a VM may only send it ICMP errors" +
                         std::string(is_gateway ? ", pings" : "");
    reason += lp_.dns.gateway_resolver
                  ? ", and DNS on port 53 to the gateway"
                  : ", and DNS to the gateway only when " + level_key_ + ".dns.resolvers lists \"gateway\"";
    return decide(Verdict::denied, check, "guardrail 'host protection'", reason);
  }

  bool reserved() {
    const std::string check = "reserved prefixes";
    const Guardrails& g = policy_.guardrails;
    if (const Prefix* r = g.reserved_prefix_for(q_.destination)) {
      auto unliftable = unliftable_reserved_prefixes();
      bool never = std::any_of(unliftable.begin(), unliftable.end(), [&](const Prefix& u) { return u.overlaps(*r); });
      return decide(Verdict::denied, check, "guardrail 'reserved prefixes'",
                    "denied: " + dest() + " is in the reserved prefix " + r->to_string() +
                        " (guardrail 'reserved prefixes'); " +
                        (never ? std::string("it can never be lifted")
                               : "no policy can lift it unless guardrails.allow_reserved lists it"));
    }
    if (const Prefix* a = g.allow_reserved_for(q_.destination)) {
      pass(check, dest() + " is reserved, but guardrails.allow_reserved lifts " + a->to_string() + " (lab use only)");
      return false;
    }
    pass(check, dest() + " is not in a reserved prefix");
    return false;
  }

  bool block_list() {
    const std::string check = "block list";
    if (const Prefix* b = policy_.guardrails.block_prefix_for(q_.destination)) {
      return decide(Verdict::denied, check, "guardrails.block",
                    "denied: " + dest() + " is in the block-list prefix " + prefix_text(*b) +
                        " (guardrails.block); nothing reaches it until the owner removes it");
    }
    pass(check, dest() + " is not on the block list");
    return false;
  }

  bool closed_ports() {
    const std::string check = "closed ports";
    if (!has_port_protocol()) {
      skip(check, "applies to TCP and UDP only");
      return false;
    }
    if (!q_.port) {
      skip(check, "no port given; ports " + format_ports(policy_.guardrails.closed_ports) + " are closed");
      return false;
    }
    if (ports_contain(policy_.guardrails.closed_ports, *q_.port)) {
      return decide(Verdict::denied, check, "guardrail 'closed ports'",
                    "denied: " + std::string(to_string(q_.protocol)) + " port " + std::to_string(*q_.port) +
                        " is closed for every destination (guardrails.closed_ports)");
    }
    pass(check, "port " + std::to_string(*q_.port) + " is open");
    return false;
  }

  // Whether a hole (client's address, authcert) admits this packet.
  bool hole_admits(const Destination& d) const {
    if (!d.prefix.contains(q_.destination)) return false;
    if (has_port_protocol()) return !q_.port || ports_contain(d.ports, *q_.port);
    return d.ports.size() == 1 && d.ports.front().all();
  }

  bool level_allowance() {
    const std::string check = "level " + std::string(to_string(out_.level));
    if (c_.client_address && *c_.client_address == q_.destination) {
      return decide(Verdict::allowed, check, "client's own address",
                    "allowed: " + dest() + " is the client's own address, which every level may reach");
    }
    for (const Destination& d : c_.authorized) {
      if (hole_admits(d)) {
        return decide(Verdict::allowed, check, "authcert",
                      "allowed: " + d.to_string() + " holds a valid authcert for this client's key");
      }
    }
    switch (out_.level) {
      case TrustLevel::trusted:
        return decide(Verdict::allowed, check, "levels.trusted",
                      "allowed: trusted VMs reach any destination that passes the guardrails");
      case TrustLevel::untrusted: {
        std::string reason =
            "denied unless the destination is the client's own address or holds an authcert for this client's key";
        if (c_.client_address || !c_.authorized.empty()) {
          reason = "denied: " + dest() +
                   " is neither the client's own address nor a holder of an authcert for this "
                   "client's key (untrusted)";
        }
        return decide(Verdict::denied, check, "levels.untrusted", reason);
      }
      case TrustLevel::semi_trusted: return semi_trusted(check);
    }
    return false;
  }

  bool semi_trusted(const std::string& check) {
    switch (q_.protocol) {
      case Protocol::tcp:
      case Protocol::udp: {
        const bool tcp = q_.protocol == Protocol::tcp;
        const std::string key = level_key_ + (tcp ? ".tcp" : ".udp");
        const auto& list = tcp ? lp_.tcp : lp_.udp;
        for (const Destination& d : list) {
          if (!d.prefix.contains(q_.destination)) continue;
          if (!q_.port) {
            return decide(Verdict::allowed, check, key,
                          "allowed on ports " + format_ports(d.ports) + " only: " + key + " lists " + d.to_string());
          }
          if (ports_contain(d.ports, *q_.port)) {
            return decide(Verdict::allowed, check, key, "allowed: " + key + " lists " + d.to_string());
          }
        }
        if (q_.port == 53 &&
            std::find(lp_.dns.resolvers.begin(), lp_.dns.resolvers.end(), q_.destination) != lp_.dns.resolvers.end()) {
          return decide(Verdict::allowed, check, level_key_ + ".dns.resolvers",
                        "allowed: " + dest() + " is a resolver in " + level_key_ + ".dns.resolvers");
        }
        if (tcp && q_.port && ports_contain(lp_.tcp_syn_only_ports, *q_.port)) {
          if (q_.syn_only) {
            return decide(Verdict::allowed, check, level_key_ + ".tcp_syn_only_ports",
                          "allowed: a bare SYN to port " + std::to_string(*q_.port) + " (" + level_key_ +
                              ".tcp_syn_only_ports, for TCP traceroute); the connection itself is not");
          }
          return decide(Verdict::denied, check, level_key_ + ".tcp_syn_only_ports",
                        "denied: port " + std::to_string(*q_.port) + " is in " + level_key_ +
                            ".tcp_syn_only_ports, which lets only a bare SYN through, not a connection");
        }
        return decide(Verdict::denied, check, key,
                      "denied: " + dest() + (q_.port ? " port " + std::to_string(*q_.port) : std::string()) +
                          " is not in " + key + " (semi-trusted VMs reach only what the policy lists)");
      }
      case Protocol::icmp: {
        const bool v4 = q_.destination.family == Family::v4;
        const std::string key = level_key_ + (v4 ? ".icmp" : ".icmpv6");
        const auto& types = v4 ? lp_.icmp_types : lp_.icmpv6_types;
        IcmpFamily fam = icmp_family(q_.destination);
        if (!q_.icmp_type) {
          if (types.empty()) return decide(Verdict::denied, check, key, "denied: " + key + " allows no ICMP type");
          return decide(Verdict::allowed, check, key,
                        "allowed for ICMP types " + list_icmp(fam, types) + " only (" + key + ")");
        }
        if (std::find(types.begin(), types.end(), *q_.icmp_type) != types.end()) {
          return decide(Verdict::allowed, check, key,
                        "allowed: " + key + " lists " + icmp_type_name(fam, *q_.icmp_type));
        }
        return decide(Verdict::denied, check, key,
                      "denied: ICMP type " + icmp_type_name(fam, *q_.icmp_type) + " is not in " + key);
      }
      case Protocol::other: {
        const std::string key = level_key_ + ".protocols";
        if (q_.ip_protocol &&
            std::find(lp_.ip_protocols.begin(), lp_.ip_protocols.end(), *q_.ip_protocol) != lp_.ip_protocols.end()) {
          return decide(Verdict::allowed, check, key,
                        "allowed: " + key + " lists IP protocol " + std::to_string(*q_.ip_protocol));
        }
        return decide(Verdict::denied, check, key,
                      "denied: IP protocol " + (q_.ip_protocol ? std::to_string(*q_.ip_protocol) : std::string("?")) +
                          " is not in " + key);
      }
    }
    return false;
  }

  void add_limits() {
    const DestinationRate& r = lp_.per_destination;
    int len = q_.destination.family == Family::v4 ? r.v4_prefix_length : r.v6_prefix_length;
    out_.limits.push_back("per destination /" + std::to_string(len) + ": " + format_bit_rate(r.bits_per_second) +
                          " and " + std::to_string(r.packets_per_second) + " packets/s");
    if (q_.protocol == Protocol::tcp) {
      out_.limits.push_back("TCP SYN: " + std::to_string(lp_.tcp_syn_per_second) + "/s");
    }
    out_.limits.push_back("egress of the VM: " + format_bit_rate(lp_.egress_bits_per_second));
    out_.limits.push_back("daily quota: " + format_byte_size(lp_.daily_quota_bytes));
    if (policy_.owner.bandwidth_ceiling_bits_per_second) {
      out_.limits.push_back("all VMs together: " + format_bit_rate(*policy_.owner.bandwidth_ceiling_bits_per_second));
    }
  }

  const Policy& policy_;
  const LevelPolicy& lp_;
  const ExplainQuery& q_;
  const ExplainContext& c_;
  Explanation out_;
  std::string level_key_;
  std::string dest_text_;
};

}  // namespace

Explanation explain(const Policy& policy, TrustLevel level, const ExplainQuery& query, const ExplainContext& context) {
  return Walk(policy, level, query, context).run();
}

Explanation explain(const Policy& policy, const ClientIdentity& client, const ExplainQuery& query,
                    const ExplainContext& context) {
  Classification c = classify(policy, client);
  if (c.refused) {
    Explanation out;
    out.classification = c;
    out.verdict = Verdict::denied;
    out.decided_by = "owner.only_listed_clients";
    out.reason = "denied: the client is not listed in any client rule and owner.only_listed_clients refuses it";
    out.steps.push_back({"client", StepOutcome::denied, out.reason});
    return out;
  }
  Explanation out = explain(policy, c.level, query, context);
  out.steps.insert(out.steps.begin(), ExplainStep{"client", StepOutcome::passed,
                                                  "level " + std::string(to_string(c.level)) + " from " + c.reason});
  out.classification = std::move(c);
  return out;
}

std::string to_text(const Explanation& e) {
  std::string out = e.reason + "\n";
  out += "level: " + std::string(to_string(e.level));
  if (e.classification) out += " (" + e.classification->reason + ")";
  out += "\ndecided by: " + e.decided_by + "\nchecks, in ruleset order:\n";
  int n = 1;
  for (const auto& s : e.steps) {
    out += "  " + std::to_string(n++) + ". " + s.check + ": " + std::string(to_string(s.outcome)) + " - " + s.detail +
           "\n";
  }
  if (!e.limits.empty()) {
    out += "limits that still apply:\n";
    for (const auto& l : e.limits) out += "  - " + l + "\n";
  }
  return out;
}

nlohmann::json to_json(const Explanation& e) {
  nlohmann::json j;
  j["verdict"] = std::string(to_string(e.verdict));
  j["level"] = std::string(to_string(e.level));
  if (e.classification) {
    nlohmann::json c;
    c["level"] = std::string(to_string(e.classification->level));
    c["refused"] = e.classification->refused;
    c["reason"] = e.classification->reason;
    if (e.classification->rule_index) c["rule"] = *e.classification->rule_index + 1;
    j["classification"] = c;
  }
  j["decided_by"] = e.decided_by;
  j["reason"] = e.reason;
  j["steps"] = nlohmann::json::array();
  for (const auto& s : e.steps) {
    j["steps"].push_back({{"check", s.check}, {"outcome", std::string(to_string(s.outcome))}, {"detail", s.detail}});
  }
  j["limits"] = e.limits;
  return j;
}

}  // namespace sg::trust
