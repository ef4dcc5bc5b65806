#include "surrogated/ctl_common.h"

#include <iostream>

#include "surrogated/ctl_client.h"
#include "surrogated/ctl_remote.h"

namespace sg::ctl {

int fail(const std::string& message, int code) {
  std::cerr << "surrogatectl: " << message << "\n";
  return code;
}

// Loads the client's key when --key (or SURROGATE_KEY) names one.
std::optional<certs::KeyPair> load_key(const Globals& g, bool required, int& rc) {
  rc = 0;
  if (g.key_file.empty()) {
    if (required) {
      rc = fail("this command needs your key: pass --key FILE (create one with 'surrogatectl keygen FILE')", 2);
    }
    return std::nullopt;
  }
  auto k = certs::KeyPair::load_pem_file(g.key_file);
  if (!k) {
    rc = fail(k.error().describe(), 2);
    return std::nullopt;
  }
  return std::move(*k);
}

// Calls the daemon; prints the error and returns nullopt on failure.
std::optional<nlohmann::json> call(const Globals& g, const std::string& op, const nlohmann::json& args,
                                   const certs::KeyPair* key, int& rc) {
  auto resp = g.remote.empty() ? call_daemon(g.socket, op, args, key)
                               : call_remote(RemoteOptions{g.remote, g.cert_file, g.key_file, g.cacert_file}, op, args);
  if (!resp) {
    rc = fail(resp.error().describe(), 3);
    return std::nullopt;
  }
  if (!(*resp).value("ok", false)) {
    std::string code = (*resp).value("code", "error");
    rc = fail((*resp).value("error", "unknown error") + " [" + code + "]", code == "not_found" ? 4 : 1);
    return std::nullopt;
  }
  rc = 0;
  return (*resp)["result"];
}

}  // namespace sg::ctl
