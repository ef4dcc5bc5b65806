// What the conntrack and nflog listeners share: reading every message queued
// on a non-blocking netlink event socket, and noticing when the kernel had
// to drop some (ENOBUFS) so the caller can record a gap.
#pragma once

#include <libmnl/libmnl.h>
#include <sys/socket.h>
#include <time.h>

#include <cerrno>
#include <cstdint>
#include <vector>

namespace sg::netpolicy {

// CLOCK_REALTIME in nanoseconds: when an event was read.
inline std::int64_t wall_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// Reads until nothing more is queued. on_overrun(now_ns, first) runs each
// time the kernel reports ENOBUFS (events were lost), `first` true for the
// first time in this call; on_message(nlh, now_ns) runs for every message.
template <class OnOverrun, class OnMessage>
void drain_netlink(int fd, std::size_t buffer_bytes, OnOverrun on_overrun, OnMessage on_message) {
  std::vector<char> buf(buffer_bytes);
  bool overrun_reported = false;
  for (;;) {
    const ssize_t n = recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == ENOBUFS) {
        on_overrun(wall_ns(), !overrun_reported);
        overrun_reported = true;
        continue;
      }
      return;  // EAGAIN: nothing more queued
    }
    const std::int64_t now = wall_ns();
    const auto* nlh = reinterpret_cast<const nlmsghdr*>(buf.data());
    int len = static_cast<int>(n);
    while (mnl_nlmsg_ok(nlh, len)) {
      on_message(nlh, now);
      nlh = mnl_nlmsg_next(nlh, &len);
    }
  }
}

}  // namespace sg::netpolicy
