#include "netpolicy/conntrack_flush.h"

#include <endian.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <netinet/in.h>

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

}  // namespace

Result<ConntrackFlusher> ConntrackFlusher::open() {
  auto sock = open_netfilter_socket("ending conntrack entries");
  if (!sock) return sock.error();
  return ConntrackFlusher(std::move(*sock));
}

Result<std::size_t> ConntrackFlusher::end_flows(const FlowSelector& s) {
  if (s.vm_id <= 0 || static_cast<std::uint64_t>(s.vm_id) > kVmIdMarkMask) {
    return make_error("ending flows: VM id " + std::to_string(s.vm_id) + " is not one the rules mark flows with");
  }
  return end_matching(s.vm_id, [&s](const FlowEvent& f) { return selects(s, f); });
}

Result<std::size_t> ConntrackFlusher::end_flows_of_all_vms(const std::function<bool(const FlowEvent&)>& pick) {
  return end_matching(0, [&pick](const FlowEvent& f) { return f.vm_id != 0 && pick(f); });
}

Result<std::size_t> ConntrackFlusher::end_matching(std::int64_t vm_id,
                                                   const std::function<bool(const FlowEvent&)>& pick) {
  constexpr auto kCt = static_cast<std::uint16_t>(NFNL_SUBSYS_CTNETLINK << 8);
  std::vector<char> req;
  nlmsghdr* nlh = put_nfnl_request(req, kCt | IPCTNL_MSG_CT_GET, NLM_F_DUMP, AF_UNSPEC, ++seq_);
  if (vm_id != 0) {
    // One VM's flows, selected by the kernel: ct mark & kVmIdMarkMask == id.
    mnl_attr_put_u32(nlh, CTA_MARK, htobe32(static_cast<std::uint32_t>(vm_id)));
    mnl_attr_put_u32(nlh, CTA_MARK_MASK, htobe32(kVmIdMarkMask));
  }
  std::vector<Entry> doomed;
  const std::int64_t now = wall_ns();
  if (auto st = nfnl_exchange(sock_.get(), nlh, "a conntrack dump",
                              [&](const nlmsghdr* m) {
                                auto flow = parse_conntrack_message(m, now);
                                if (flow && pick(*flow)) {
                                  if (auto e = entry_of(m)) doomed.push_back(std::move(*e));
                                }
                                return MNL_CB_OK;
                              });
      !st) {
    return st.error();
  }
  std::size_t ended = 0;
  for (const Entry& e : doomed) {
    nlh = put_nfnl_request(req, kCt | IPCTNL_MSG_CT_DELETE, NLM_F_ACK, e.family, ++seq_);
    std::memcpy(mnl_nlmsg_get_payload_tail(nlh), e.tuple.data(), e.tuple.size());
    nlh->nlmsg_len += MNL_ALIGN(static_cast<std::uint32_t>(e.tuple.size()));
    if (e.has_id) mnl_attr_put_u32(nlh, CTA_ID, e.id_be);
    auto st = nfnl_exchange(sock_.get(), nlh, "deleting a conntrack entry");
    if (st) {
      ++ended;
    } else if (st.error().sys_errno != ENOENT) {  // ENOENT: it ended by itself meanwhile
      return st.error();
    }
  }
  return ended;
}

}  // namespace sg::netpolicy
