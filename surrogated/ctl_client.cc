#include "surrogated/ctl_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>

#include "common/raii/fd.h"
#include "common/timeutil.h"
#include "surrogated/protocol.h"

namespace sg {

Result<nlohmann::json> call_daemon(const std::string& socket_path, const std::string& op, const nlohmann::json& args,
                                   const certs::KeyPair* key) {
  auto wire = proto::encode_request(op, args, key, now_unix());
  if (!wire) return wire.error();
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof addr.sun_path) return make_error("socket path too long: " + socket_path);
  std::copy(socket_path.begin(), socket_path.end(), addr.sun_path);
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return make_sys_error("cannot reach surrogated at " + socket_path +
                          " (is it running? 'systemctl status surrogated', or pass --socket)");
  }
  timeval tv{120, 0};  // allocation of a real guest can take a while
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  const std::string& out = *wire;
  for (std::size_t off = 0; off < out.size();) {
    ssize_t n = ::write(fd.get(), out.data() + off, out.size() - off);
    if (n < 0) return make_sys_error("cannot send request to surrogated");
    off += static_cast<std::size_t>(n);
  }
  std::string in;
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) return make_sys_error("no answer from surrogated");
    if (n == 0) break;
    in.append(buf, static_cast<std::size_t>(n));
    if (in.size() > 64 * 1024 * 1024) return make_error("answer from surrogated is too large");
  }
  auto j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error("surrogated sent an answer that is not JSON");
  return j;
}

}  // namespace sg
