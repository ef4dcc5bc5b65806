#include "netpolicy/conntrack_flush.h"

#include <endian.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "netpolicy/netlink_drain.h"

namespace sg::netpolicy {

bool selects(const FlowSelector& s, const FlowEvent& flow) {
  if (s.vm_id != flow.vm_id) return false;
  if (s.destination && !s.destination->contains(flow.dst)) return false;
  if (s.protocol != 0 && s.protocol != flow.proto) return false;
  const bool any_port = s.first_port == 0 && s.last_port == 65535;
  if (!any_port && (!flow.has_ports || flow.dport < s.first_port || flow.dport > s.last_port)) return false;
  return true;
}

namespace {

// What a delete needs of one dumped entry: its family and original tuple
// (copied as the kernel sent it, whatever the protocol) and its id.
struct Entry {
  std::uint8_t family = AF_UNSPEC;
  std::vector<char> tuple;  // the whole CTA_TUPLE_ORIG attribute
  std::uint32_t id_be = 0;  // CTA_ID, network order
  bool has_id = false;
};

std::optional<Entry> entry_of(const nlmsghdr* nlh) {
  const auto* nfg = static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(nlh));
  Entry e;
  e.family = nfg->nfgen_family;
  mnl_attr_parse(
      nlh, sizeof(nfgenmsg),
      [](const nlattr* attr, void* data) -> int {
        auto* out = static_cast<Entry*>(data);
        const auto type = mnl_attr_get_type(attr);
        if (type == CTA_TUPLE_ORIG) {
          const auto* begin = reinterpret_cast<const char*>(attr);
          out->tuple.assign(begin, begin + attr->nla_len);
        } else if (type == CTA_ID && mnl_attr_get_payload_len(attr) == 4) {
          std::memcpy(&out->id_be, mnl_attr_get_payload(attr), 4);
          out->has_id = true;
        }
        return MNL_CB_OK;
      },
      &e);
  if (e.tuple.empty()) return std::nullopt;
  return e;
}

nlmsghdr* put_request(std::vector<char>& buf, std::uint16_t msg, std::uint16_t flags, std::uint8_t family,
                      std::uint32_t seq) {
  buf.assign(MNL_SOCKET_BUFFER_SIZE, 0);
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
  nlh->nlmsg_type = static_cast<std::uint16_t>((NFNL_SUBSYS_CTNETLINK << 8) | msg);
  nlh->nlmsg_flags = static_cast<std::uint16_t>(NLM_F_REQUEST | flags);
  nlh->nlmsg_seq = seq;
  auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  nfg->nfgen_family = family;
  nfg->version = NFNETLINK_V0;
  nfg->res_id = 0;
  return nlh;
}

}  // namespace

Result<ConntrackFlusher> ConntrackFlusher::open() {
  nft::MnlSocket sock(mnl_socket_open(NETLINK_NETFILTER));
  if (!sock) return make_sys_error("opening a netlink socket for conntrack");
  if (mnl_socket_bind(sock.get(), 0, MNL_SOCKET_AUTOPID) < 0) return make_sys_error("binding the conntrack socket");
  return ConntrackFlusher(std::move(sock));
}

template <class OnMessage>
Status ConntrackFlusher::exchange(std::vector<char>& request, const char* what, OnMessage on_message) {
  auto* nlh = reinterpret_cast<nlmsghdr*>(request.data());
  const auto seq = nlh->nlmsg_seq;
  const auto portid = mnl_socket_get_portid(sock_.get());
  const int fd = mnl_socket_get_fd(sock_.get());
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE * 4);
  // The rest of an answer an earlier call gave up on would fail the
  // sequence check: drop it first.
  while (recv(fd, buf.data(), buf.size(), MSG_DONTWAIT) > 0) {
  }
  if (mnl_socket_sendto(sock_.get(), nlh, nlh->nlmsg_len) < 0) return make_sys_error(std::string("sending ") + what);
  struct Ctx {
    OnMessage* on_message;
  } ctx{&on_message};
  for (;;) {
    pollfd pfd{fd, POLLIN, 0};
    if (poll(&pfd, 1, 5000) <= 0) return make_error(std::string(what) + ": no answer from the kernel within 5 s");
    const ssize_t n = recv(fd, buf.data(), buf.size(), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return make_sys_error(std::string("reading the answer to ") + what);
    }
    const int rc = mnl_cb_run(
        buf.data(), static_cast<size_t>(n), seq, portid,
        [](const nlmsghdr* m, void* data) -> int {
          (*static_cast<Ctx*>(data)->on_message)(m);
          return MNL_CB_OK;
        },
        &ctx);
    if (rc == MNL_CB_STOP) return {};
    if (rc == MNL_CB_ERROR) return make_sys_error(what);
  }
}

Result<std::size_t> ConntrackFlusher::end_flows(const FlowSelector& s) {
  if (s.vm_id <= 0 || static_cast<std::uint64_t>(s.vm_id) > kVmIdMarkMask) {
    return make_error("ending flows: VM id " + std::to_string(s.vm_id) + " is not one the rules mark flows with");
  }
  // The VM's flows, selected by the kernel: ct mark & kVmIdMarkMask == id.
  std::vector<char> req;
  nlmsghdr* nlh = put_request(req, IPCTNL_MSG_CT_GET, NLM_F_DUMP, AF_UNSPEC, ++seq_);
  mnl_attr_put_u32(nlh, CTA_MARK, htobe32(static_cast<std::uint32_t>(s.vm_id)));
  mnl_attr_put_u32(nlh, CTA_MARK_MASK, htobe32(kVmIdMarkMask));
  std::vector<Entry> doomed;
  const std::int64_t now = wall_ns();
  if (auto st = exchange(req, "a conntrack dump",
                         [&](const nlmsghdr* m) {
                           auto flow = parse_conntrack_message(m, now);
                           if (!flow || !selects(s, *flow)) return;
                           if (auto e = entry_of(m)) doomed.push_back(std::move(*e));
                         });
      !st) {
    return st.error();
  }
  std::size_t ended = 0;
  for (const Entry& e : doomed) {
    nlh = put_request(req, IPCTNL_MSG_CT_DELETE, NLM_F_ACK, e.family, ++seq_);
    std::memcpy(mnl_nlmsg_get_payload_tail(nlh), e.tuple.data(), e.tuple.size());
    nlh->nlmsg_len += MNL_ALIGN(static_cast<std::uint32_t>(e.tuple.size()));
    if (e.has_id) mnl_attr_put_u32(nlh, CTA_ID, e.id_be);
    auto st = exchange(req, "deleting a conntrack entry", [](const nlmsghdr*) {});
    if (st) {
      ++ended;
    } else if (st.error().sys_errno != ENOENT) {  // ENOENT: it ended by itself meanwhile
      return st.error();
    }
  }
  return ended;
}

}  // namespace sg::netpolicy
