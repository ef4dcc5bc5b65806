// Simulated guest networking for libvirt's test:// driver, whose domains
// have no tap. For each VM it does what libvirt + a real guest would do:
// a veth whose host end is named like the tap and carries the gateway
// addresses, and a network namespace "guest-<vm>" holding the other end as
// eth0 with the VM's MAC, addresses and default routes. The kernel data
// path is fully real; only the CPU running the guest is missing.
#pragma once

#include <string>

#include "common/raii/netlink.h"
#include "surrogated/vm_manager.h"

namespace sg {

class GuestNetworkSimulator final : public VmObserver {
 public:
  explicit GuestNetworkSimulator(std::string netns_prefix) : prefix_(std::move(netns_prefix)) {}
  Status started(const VmRecord& vm, const VmAddresses& addr) override;
  void released(const VmRecord& vm, const VmAddresses& addr) override;

  [[nodiscard]] std::string netns_name(const std::string& vm_name) const { return prefix_ + vm_name; }
  // A simulated guest "runs" while its namespace exists. The test driver
  // forgets its domains when the daemon exits, the namespaces do not; this
  // tells the daemon which guests outlived it, so it re-registers them.
  [[nodiscard]] bool guest_alive(const std::string& vm_name) const;

 private:
  Status build_guest(const VmRecord& vm, const VmAddresses& addr, nl_sock* host_sk) const;
  void remove_guest(const std::string& vm_name) const;
  std::string prefix_;
};

}  // namespace sg
