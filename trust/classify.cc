#include "trust/classify.h"

#include <algorithm>

namespace sg::trust {

namespace {

bool matches(const Policy& policy, const ClientRule& rule, const ClientIdentity& client) {
  switch (rule.match) {
    case ClientRule::Match::fingerprint: return client.fingerprint == rule.value;
    case ClientRule::Match::group: {
      auto it = policy.groups.find(rule.value);
      return it != policy.groups.end() &&
             std::find(it->second.begin(), it->second.end(), client.fingerprint) != it->second.end();
    }
    case ClientRule::Match::issuer_ca: return client.issuer_ca && *client.issuer_ca == rule.value;
    case ClientRule::Match::source: return client.source && rule.source.contains(*client.source);
    case ClientRule::Match::any: return true;
  }
  return false;
}

}  // namespace

std::string describe_rule(const Policy& policy, std::size_t index) {
  const ClientRule& rule = policy.rules.at(index);
  std::string out = "client rule " + std::to_string(index + 1);
  if (!rule.name.empty()) out += " '" + rule.name + "'";
  return out + " (" + rule.describe_match() + ")";
}

Classification classify(const Policy& policy, const ClientIdentity& client) {
  for (std::size_t i = 0; i < policy.rules.size(); ++i) {
    if (matches(policy, policy.rules[i], client)) {
      return Classification{policy.rules[i].level, false, i, describe_rule(policy, i)};
    }
  }
  if (policy.owner.only_listed_clients) {
    return Classification{TrustLevel::untrusted, true, std::nullopt, "not listed (owner.only_listed_clients)"};
  }
  return Classification{policy.default_level, false, std::nullopt, "default"};
}

}  // namespace sg::trust
