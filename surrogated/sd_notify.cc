#include "surrogated/sd_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/raii/fd.h"

namespace sg::sd {

bool notify(std::string_view state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (path == nullptr || path[0] == '\0') return true;
  std::size_t len = std::strlen(path);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (len >= sizeof addr.sun_path || (path[0] != '/' && path[0] != '@')) return false;
  std::memcpy(addr.sun_path, path, len);
  if (path[0] == '@') addr.sun_path[0] = '\0';  // abstract namespace
  Fd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return false;
  auto addr_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);
  return ::sendto(fd.get(), state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr), addr_len) ==
         static_cast<ssize_t>(state.size());
}

std::optional<Watchdog> Watchdog::from_env() {
  const char* usec = std::getenv("WATCHDOG_USEC");
  if (usec == nullptr) return std::nullopt;
  if (const char* pid = std::getenv("WATCHDOG_PID"); pid != nullptr && std::atol(pid) != static_cast<long>(getpid())) {
    return std::nullopt;
  }
  long long us = std::atoll(usec);
  if (us <= 0) return std::nullopt;
  return Watchdog(std::max<std::int64_t>(us / 2000, 100));
}

void Watchdog::tick(std::int64_t now_ms) {
  if (now_ms - last_ms_ < interval_ms_) return;
  last_ms_ = now_ms;
  (void)notify("WATCHDOG=1");
}

}  // namespace sg::sd
