// What the netfilter netlink sockets share (conntrack listener and flusher,
// nflog listener, nftables monitor): opening one; reading every message
// queued on a non-blocking event socket, noticing when the kernel had to
// drop some (ENOBUFS) so the caller can record a gap; and sending a request
// and reading its answer to the end.
#pragma once

#include <libmnl/libmnl.h>
#include <linux/netfilter/nfnetlink.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>

#include <cerrno>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/raii/nftnl.h"
#include "common/result.h"

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

// A non-blocking, close-on-exec netfilter netlink socket, bound. `what`
// names its use in errors ("conntrack events").
inline Result<nft::MnlSocket> open_netfilter_socket(const std::string& what) {
  nft::MnlSocket sock(mnl_socket_open2(NETLINK_NETFILTER, SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (!sock) return make_sys_error("opening a netfilter netlink socket for " + what);
  if (mnl_socket_bind(sock.get(), 0, MNL_SOCKET_AUTOPID) < 0) {
    return make_sys_error("binding the netfilter netlink socket for " + what);
  }
  return sock;
}

// Starts an nfnetlink request in `buf` (cleared to one page): message type
// (subsystem << 8) | message, flags besides NLM_F_REQUEST, the nfgenmsg
// header's family and res_id (network order). Attributes follow with
// mnl_attr_put*().
inline nlmsghdr* put_nfnl_request(std::vector<char>& buf, std::uint16_t type, std::uint16_t flags, std::uint8_t family,
                                  std::uint32_t seq, std::uint16_t res_id_be = 0) {
  buf.assign(MNL_SOCKET_BUFFER_SIZE, 0);
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
  nlh->nlmsg_type = type;
  nlh->nlmsg_flags = static_cast<std::uint16_t>(NLM_F_REQUEST | flags);
  nlh->nlmsg_seq = seq;
  auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  nfg->nfgen_family = family;
  nfg->version = NFNETLINK_V0;
  nfg->res_id = res_id_be;
  return nlh;
}

// Sends `request` and reads until its answer is complete: the end of a
// dump, or the kernel's ack. on_message (when given) sees every message of
// a dump and returns MNL_CB_OK, or MNL_CB_ERROR with errno set. What an
// earlier request left unread is dropped first (it would fail the sequence
// check). Errors name `what`; the kernel's errno is in Error::sys_errno.
inline Status nfnl_exchange(mnl_socket* sock, const nlmsghdr* request, const std::string& what,
                            const std::function<int(const nlmsghdr*)>& on_message = {}) {
  const int fd = mnl_socket_get_fd(sock);
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE * 4);
  while (recv(fd, buf.data(), buf.size(), MSG_DONTWAIT) > 0) {
  }
  if (mnl_socket_sendto(sock, request, request->nlmsg_len) < 0) return make_sys_error("sending " + what);
  const auto portid = mnl_socket_get_portid(sock);
  std::function<int(const nlmsghdr*)> handler = on_message;
  mnl_cb_t cb = nullptr;
  if (handler) {
    cb = [](const nlmsghdr* m, void* data) -> int {
      return (*static_cast<std::function<int(const nlmsghdr*)>*>(data))(m);
    };
  }
  for (;;) {
    pollfd pfd{fd, POLLIN, 0};
    if (poll(&pfd, 1, 5000) <= 0) return make_error(what + ": no answer from the kernel within 5 s");
    const ssize_t n = recv(fd, buf.data(), buf.size(), 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return make_sys_error("reading the answer to " + what);
    }
    const int rc = mnl_cb_run(buf.data(), static_cast<size_t>(n), request->nlmsg_seq, portid, cb, &handler);
    if (rc == MNL_CB_STOP) return {};
    if (rc == MNL_CB_ERROR) return make_sys_error(what);
  }
}

}  // namespace sg::netpolicy
