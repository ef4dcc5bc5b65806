#include "surrogated/guest_sim.h"

#include <fcntl.h>
#include <linux/if_addr.h>
#include <net/if.h>
#include <netlink/route/link/veth.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <thread>

#include "common/log.h"
#include "common/raii/fd.h"
#include "common/raii/netlink.h"

namespace sg {
namespace {

constexpr const char* kNetnsDir = "/run/netns";

Error nl_failure(const std::string& what, int err) { return make_error(what + ": " + nl_geterror(err)); }

Result<nl::Socket> route_socket() {
  nl::Socket sk(nl_socket_alloc());
  if (!sk) return make_error("out of memory for a netlink socket");
  if (int e = nl_connect(sk.get(), NETLINK_ROUTE); e < 0) return nl_failure("cannot open rtnetlink", e);
  return sk;
}

Result<int> ifindex_of(nl_sock* sk, const std::string& name) {
  rtnl_link* raw = nullptr;
  if (int e = rtnl_link_get_kernel(sk, 0, name.c_str(), &raw); e < 0) return nl_failure("no link " + name, e);
  nl::Link link(raw);
  return rtnl_link_get_ifindex(link.get());
}

Status set_up(nl_sock* sk, const std::string& name) {
  rtnl_link* raw = nullptr;
  if (int e = rtnl_link_get_kernel(sk, 0, name.c_str(), &raw); e < 0) return nl_failure("no link " + name, e);
  nl::Link link(raw);
  nl::Link change(rtnl_link_alloc());
  rtnl_link_set_flags(change.get(), IFF_UP);
  if (int e = rtnl_link_change(sk, link.get(), change.get(), 0); e < 0)
    return nl_failure("cannot set " + name + " up", e);
  return {};
}

Status add_address(nl_sock* sk, int ifindex, const std::string& cidr) {
  nl_addr* raw = nullptr;
  if (int e = nl_addr_parse(cidr.c_str(), AF_UNSPEC, &raw); e < 0) return nl_failure("bad address " + cidr, e);
  nl::NlAddr local(raw);
  nl::Addr addr(rtnl_addr_alloc());
  rtnl_addr_set_ifindex(addr.get(), ifindex);
  rtnl_addr_set_local(addr.get(), local.get());
  rtnl_addr_set_flags(addr.get(), IFA_F_NODAD);
  if (int e = rtnl_addr_add(sk, addr.get(), 0); e < 0 && e != -NLE_EXIST) {
    return nl_failure("cannot add address " + cidr, e);
  }
  return {};
}

Status add_default_route(nl_sock* sk, int ifindex, const IpAddress& gateway) {
  int family = gateway.family == Family::v4 ? AF_INET : AF_INET6;
  nl::Route route(rtnl_route_alloc());
  rtnl_route_set_family(route.get(), static_cast<uint8_t>(family));
  nl_addr* dst_raw = nullptr;
  if (int e = nl_addr_parse("default", family, &dst_raw); e < 0) return nl_failure("default route", e);
  nl::NlAddr dst(dst_raw);
  rtnl_route_set_dst(route.get(), dst.get());
  nl_addr* gw_raw = nullptr;
  if (int e = nl_addr_parse(gateway.to_string().c_str(), family, &gw_raw); e < 0) return nl_failure("gateway", e);
  nl::NlAddr gw(gw_raw);
  rtnl_nexthop* nh = rtnl_route_nh_alloc();
  rtnl_route_nh_set_gateway(nh, gw.get());
  rtnl_route_nh_set_ifindex(nh, ifindex);
  rtnl_route_add_nexthop(route.get(), nh);  // the route owns nh now
  if (int e = rtnl_route_add(sk, route.get(), NLM_F_CREATE); e < 0 && e != -NLE_EXIST) {
    return nl_failure("cannot add default route via " + gateway.to_string(), e);
  }
  return {};
}

}  // namespace

// Runs in its own thread: unshare() moves only this thread into the new
// namespace, so the daemon's other threads keep the host's.
Status GuestNetworkSimulator::build_guest(const VmRecord& vm, const VmAddresses& addr, nl_sock* host_sk) const {
  std::string path = std::string(kNetnsDir) + "/" + netns_name(vm.name);
  ::mkdir(kNetnsDir, 0755);
  // Like iproute2: make /run/netns a shared mount point so the pinned
  // namespace is visible from other mount namespaces (ip netns exec).
  if (::mount("", kNetnsDir, "none", MS_SHARED | MS_REC, nullptr) != 0 && errno == EINVAL) {
    ::mount(kNetnsDir, kNetnsDir, "none", MS_BIND | MS_REC, nullptr);
    ::mount("", kNetnsDir, "none", MS_SHARED | MS_REC, nullptr);
  }
  Fd marker(::open(path.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444));
  if (!marker.valid()) return make_sys_error("cannot create " + path);
  if (::unshare(CLONE_NEWNET) != 0) return make_sys_error("cannot create guest network namespace");
  if (::mount("/proc/thread-self/ns/net", path.c_str(), "none", MS_BIND, nullptr) != 0) {
    return make_sys_error("cannot pin guest network namespace at " + path);
  }
  Fd ns(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  // /proc/sys/net shows the opening thread's namespace: turn off duplicate
  // address detection in the guest (its addresses are unique by
  // construction), so the simulated guest is reachable at once.
  for (const char* knob : {"/proc/sys/net/ipv6/conf/default/accept_dad", "/proc/sys/net/ipv6/conf/all/accept_dad"}) {
    Fd f(::open(knob, O_WRONLY | O_CLOEXEC));
    if (f.valid()) (void)!::write(f.get(), "0", 1);
  }

  // veth: host end named like the tap, peer created directly in the guest ns.
  nl::Link veth(rtnl_link_veth_alloc());
  rtnl_link_set_name(veth.get(), vm.name.c_str());
  nl::Link peer(rtnl_link_veth_get_peer(veth.get()));
  rtnl_link_set_name(peer.get(), "eth0");
  nl_addr* mac_raw = nullptr;
  if (int e = nl_addr_parse(vm.mac.c_str(), AF_LLC, &mac_raw); e < 0) return nl_failure("bad MAC " + vm.mac, e);
  nl::NlAddr mac(mac_raw);
  rtnl_link_set_addr(peer.get(), mac.get());
  rtnl_link_set_ns_fd(peer.get(), ns.get());
  if (int e = rtnl_link_add(host_sk, veth.get(), NLM_F_CREATE | NLM_F_EXCL); e < 0) {
    return nl_failure("cannot create veth " + vm.name, e);
  }

  // Host end: what libvirt does for a managed tap with <source><ip/>.
  auto hif = ifindex_of(host_sk, vm.name);
  if (!hif) return hif.error();
  if (addr.v4_gateway) {
    if (auto st = add_address(host_sk, *hif, addr.v4_gateway->to_string() + "/30"); !st) return st;
  }
  if (addr.v6_gateway) {
    if (auto st = add_address(host_sk, *hif, addr.v6_gateway->to_string() + "/64"); !st) return st;
  }
  if (auto st = set_up(host_sk, vm.name); !st) return st;

  // Guest end, as a booting guest would configure it.
  auto guest_sk = route_socket();  // opened in the guest namespace
  if (!guest_sk) return guest_sk.error();
  if (auto st = set_up(guest_sk->get(), "lo"); !st) return st;
  auto gif = ifindex_of(guest_sk->get(), "eth0");
  if (!gif) return gif.error();
  if (addr.v4_guest) {
    if (auto st = add_address(guest_sk->get(), *gif, addr.v4_guest->to_string() + "/30"); !st) return st;
  }
  if (addr.v6_guest) {
    if (auto st = add_address(guest_sk->get(), *gif, addr.v6_guest->to_string() + "/64"); !st) return st;
  }
  if (auto st = set_up(guest_sk->get(), "eth0"); !st) return st;
  if (addr.v4_gateway) {
    if (auto st = add_default_route(guest_sk->get(), *gif, *addr.v4_gateway); !st) return st;
  }
  if (addr.v6_gateway) {
    if (auto st = add_default_route(guest_sk->get(), *gif, *addr.v6_gateway); !st) return st;
  }
  return {};
}
void GuestNetworkSimulator::remove_guest(const std::string& vm_name) const {
  if (auto sk = route_socket()) {
    rtnl_link* raw = nullptr;
    if (rtnl_link_get_kernel(sk->get(), 0, vm_name.c_str(), &raw) == 0) {
      nl::Link link(raw);
      rtnl_link_delete(sk->get(), link.get());
    }
  }
  std::string path = std::string(kNetnsDir) + "/" + netns_name(vm_name);
  ::umount2(path.c_str(), MNT_DETACH);
  ::unlink(path.c_str());
}

Status GuestNetworkSimulator::started(const VmRecord& vm, const VmAddresses& addr) {
  // Adopted after a restart: the namespace is still there.
  std::string path = std::string(kNetnsDir) + "/" + netns_name(vm.name);
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    auto sk = route_socket();
    if (sk && ifindex_of(sk->get(), vm.name)) return {};
    remove_guest(vm.name);  // half-built: start again
  }
  auto host_sk = route_socket();
  if (!host_sk) return host_sk.error();
  Status result;
  std::thread worker([&] { result = build_guest(vm, addr, host_sk->get()); });
  worker.join();
  if (!result) {
    remove_guest(vm.name);
    return with_context("simulated guest network for " + vm.name, result.error());
  }
  log::info("simulated guest " + vm.name + ": netns " + netns_name(vm.name) + ", veth " + vm.name);
  return {};
}

bool GuestNetworkSimulator::guest_alive(const std::string& vm_name) const {
  std::string path = std::string(kNetnsDir) + "/" + netns_name(vm_name);
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

void GuestNetworkSimulator::released(const VmRecord& vm, const VmAddresses& /*addr*/) { remove_guest(vm.name); }

}  // namespace sg
