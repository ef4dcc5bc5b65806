// Which trust level a client gets: the first matching [[clients.rules]]
// entry, else clients.default, or a refusal when the owner accepts listed
// clients only.
#pragma once

#include <optional>
#include <string>

#include "common/net.h"
#include "trust/policy.h"

namespace sg::trust {

struct ClientIdentity {
  std::string fingerprint;               // "sha256:..." of the client's public key
  std::optional<std::string> issuer_ca;  // fingerprint of the CA that issued its certificate (mTLS)
  std::optional<IpAddress> source;       // where the request came from; none on the local socket
};

struct Classification {
  TrustLevel level = TrustLevel::untrusted;  // untrusted when refused
  // owner.only_listed_clients is set and no rule names this client: the
  // daemon must refuse the request rather than serve it as untrusted.
  bool refused = false;
  std::optional<std::size_t> rule_index;  // 0-based index into Policy::rules; none for the default
  // "client rule 2 'lab machines' (group 'lab')", "default", "not listed (owner.only_listed_clients)".
  std::string reason;
};

Classification classify(const Policy& policy, const ClientIdentity& client);

// "client rule 2 (group 'lab')", with the rule's name when it has one.
std::string describe_rule(const Policy& policy, std::size_t index);

}  // namespace sg::trust
