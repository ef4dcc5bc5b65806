#include "surrogated/tunnels.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <set>
#include <sstream>

#include "common/log.h"
#include "common/raii/fd.h"
#include "common/timeutil.h"
#include "netpolicy/tc_plan.h"
#include "surrogated/enforcer.h"
#include "tunnel/gre.h"

namespace sg {
namespace {

// The kernel's view of a remote: the source address it would use and the
// MTU of the route, from a connected UDP socket (no packet is sent). Fails
// when there is no route: the client address is unreachable from here.
struct PathInfo {
  IpAddress local;
  int mtu = 1500;
};
Result<PathInfo> path_to(const IpAddress& remote) {
  const bool v4 = remote.family == Family::v4;
  Fd s(::socket(v4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s.valid()) return make_sys_error("socket");
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (v4) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(9);
    std::memcpy(&a->sin_addr, remote.bytes.data(), 4);
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(9);
    std::memcpy(&a->sin6_addr, remote.bytes.data(), 16);
    len = sizeof *a;
  }
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    return make_sys_error("the client address " + remote.to_string() + " is unreachable from this host");
  }
  PathInfo p;
  len = sizeof ss;
  if (::getsockname(s.get(), reinterpret_cast<sockaddr*>(&ss), &len) != 0) return make_sys_error("getsockname");
  p.local.family = remote.family;
  if (v4) {
    std::memcpy(p.local.bytes.data(), &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, 4);
  } else {
    std::memcpy(p.local.bytes.data(), &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, 16);
  }
  int mtu = 0;
  socklen_t ml = sizeof mtu;
  if (::getsockopt(s.get(), v4 ? IPPROTO_IP : IPPROTO_IPV6, v4 ? IP_MTU : IPV6_MTU, &mtu, &ml) == 0 && mtu > 0) {
    p.mtu = mtu;
  }
  return p;
}

std::vector<Prefix> client_prefixes(const VmRecord& vm) {
  std::vector<Prefix> out;
  std::stringstream ss(vm.client_addrs);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (auto p = Prefix::parse(item)) out.push_back(*p);
  }
  return out;
}

}  // namespace

Result<std::unique_ptr<Tunnels>> Tunnels::open(StateStore& store, const AddressPool& pool,
                                               netpolicy::CompileOptions nft, PolicySource policy) {
  auto backend = netpolicy::NftBackend::open();
  if (!backend) return with_context("nftables (tunnels)", backend.error());
  tunnel::Probe probe = tunnel::probe_kernel_gre();
  std::unique_ptr<Tunnels> t(
      new Tunnels(store, pool, std::move(nft), std::move(policy), std::move(*backend), std::move(probe)));
  auto records = store.tunnels();
  if (!records) return records.error();
  for (auto& r : *records) t->live_[r.vm_id] = Live{r, nullptr, false};
  log::info("GRE tunnels: " + t->endpoint_text() + "; " + std::to_string(t->live_.size()) + " recorded");
  return t;
}

Tunnels::~Tunnels() = default;

std::string Tunnels::endpoint_text() const {
  return std::string(tunnel::to_string(probe_.kind)) + " (" + probe_.reason + ")";
}

std::optional<netpolicy::TunnelNet> Tunnels::tunnel_of(const std::string& vm_name) const {
  for (const auto& [id, l] : live_) {
    if (l.record.vm_name == vm_name)
      return netpolicy::TunnelNet{l.record.device, static_cast<std::uint16_t>(l.record.mtu)};
  }
  return std::nullopt;
}

std::optional<TunnelRecord> Tunnels::record_of(std::int64_t vm_id) const {
  auto it = live_.find(vm_id);
  if (it == live_.end()) return std::nullopt;
  return it->second.record;
}

std::vector<TunnelRecord> Tunnels::records() const {
  std::vector<TunnelRecord> out;
  for (const auto& [id, l] : live_) out.push_back(l.record);
  return out;
}

