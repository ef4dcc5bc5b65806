// The HTTPS API for remote clients (docs/api.md): cpp-httplib over TLS with
// client certificates. A client's certificate must chain to one of
// [api] client_ca_files; its public key is the client's identity, exactly as
// the key that signs control-socket requests (same fingerprint). Requests are
// mapped to the control operations and run on the daemon's event loop
// through a LoopBridge; nothing here touches daemon state.
#pragma once

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "common/result.h"
#include "surrogated/config.h"
#include "surrogated/control_server.h"
#include "surrogated/loop_bridge.h"
#include "surrogated/metrics.h"
#include "surrogated/protocol.h"

namespace sg {

// Runs on the event loop: the daemon's answer to one request.
using ApiDispatch = std::function<nlohmann::json(const proto::Request&, const Peer&)>;

// The HTTP status for a control-protocol error code.
int http_status_for(const std::string& code);

// "sha256:..." of a certificate's public key (DER SubjectPublicKeyInfo), the
// value trust-policy `issuer_ca` rules name. Empty when the file holds none.
Result<std::vector<std::string>> ca_key_fingerprints(const std::string& pem_file);

class ApiServer {
 public:
  // Binds the listener and starts serving on its own threads.
  static Result<std::unique_ptr<ApiServer>> start(const ApiConfig& cfg, LoopBridge& bridge, ApiDispatch dispatch,
                                                  LabeledCounter& statuses);
  ~ApiServer();
  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;
  // Stops accepting, finishes the requests in flight and joins the threads.
  void stop();

  struct Impl;

 private:
  explicit ApiServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sg
