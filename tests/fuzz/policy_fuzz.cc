// libFuzzer target for the trust-policy parser: any bytes must yield either
// a policy or diagnostics, never a crash, a hang or an escaping exception.
// Parsed policies are also rendered and explained, which walks every field.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "trust/explain.h"
#include "trust/parse.h"
#include "trust/render.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto outcome = sg::trust::parse_policy_detailed(text, "fuzz.toml");
  if (!outcome.ok()) {
    for (const auto& d : outcome.diagnostics) (void)d.to_string();
    return 0;
  }
  const sg::trust::Policy& policy = *outcome.policy;
  (void)sg::trust::to_json(policy).dump();
  (void)sg::trust::to_text(policy);
  sg::trust::ExplainQuery query;
  query.destination = *sg::IpAddress::parse("198.51.100.7");
  query.port = 443;
  for (sg::trust::TrustLevel level : sg::trust::kAllLevels) (void)sg::trust::explain(policy, level, query);
  return 0;
}