tunnel::PolicyRoute Tunnels::route_of(const TunnelRecord& t, const VmAddresses& addr) const {
  tunnel::PolicyRoute r;
  r.device = t.device;
  r.fwmark = netpolicy::tunnel_mark(t.vm_id);
  r.table = kTunnelTableBase + static_cast<std::uint32_t>(t.vm_id & 0xffffff);
  r.priority = kTunnelRulePriority;
  r.v4 = addr.v4_guest.has_value();
  r.v6 = addr.v6_guest.has_value();
  return r;
}

tunnel::TunnelConfig Tunnels::config_of(const TunnelRecord& t, const VmAddresses& addr) const {
  tunnel::TunnelConfig c;
  c.device = t.device;
  c.remote = *IpAddress::parse(t.remote);
  if (!t.local.empty()) {
    if (auto l = IpAddress::parse(t.local)) c.local = *l;
  }
  if (t.key >= 0) c.key = static_cast<std::uint32_t>(t.key);
  c.mtu = t.mtu;
  // Only packets for this VM come out of its tunnel.
  if (addr.v4_guest) c.inner_peers.push_back(*addr.v4_guest);
  if (addr.v6_guest) c.inner_peers.push_back(*addr.v6_guest);
  if (nft_.shaping) c.socket_priority = netpolicy::tc_handle(nft_.tc_major, t.vm_id, netpolicy::FlowClass::other);
  return c;
}

Status Tunnels::build(Live& l, const VmAddresses& addr) {
  auto remote = IpAddress::parse(l.record.remote);
  if (!remote) return with_context("recorded client address", remote.error());
  auto e = tunnel::open_endpoint(probe_.kind, config_of(l.record, addr));
  if (!e) return with_context("creating " + l.record.device, e.error());
  l.endpoint = std::move(*e);
  if (auto st = tunnel::install_policy_route(route_of(l.record, addr)); !st) {
    l.routed = true;  // partly: unbuild removes what exists
    return with_context("routing into " + l.record.device, st.error());
  }
  l.routed = true;
  return {};
}

void Tunnels::unbuild(Live& l, const VmAddresses& addr) {
  if (l.routed) {
    if (auto st = tunnel::remove_policy_route(route_of(l.record, addr)); !st) {
      log::error("tunnel " + l.record.device + ": " + st.error().describe());
    }
    l.routed = false;
  }
  l.endpoint.reset();
}

void Tunnels::restore() {
  // Stray rules at our priority (a tunnel whose VM went while we were down
  // and whose row is gone, or a crash mid-teardown) go first.
  std::set<std::uint32_t> wanted;
  for (const auto& [id, l] : live_) wanted.insert(netpolicy::tunnel_mark(id));
  if (auto rules = tunnel::rules_at(kTunnelRulePriority)) {
    for (const auto& r : *rules) {
      if (wanted.count(r.fwmark) != 0) continue;
      if (auto st = tunnel::remove_rule(r, kTunnelRulePriority); !st) log::error(st.error().describe());
      log::notice("GRE tunnels: removed a stray ip rule (fwmark " + std::to_string(r.fwmark) + ")");
    }
  }
  auto vms = store_.active();
  std::vector<std::int64_t> failed;
  for (auto& [id, l] : live_) {
    std::optional<VmRecord> vm;
    if (vms) {
      for (const auto& v : *vms) {
        if (v.id == id) vm = v;
      }
    }
    if (!vm) {
      failed.push_back(id);
      continue;
    }
    VmAddresses addr = pool_.addresses(vm->slot);
    if (auto st = build(l, addr); !st) {
      log::error("GRE tunnel of " + l.record.vm_name + " cannot be rebuilt, removing it: " + st.error().describe());
      unbuild(l, addr);
      failed.push_back(id);
      continue;
    }
    log::notice("GRE tunnel of " + l.record.vm_name + " to " + l.record.remote + " rebuilt (" +
                tunnel::to_string(probe_.kind) + ")");
  }
  for (auto id : failed) {
    auto l = live_.find(id);
    TunnelRecord r = l->second.record;
    live_.erase(l);
    (void)store_.remove_tunnel(id);
    // Its chain went in with the ruleset: take it out again (its VM still
    // runs; without the chain its other traffic is dropped, as before).
    auto vm = store_.find_active(r.vm_name);
    if (vm && vm->has_value() && policy_()) {
      netpolicy::Compiler c(*policy_(), nft_);
      auto net = Enforcer::vm_net(**vm, pool_.addresses((*vm)->slot));
      (void)backend_.apply(c.plan_tunnel_down(net, {r.device, static_cast<std::uint16_t>(r.mtu)}));
    }
  }
  if (!failed.empty() && live_.empty() && policy_()) prerouting_off(netpolicy::Compiler(*policy_(), nft_));
}

