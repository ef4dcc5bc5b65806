// The control socket: a Unix stream socket any local user may connect to.
// Who the client is comes from the signature on its request; whether the
// peer is an admin comes from SO_PEERCRED (root, or in the admin group).
#pragma once

#include <poll.h>
#include <sys/types.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/net.h"
#include "common/raii/fd.h"
#include "common/result.h"
#include "surrogated/protocol.h"

namespace sg {

struct Peer {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  bool admin = false;
  // Requests that arrive over the HTTPS API (docs/api.md): the client
  // certificate's public key, already proven by the TLS handshake, stands in
  // for the request signature; the fingerprint of the CA that issued it and
  // the remote address feed the trust policy's issuer_ca and source rules.
  std::optional<std::string> tls_key_pem;
  std::optional<std::string> issuer_ca_fp;
  std::optional<IpAddress> remote;
  // "" for the control socket, "api" or "web": names the actor in the audit.
  std::string via;
};

using RequestHandler = std::function<nlohmann::json(const proto::Request&, const Peer&)>;

class ControlServer {
 public:
  static Result<ControlServer> listen(const std::string& path, const std::string& admin_group);

  [[nodiscard]] int listen_fd() const { return listener_.get(); }
  // The descriptors to poll, besides the listener, and what to poll for.
  void collect_poll(std::vector<struct pollfd>& fds) const;
  // Accepts new connections and serves the ready ones.
  void on_ready(const std::vector<struct pollfd>& fds, const RequestHandler& handler);
  // Drops connections idle for longer than the timeout.
  void expire_idle();

 private:
  struct Conn {
    Fd fd;
    Peer peer;
    std::string in;
    std::string out;
    std::size_t out_pos = 0;
    std::int64_t since_ms = 0;
    bool done_reading = false;
  };
  ControlServer(Fd listener, std::string path, std::string admin_group)
      : listener_(std::move(listener)), path_(std::move(path)), admin_group_(std::move(admin_group)) {}
  void accept_all();
  void serve(Conn& c, const RequestHandler& handler);
  [[nodiscard]] bool is_admin(uid_t uid, gid_t gid) const;

  Fd listener_;
  std::string path_;
  std::string admin_group_;
  std::vector<Conn> conns_;
};

}  // namespace sg
