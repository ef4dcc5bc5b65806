#include "netpolicy/tc_backend.h"

#include <linux/pkt_sched.h>
#include <net/if.h>
#include <netlink/route/qdisc/htb.h>
#include <netlink/route/tc.h>

#include <algorithm>
#include <cstring>
#include <set>

namespace sg::netpolicy {

namespace {

Error nl_failure(const std::string& what, int err) { return make_error(what + ": " + nl_geterror(err)); }

std::uint64_t to_bytes(std::uint64_t bits) { return std::max<std::uint64_t>(bits / 8, 1); }

// HTB warns (and clamps) outside 1000..200000 bytes; a tenth of a second's
// worth of bytes, like rate2quantum 10, within those bounds.
std::uint32_t quantum_for(std::uint64_t bits) {
  return static_cast<std::uint32_t>(std::clamp<std::uint64_t>(bits / 80, 1500, 200'000));
}

}  // namespace

Result<TcBackend> TcBackend::open() {
  nl::Socket sk(nl_socket_alloc());
  if (!sk) return make_error("cannot allocate a netlink socket (out of memory)");
  if (int e = nl_connect(sk.get(), NETLINK_ROUTE); e < 0) return nl_failure("cannot open rtnetlink", e);
  return TcBackend(std::move(sk));
}

Result<int> TcBackend::ifindex(const std::string& device) {
  rtnl_link* raw = nullptr;
  if (int e = rtnl_link_get_kernel(sk_.get(), 0, device.c_str(), &raw); e < 0) {
    return nl_failure("no network device " + device, e);
  }
  nl::Link link(raw);
  return rtnl_link_get_ifindex(link.get());
}

Result<bool> TcBackend::device_exists(const std::string& device) {
  rtnl_link* raw = nullptr;
  int e = rtnl_link_get_kernel(sk_.get(), 0, device.c_str(), &raw);
  nl::Link link(raw);
  if (e == -NLE_OBJ_NOTFOUND || e == -NLE_NODEV) return false;
  if (e < 0) return nl_failure("looking up device " + device, e);
  return true;
}

Result<bool> TcBackend::has_qdisc(const std::string& device, std::uint32_t major) {
  auto idx = ifindex(device);
  if (!idx) return idx.error();
  nl_cache* raw = nullptr;
  if (int e = rtnl_qdisc_alloc_cache(sk_.get(), &raw); e < 0) return nl_failure("listing qdiscs", e);
  nl::Cache cache(raw);
  nl::Qdisc q(rtnl_qdisc_get_by_parent(cache.get(), *idx, TC_H_ROOT));
  if (!q) return false;
  const char* kind = rtnl_tc_get_kind(TC_CAST(q.get()));
  return kind != nullptr && std::strcmp(kind, "htb") == 0 && rtnl_tc_get_handle(TC_CAST(q.get())) == (major << 16U);
}

Status TcBackend::ensure_qdisc(const std::string& device, std::uint32_t major, const TcClass& root) {
  auto ours = has_qdisc(device, major);
  if (!ours) return ours.error();
  if (!*ours) {
    auto idx = ifindex(device);
    if (!idx) return idx.error();
    nl::Qdisc q(rtnl_qdisc_alloc());
    if (!q) return make_error("cannot allocate a qdisc (out of memory)");
    rtnl_tc_set_ifindex(TC_CAST(q.get()), *idx);
    rtnl_tc_set_parent(TC_CAST(q.get()), TC_H_ROOT);
    rtnl_tc_set_handle(TC_CAST(q.get()), major << 16U);
    if (int e = rtnl_tc_set_kind(TC_CAST(q.get()), "htb"); e < 0) return nl_failure("libnl has no htb support", e);
    // No default class: the host's own packets are not the VMs' to shape.
    rtnl_htb_set_defcls(q.get(), 0);
    rtnl_htb_set_rate2quantum(q.get(), 10);
    if (int e = rtnl_qdisc_add(sk_.get(), q.get(), NLM_F_CREATE | NLM_F_REPLACE); e < 0) {
      return nl_failure("cannot put an HTB qdisc on " + device + " (is sch_htb available?)", e);
    }
  }
  return put_class(device, root);
}

Status TcBackend::remove_qdisc(const std::string& device, std::uint32_t major) {
  auto exists = device_exists(device);
  if (!exists) return exists.error();
  if (!*exists) return {};
  auto ours = has_qdisc(device, major);
  if (!ours) return ours.error();
  if (!*ours) return {};
  auto idx = ifindex(device);
  if (!idx) return idx.error();
  nl::Qdisc q(rtnl_qdisc_alloc());
  rtnl_tc_set_ifindex(TC_CAST(q.get()), *idx);
  rtnl_tc_set_parent(TC_CAST(q.get()), TC_H_ROOT);
  rtnl_tc_set_handle(TC_CAST(q.get()), major << 16U);
  if (int e = rtnl_qdisc_delete(sk_.get(), q.get()); e < 0 && e != -NLE_OBJ_NOTFOUND) {
    return nl_failure("cannot remove the HTB qdisc of " + device, e);
  }
  return {};
}

Status TcBackend::put_class(const std::string& device, const TcClass& c) {
  auto idx = ifindex(device);
  if (!idx) return idx.error();
  nl::Class cls(rtnl_class_alloc());
  if (!cls) return make_error("cannot allocate a tc class (out of memory)");
  rtnl_tc_set_ifindex(TC_CAST(cls.get()), *idx);
  rtnl_tc_set_handle(TC_CAST(cls.get()), c.handle);
  rtnl_tc_set_parent(TC_CAST(cls.get()), c.parent == 0 ? (c.handle & 0xffff0000U) : c.parent);
  if (int e = rtnl_tc_set_kind(TC_CAST(cls.get()), "htb"); e < 0) return nl_failure("libnl has no htb support", e);
  rtnl_htb_set_rate64(cls.get(), to_bytes(c.rate));
  rtnl_htb_set_ceil64(cls.get(), to_bytes(std::max(c.ceil, c.rate)));
  rtnl_htb_set_quantum(cls.get(), quantum_for(c.rate));
  // NLM_F_CREATE without NLM_F_EXCL: add, or change the existing class.
  if (int e = rtnl_class_add(sk_.get(), cls.get(), NLM_F_CREATE); e < 0) {
    return nl_failure("cannot set tc class " + tc_class_text(device, c), e);
  }
  return {};
}

Status TcBackend::delete_class(const std::string& device, std::uint32_t handle) {
  auto idx = ifindex(device);
  if (!idx) return idx.error();
  nl::Class cls(rtnl_class_alloc());
  rtnl_tc_set_ifindex(TC_CAST(cls.get()), *idx);
  rtnl_tc_set_handle(TC_CAST(cls.get()), handle);
  if (int e = rtnl_class_delete(sk_.get(), cls.get()); e < 0 && e != -NLE_OBJ_NOTFOUND && e != -NLE_NOATTR) {
    return nl_failure("cannot remove tc class " + tc_handle_text(handle) + " of " + device, e);
  }
  return {};
}

Result<std::vector<TcClassState>> TcBackend::list_classes(const std::string& device, std::uint32_t major) {
  auto idx = ifindex(device);
  if (!idx) return idx.error();
  nl_cache* raw = nullptr;
  if (int e = rtnl_class_alloc_cache(sk_.get(), *idx, &raw); e < 0)
    return nl_failure("listing classes of " + device, e);
  nl::Cache cache(raw);
  std::vector<TcClassState> out;
  for (nl_object* o = nl_cache_get_first(cache.get()); o != nullptr; o = nl_cache_get_next(o)) {
    auto* cls = reinterpret_cast<rtnl_class*>(o);
    const char* kind = rtnl_tc_get_kind(TC_CAST(cls));
    if (kind == nullptr || std::strcmp(kind, "htb") != 0) continue;
    std::uint32_t handle = rtnl_tc_get_handle(TC_CAST(cls));
    if ((handle >> 16U) != major) continue;
    TcClassState s;
    s.cls.handle = handle;
    std::uint32_t parent = rtnl_tc_get_parent(TC_CAST(cls));
    s.cls.parent = parent == (major << 16U) ? 0 : parent;
    std::uint64_t v = 0;
    if (rtnl_htb_get_rate64(cls, &v) == 0) s.cls.rate = v * 8;
    if (rtnl_htb_get_ceil64(cls, &v) == 0) s.cls.ceil = v * 8;
    s.bytes = rtnl_tc_get_stat(TC_CAST(cls), RTNL_TC_BYTES);
    s.packets = rtnl_tc_get_stat(TC_CAST(cls), RTNL_TC_PACKETS);
    s.drops = rtnl_tc_get_stat(TC_CAST(cls), RTNL_TC_DROPS);
    out.push_back(s);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.cls.handle < b.cls.handle; });
  return out;
}

Result<std::vector<std::string>> TcBackend::routed_devices(const std::string& exclude_prefix) {
  std::set<int> routed;
  for (int family : {AF_INET, AF_INET6}) {
    nl_cache* raw = nullptr;
    if (int e = rtnl_route_alloc_cache(sk_.get(), family, 0, &raw); e < 0) return nl_failure("listing routes", e);
    nl::Cache cache(raw);
    for (nl_object* o = nl_cache_get_first(cache.get()); o != nullptr; o = nl_cache_get_next(o)) {
      auto* route = reinterpret_cast<rtnl_route*>(o);
      // Local and broadcast routes name every interface with an address;
      // only routes of the main table say where traffic leaves.
      if (rtnl_route_get_table(route) != RT_TABLE_MAIN || rtnl_route_get_type(route) != RTN_UNICAST) continue;
      for (int i = 0; i < rtnl_route_get_nnexthops(route); ++i) {
        routed.insert(rtnl_route_nh_get_ifindex(rtnl_route_nexthop_n(route, i)));
      }
    }
  }
  std::vector<std::string> out;
  for (int idx : routed) {
    char name[IF_NAMESIZE] = {};
    if (if_indextoname(static_cast<unsigned>(idx), name) == nullptr) continue;
    std::string n(name);
    if (n == "lo" || (!exclude_prefix.empty() && n.rfind(exclude_prefix, 0) == 0)) continue;
    out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace sg::netpolicy