void Tunnels::prerouting_off(const netpolicy::Compiler& compiler) {
  // Its own transaction: should it fail, the tunnel is gone all the same,
  // and an empty dispatch costs packets only a lookup.
  if (auto st = backend_.apply(compiler.plan_prerouting_off()); !st) {
    log::warning("nftables: the last tunnel is down, but its prerouting chain stays: " + st.error().describe());
  }
}

Result<TunnelRecord> Tunnels::up(const VmRecord& vm, const TunnelRequest& req) {
  if (live_.count(vm.id) != 0) {
    return make_error(vm.name + " has a tunnel already (to " + live_[vm.id].record.remote +
                      "); 'surrogatectl tunnel down " + vm.name + "' first");
  }
  if (vm.trust_level != "untrusted") {
    return make_error(vm.name + " is " + vm.trust_level +
                      ": only untrusted VMs need a tunnel (their other traffic is dropped, not tunnelled)");
  }
  auto clients = client_prefixes(vm);
  if (clients.empty()) {
    return make_error(vm.name + " has no registered client address; allocate it with --client ADDR");
  }
  IpAddress remote;
  if (!req.remote.empty()) {
    auto r = IpAddress::parse(req.remote);
    if (!r) return make_error("client address '" + req.remote + "' is malformed: " + r.error().message);
    bool registered = false;
    for (const auto& p : clients) registered = registered || p.contains(*r);
    if (!registered) {
      return make_error(r->to_string() + " is not the client address registered for " + vm.name + " (" +
                        vm.client_addrs + "); a tunnel goes only to the VM's own client");
    }
    remote = *r;
  } else {
    bool found = false;
    for (const auto& p : clients) {
      if (!found && p.length == p.address.bit_length()) {
        remote = p.address;
        found = true;
      }
    }
    if (!found) {
      return make_error(vm.name + "'s client is registered as " + vm.client_addrs +
                        "; name your tunnel end inside it with --remote ADDR");
    }
  }
  if (remote.family == Family::v4 && (remote.bytes[0] == 0 || remote.bytes[0] == 127 || remote.bytes[0] >= 224)) {
    return make_error("client address " + remote.to_string() + " cannot be a tunnel end (not unicast)");
  }
  VmAddresses addr = pool_.addresses(vm.slot);
  for (const auto& a : {addr.v4_guest, addr.v6_guest}) {
    if (a && *a == remote) return make_error("the tunnel cannot end at the VM itself");
  }
  auto path = path_to(remote);
  if (!path) return path.error();
  if (req.no_key) {
    for (const auto& [id, l] : live_) {
      if (l.record.remote == remote.to_string() && l.record.key < 0) {
        return make_error("a tunnel without key to " + remote.to_string() + " exists already (" + l.record.vm_name +
                          "); two could not be told apart: use a key");
      }
    }
  }
  TunnelRecord t;
  t.vm_id = vm.id;
  t.vm_name = vm.name;
  t.remote = remote.to_string();
  t.local = path->local.to_string();
  t.key = req.no_key ? -1 : vm.id;  // the VM id: several VMs of one client share its address
  t.device = netpolicy::tunnel_device(nft_.iface_prefix, vm.id);
  t.mtu = tunnel::tunnel_mtu(remote.family, !req.no_key, path->mtu);
  t.created = now_unix();
  if (t.mtu < 1280) {
    return make_error("the path to " + t.remote + " has MTU " + std::to_string(path->mtu) +
                      ": too small for a tunnel (IPv6 needs 1280 inside)");
  }
  if (auto st = store_.insert_tunnel(t); !st) return st.error();
  Live l{t, nullptr, false};
  if (auto st = build(l, addr); !st) {
    unbuild(l, addr);
    (void)store_.remove_tunnel(vm.id);
    return st.error();
  }
  // Last: the chain that starts marking, once device and routes exist.
  auto policy = policy_();
  netpolicy::Compiler compiler(*policy, nft_);
  auto net = Enforcer::vm_net(vm, addr);
  if (auto st = backend_.apply(compiler.plan_tunnel_up(net, {t.device, static_cast<std::uint16_t>(t.mtu)})); !st) {
    unbuild(l, addr);
    (void)store_.remove_tunnel(vm.id);
    return with_context("installing the tunnel's rules", st.error());
  }
  live_[vm.id] = std::move(l);
  log::notice("GRE tunnel of " + vm.name + " up: " + t.device + " " + t.local + " -> " + t.remote +
              (t.key >= 0 ? " key " + std::to_string(t.key) : std::string(" no key")) + ", mtu " +
              std::to_string(t.mtu) + ", " + tunnel::to_string(probe_.kind));
  return t;
}

