// surrogatectl's side of the control protocol.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "certs/identity.h"
#include "common/result.h"

namespace sg {

// Sends one request and returns the daemon's response object.
Result<nlohmann::json> call_daemon(const std::string& socket_path, const std::string& op, const nlohmann::json& args,
                                   const certs::KeyPair* key);

}  // namespace sg
