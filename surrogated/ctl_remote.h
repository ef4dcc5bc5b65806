// surrogatectl's side of the HTTPS API (docs/api.md): the same operations as
// the control socket, for clients on other machines. The TLS client
// certificate and its key identify the client; nothing is signed per request.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "common/result.h"

namespace sg {

struct RemoteOptions {
  std::string url;     // "https://host:8443"
  std::string cert;    // client certificate (PEM)
  std::string key;     // its private key (PEM): the client's key
  std::string cacert;  // CA of the server's certificate; empty: the system's
  int timeout_s = 120;
};

// Sends one operation and returns a control-protocol response object
// ({"ok": true, "result": ...} or {"ok": false, "code", "error"}), so callers
// treat both transports alike.
Result<nlohmann::json> call_remote(const RemoteOptions& opt, const std::string& op, const nlohmann::json& args);

}  // namespace sg