Status Tunnels::down(const VmRecord& vm, const std::string& why) {
  auto it = live_.find(vm.id);
  if (it == live_.end()) return make_error(vm.name + " has no tunnel");
  VmAddresses addr = pool_.addresses(vm.slot);
  // First stop marking (dispatch elements, then the chain), then routes,
  // then the device: no packet is ever routed into a missing device.
  auto policy = policy_();
  netpolicy::Compiler compiler(*policy, nft_);
  auto net = Enforcer::vm_net(vm, addr);
  const auto& r = it->second.record;
  if (auto st = backend_.apply(compiler.plan_tunnel_down(net, {r.device, static_cast<std::uint16_t>(r.mtu)})); !st) {
    log::error("tunnel of " + vm.name + ": removing its rules: " + st.error().describe() +
               " (the next full install cleans them)");
  }
  unbuild(it->second, addr);
  live_.erase(it);
  if (live_.empty()) prerouting_off(compiler);
  if (auto st = store_.remove_tunnel(vm.id); !st) return st;
  log::notice("GRE tunnel of " + vm.name + " down: " + why);
  if (on_down_) on_down_(vm);
  return {};
}

void Tunnels::released(const VmRecord& vm, const VmAddresses& /*addr*/) {
  if (live_.count(vm.id) == 0) return;
  if (auto st = down(vm, "VM released"); !st) log::error(st.error().describe());
}

nlohmann::json Tunnels::to_json(const TunnelRecord& t) const {
  nlohmann::json j = {{"vm", t.vm_name},
                      {"device", t.device},
                      {"remote", t.remote},
                      {"local", t.local},
                      {"mtu", t.mtu},
                      {"endpoint", tunnel::to_string(probe_.kind)},
                      {"created", format_utc(t.created)}};
  j["key"] = t.key >= 0 ? nlohmann::json(t.key) : nlohmann::json(nullptr);
  auto it = live_.find(t.vm_id);
  if (it != live_.end() && it->second.endpoint) {
    auto s = it->second.endpoint->stats();
    j["stats"] = {{"tx_packets", s.tx_packets}, {"tx_bytes", s.tx_bytes},     {"rx_packets", s.rx_packets},
                  {"rx_bytes", s.rx_bytes},     {"rx_dropped", s.rx_dropped}, {"tx_errors", s.tx_errors}};
  }
  return j;
}

}  // namespace sg
