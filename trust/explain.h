// Why a packet from a VM would be allowed or dropped. The checks run in the
// order the nftables ruleset applies them (docs/trust-policy.md, "Order of
// evaluation"): anti-spoofing, address family, host protection, reserved
// prefixes, block list, closed ports, then what the level allows. The first
// check that decides ends the walk; every check considered is recorded.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/net.h"
#include "trust/classify.h"
#include "trust/policy.h"

namespace sg::trust {

enum class Protocol : std::uint8_t { tcp, udp, icmp, other };
std::string_view to_string(Protocol protocol);
// "tcp", "udp", "icmp" (ICMPv6 for an IPv6 destination), "other".
std::optional<Protocol> parse_protocol(std::string_view text);

struct ExplainQuery {
  IpAddress destination;
  Protocol protocol = Protocol::tcp;
  std::optional<std::uint16_t> port;        // tcp/udp destination port; none = "on which ports?"
  std::optional<std::uint8_t> icmp_type;    // icmp: ICMPv4 or ICMPv6 type by the destination's family
  std::optional<std::uint8_t> ip_protocol;  // other: the IP protocol number
  bool syn_only = false;                    // tcp: a bare SYN, as TCP traceroute sends
  std::optional<IpAddress> source;          // source address the VM put on the packet
};

// What only the daemon knows; every field is optional and explain says what
// it could not check without it.
struct ExplainContext {
  std::optional<IpAddress> vm_address;      // the VM's own address (anti-spoofing)
  std::optional<IpAddress> gateway;         // the VM's gateway on the host
  std::vector<IpAddress> host_addresses;    // the host's own addresses, besides guardrails.host_addresses
  std::optional<IpAddress> client_address;  // the client's own address: every level may reach it
  std::vector<Destination> authorized;      // holes from valid authcerts for the client's key
};

enum class Verdict : std::uint8_t { allowed, denied };
std::string_view to_string(Verdict verdict);

enum class StepOutcome : std::uint8_t {
  passed,   // the check does not stop the packet; the walk goes on
  allowed,  // the check accepts the packet; the walk ends
  denied,   // the check drops the packet; the walk ends
  skipped,  // not applicable, or not checkable without more context
};
std::string_view to_string(StepOutcome outcome);

struct ExplainStep {
  std::string check;  // "anti-spoofing", "host protection", "reserved prefixes", ...
  StepOutcome outcome = StepOutcome::passed;
  std::string detail;
};

struct Explanation {
  Verdict verdict = Verdict::denied;
  TrustLevel level = TrustLevel::untrusted;
  std::optional<Classification> classification;  // when explaining for a client identity
  std::string decided_by;                        // "guardrail 'reserved prefixes'", "levels.semi-trusted.tcp", ...
  std::string reason;                            // one sentence starting with "allowed:" or "denied:"
  std::vector<ExplainStep> steps;
  std::vector<std::string> limits;  // rate limits and quota that still apply when allowed
};

Explanation explain(const Policy& policy, TrustLevel level, const ExplainQuery& query,
                    const ExplainContext& context = {});
// Classifies the client first; a refused client is denied before any packet check.
Explanation explain(const Policy& policy, const ClientIdentity& client, const ExplainQuery& query,
                    const ExplainContext& context = {});

// Multi-line text for `surrogatectl policy explain`.
std::string to_text(const Explanation& explanation);
nlohmann::json to_json(const Explanation& explanation);

}  // namespace sg::trust
