// The effective policy (every default applied) for `surrogatectl policy show`:
// as JSON (--json) and as text a person reads top to bottom.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "trust/policy.h"

namespace sg::trust {

// Keys and units as in the policy file, so the output can be compared with it.
nlohmann::json to_json(const Policy& policy);
std::string to_text(const Policy& policy);

}  // namespace sg::trust
