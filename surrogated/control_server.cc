#include "surrogated/control_server.h"

#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

#include "common/log.h"

namespace sg {
namespace {

constexpr std::int64_t kConnTimeoutMs = 10000;
constexpr std::size_t kMaxConnections = 128;

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Result<ControlServer> ControlServer::listen(const std::string& path, const std::string& admin_group) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return make_error("socket path too long: " + path);
  std::copy(path.begin(), path.end(), addr.sun_path);
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return make_sys_error("cannot create control socket");
  // A stale socket from a previous run: refuse if a daemon still answers.
  Fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    return make_error("another surrogated already listens on " + path + "; stop it first");
  }
  ::unlink(path.c_str());
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return make_sys_error("cannot bind control socket " + path + " (does its directory exist?)");
  }
  // Any local user may connect; identity comes from request signatures.
  ::chmod(path.c_str(), 0666);
  if (::listen(fd.get(), 64) != 0) return make_sys_error("cannot listen on " + path);
  return ControlServer(std::move(fd), path, admin_group);
}

bool ControlServer::is_admin(uid_t uid, gid_t gid) const {
  if (uid == 0) return true;
  group* g = getgrnam(admin_group_.c_str());
  if (g == nullptr) return false;
  if (gid == g->gr_gid) return true;
  passwd* pw = getpwuid(uid);
  if (pw == nullptr) return false;
  int n = 64;
  std::vector<gid_t> groups(static_cast<std::size_t>(n));
  if (getgrouplist(pw->pw_name, pw->pw_gid, groups.data(), &n) < 0) {
    groups.resize(static_cast<std::size_t>(n));
    getgrouplist(pw->pw_name, pw->pw_gid, groups.data(), &n);
  }
  groups.resize(static_cast<std::size_t>(std::max(n, 0)));
  return std::find(groups.begin(), groups.end(), g->gr_gid) != groups.end();
}

void ControlServer::collect_poll(std::vector<pollfd>& fds) const {
  fds.push_back({listener_.get(), POLLIN, 0});
  for (const auto& c : conns_) {
    fds.push_back({c.fd.get(), static_cast<short>(c.done_reading ? POLLOUT : POLLIN), 0});
  }
}

void ControlServer::accept_all() {
  for (;;) {
    Fd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd.valid()) return;
    if (conns_.size() >= kMaxConnections) {
      log::warning("control socket: too many connections, refusing one");
      continue;
    }
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) continue;
    Conn c;
    c.fd = std::move(fd);
    c.peer = Peer{cred.pid, cred.uid, cred.gid, is_admin(cred.uid, cred.gid)};
    c.since_ms = now_ms();
    conns_.push_back(std::move(c));
  }
}

void ControlServer::serve(Conn& c, const RequestHandler& handler) {
  if (!c.done_reading) {
    char buf[8192];
    for (;;) {
      ssize_t n = ::read(c.fd.get(), buf, sizeof buf);
      if (n > 0) {
        c.in.append(buf, static_cast<std::size_t>(n));
        if (c.in.size() > proto::kMaxMessageBytes) break;
        continue;
      }
      if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        if (c.in.empty()) {
          c.fd.reset();
          return;
        }
        c.in += '\n';  // peer closed its side: treat as the end of the request
      }
      break;
    }
    auto nl = c.in.find('\n');
    nlohmann::json resp;
    if (c.in.size() > proto::kMaxMessageBytes) {
      resp = proto::error_response(
          "bad_request", "request is larger than " + std::to_string(proto::kMaxMessageBytes) + " bytes; refused");
    } else if (nl == std::string::npos) {
      return;  // wait for more
    } else {
      auto req = proto::decode_request(std::string_view(c.in).substr(0, nl));
      if (!req) {
        resp = proto::error_response("bad_request", req.error().message);
      } else {
        resp = handler(*req, c.peer);
      }
    }
    c.out = resp.dump() + "\n";
    c.done_reading = true;
  }
  while (c.out_pos < c.out.size()) {
    ssize_t n = ::write(c.fd.get(), c.out.data() + c.out_pos, c.out.size() - c.out_pos);
    if (n < 0) {
      if (errno == EAGAIN) return;
      break;
    }
    c.out_pos += static_cast<std::size_t>(n);
  }
  c.fd.reset();
}

void ControlServer::on_ready(const std::vector<pollfd>& fds, const RequestHandler& handler) {
  for (const auto& p : fds) {
    if (p.revents == 0) continue;
    if (p.fd == listener_.get()) {
      accept_all();
      continue;
    }
    for (auto& c : conns_) {
      if (c.fd.get() == p.fd) serve(c, handler);
    }
  }
  conns_.erase(std::remove_if(conns_.begin(), conns_.end(), [](const Conn& c) { return !c.fd.valid(); }), conns_.end());
}

void ControlServer::expire_idle() {
  std::int64_t t = now_ms();
  conns_.erase(
      std::remove_if(conns_.begin(), conns_.end(), [t](const Conn& c) { return t - c.since_ms > kConnTimeoutMs; }),
      conns_.end());
}

}  // namespace sg
