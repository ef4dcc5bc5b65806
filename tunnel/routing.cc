#include "tunnel/routing.h"

#include <linux/fib_rules.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>

#include <fstream>
#include <sstream>

#include "tunnel/netlink_util.h"

namespace sg::tunnel {
namespace {

NlRule make_rule(int family, std::uint32_t fwmark, std::uint32_t table, std::uint32_t priority) {
  NlRule rule(rtnl_rule_alloc());
  rtnl_rule_set_family(rule.get(), family);
  rtnl_rule_set_prio(rule.get(), priority);
  rtnl_rule_set_mark(rule.get(), fwmark);
  rtnl_rule_set_mask(rule.get(), 0xffffffffU);
  rtnl_rule_set_table(rule.get(), table);
  rtnl_rule_set_action(rule.get(), FR_ACT_TO_TBL);
  return rule;
}

Result<nl::Route> device_route(int family, const std::string& dst, int prefix_len, unsigned ifindex,
                               std::uint32_t table) {
  nl::Route route(rtnl_route_alloc());
  if (!route) return make_error("out of memory for a route");
  nl_addr* raw = nullptr;
  if (int err = nl_addr_parse(dst.c_str(), family, &raw); err < 0) return nl_error("address " + dst, err);
  nl::NlAddr addr(raw);
  nl_addr_set_prefixlen(addr.get(), prefix_len);
  rtnl_route_set_family(route.get(), static_cast<std::uint8_t>(family));
  rtnl_route_set_table(route.get(), table);
  rtnl_route_set_scope(route.get(), RT_SCOPE_LINK);
  rtnl_route_set_protocol(route.get(), RTPROT_STATIC);
  if (int err = rtnl_route_set_dst(route.get(), addr.get()); err < 0) return nl_error("route destination", err);
  rtnl_nexthop* nh = rtnl_route_nh_alloc();
  if (nh == nullptr) return make_error("out of memory for a next hop");
  rtnl_route_nh_set_ifindex(nh, static_cast<int>(ifindex));
  rtnl_route_add_nexthop(route.get(), nh);  // the route owns it from here
  return route;
}

std::vector<int> families(const PolicyRoute& r) {
  std::vector<int> f;
  if (r.v4) f.push_back(AF_INET);
  if (r.v6) f.push_back(AF_INET6);
  return f;
}

}  // namespace

Status install_policy_route(const PolicyRoute& r) {
  unsigned ifindex = ::if_nametoindex(r.device.c_str());
  if (ifindex == 0) return make_sys_error("tunnel device " + r.device + " does not exist");
  auto sock = route_socket();
  if (!sock) return sock.error();
  // Routes first: from the moment the rule exists, the table must not be
  // empty, or marked packets would fall through to the main table (and be
  // dropped by the VM's chain, but needlessly).
  for (int family : families(r)) {
    auto route = device_route(family, family == AF_INET ? "0.0.0.0" : "::", 0, ifindex, r.table);
    if (!route) return route.error();
    if (int err = rtnl_route_add(sock->get(), route->get(), NLM_F_CREATE | NLM_F_REPLACE); err < 0) {
      return nl_error("adding the default route via " + r.device + " to table " + std::to_string(r.table), err);
    }
  }
  for (int family : families(r)) {
    auto rule = make_rule(family, r.fwmark, r.table, r.priority);
    (void)rtnl_rule_delete(sock->get(), rule.get(), 0);  // a stale copy from before a crash
    if (int err = rtnl_rule_add(sock->get(), rule.get(), NLM_F_CREATE); err < 0) {
      return nl_error("adding ip rule fwmark " + std::to_string(r.fwmark) + " lookup " + std::to_string(r.table), err);
    }
  }
  // Replies come from anywhere, into a device without an IPv4 address: the
  // kernel's reverse-path filter drops those even in loose mode, so it is
  // off on the device (the effective value is the larger of "all" and the
  // device's). The nftables rules check what a tunnel delivers instead.
  if (r.v4) {
    if (auto st = write_sysctl("net/ipv4/conf/" + r.device + "/rp_filter", "0"); !st) return st;
    if (read_sysctl("net/ipv4/conf/all/rp_filter") != "0") {
      return make_error("net.ipv4.conf.all.rp_filter is not 0, so replies out of tunnel " + r.device +
                        " would be dropped; set it to 0 and give each interface its own rp_filter");
    }
  }
  return {};
}

Status remove_policy_route(const PolicyRoute& r) {
  auto sock = route_socket();
  if (!sock) return sock.error();
  Status result;
  for (int family : families(r)) {
    auto rule = make_rule(family, r.fwmark, r.table, r.priority);
    int err = rtnl_rule_delete(sock->get(), rule.get(), 0);
    if (err < 0 && err != -NLE_OBJ_NOTFOUND && err != -NLE_NOADDR && result.ok()) {
      result = nl_error("removing ip rule fwmark " + std::to_string(r.fwmark), err);
    }
  }
  unsigned ifindex = ::if_nametoindex(r.device.c_str());
  if (ifindex == 0) return result;  // the routes went with the device
  for (int family : families(r)) {
    auto route = device_route(family, family == AF_INET ? "0.0.0.0" : "::", 0, ifindex, r.table);
    if (!route) continue;
    (void)rtnl_route_delete(sock->get(), route->get(), 0);
  }
  return result;
}

Result<std::vector<InstalledRule>> rules_at(std::uint32_t priority) {
  auto sock = route_socket();
  if (!sock) return sock.error();
  std::vector<InstalledRule> out;
  nl_cache* raw = nullptr;
  if (int err = rtnl_rule_alloc_cache(sock->get(), AF_UNSPEC, &raw); err < 0) return nl_error("reading ip rules", err);
  nl::Cache cache(raw);
  for (nl_object* o = nl_cache_get_first(cache.get()); o != nullptr; o = nl_cache_get_next(o)) {
    auto* rule = reinterpret_cast<rtnl_rule*>(o);
    if (rtnl_rule_get_prio(rule) != priority) continue;
    out.push_back({rtnl_rule_get_family(rule), rtnl_rule_get_mark(rule), rtnl_rule_get_table(rule)});
  }
  return out;
}

Status remove_rule(const InstalledRule& rule, std::uint32_t priority) {
  auto sock = route_socket();
  if (!sock) return sock.error();
  auto r = make_rule(rule.family, rule.fwmark, rule.table, priority);
  if (int err = rtnl_rule_delete(sock->get(), r.get(), 0); err < 0 && err != -NLE_OBJ_NOTFOUND) {
    return nl_error("removing stale ip rule fwmark " + std::to_string(rule.fwmark), err);
  }
  return {};
}

Status add_host_routes(const std::string& device, const std::vector<IpAddress>& addresses) {
  unsigned ifindex = ::if_nametoindex(device.c_str());
  if (ifindex == 0) return make_sys_error("device " + device + " does not exist");
  auto sock = route_socket();
  if (!sock) return sock.error();
  for (const auto& a : addresses) {
    const bool v4 = a.family == Family::v4;
    auto route = device_route(v4 ? AF_INET : AF_INET6, a.to_string(), a.bit_length(), ifindex, RT_TABLE_MAIN);
    if (!route) return route.error();
    if (int err = rtnl_route_add(sock->get(), route->get(), NLM_F_CREATE | NLM_F_REPLACE); err < 0) {
      return nl_error("adding route " + a.to_string() + " dev " + device, err);
    }
  }
  return {};
}

Status write_sysctl(const std::string& key, const std::string& value) {
  std::ofstream f("/proc/sys/" + key);
  if (!f) return make_sys_error("cannot open /proc/sys/" + key);
  f << value << "\n";
  f.flush();
  if (!f) return make_sys_error("cannot write " + value + " to /proc/sys/" + key);
  return {};
}

std::string read_sysctl(const std::string& key) {
  std::ifstream f("/proc/sys/" + key);
  std::string v;
  std::getline(f, v);
  return v;
}

}  // namespace sg::tunnel
