// The tc backend: makes HTB qdiscs and classes in the kernel equal to a plan
// from tc_plan.h, through libnl-route (rtnetlink). The only file that talks
// to the kernel about traffic control.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/raii/netlink.h"
#include "common/result.h"
#include "netpolicy/tc_plan.h"

namespace sg::netpolicy {

struct TcClassState {
  TcClass cls;
  std::uint64_t bytes = 0;  // sent through this class since it was created
  std::uint64_t packets = 0;
  std::uint64_t drops = 0;
};

class TcBackend {
 public:
  // A socket in the network namespace of the calling thread.
  static Result<TcBackend> open();

  // Makes `device`'s root qdisc an HTB with handle major: and no default class
  // (unclassified packets go out unshaped), replacing any other root qdisc,
  // and puts `root` in it. Leaves the classes of an existing HTB of ours.
  Status ensure_qdisc(const std::string& device, std::uint32_t major, const TcClass& root);
  // Removes the root qdisc of `device` when it is our HTB (and all its classes).
  Status remove_qdisc(const std::string& device, std::uint32_t major);
  // True when `device`'s root qdisc is our HTB.
  Result<bool> has_qdisc(const std::string& device, std::uint32_t major);

  // Creates the class, or changes its rates when it exists.
  Status put_class(const std::string& device, const TcClass& c);
  // Removes a class; a class that is already gone is no error.
  Status delete_class(const std::string& device, std::uint32_t handle);
  // Every HTB class of our qdisc on `device`, with counters.
  Result<std::vector<TcClassState>> list_classes(const std::string& device, std::uint32_t major);

  // Interfaces that carry a route (IPv4 or IPv6), are not loopback and whose
  // name does not start with `exclude_prefix` (the VMs' taps): where VM
  // traffic leaves the host.
  Result<std::vector<std::string>> routed_devices(const std::string& exclude_prefix);
  Result<bool> device_exists(const std::string& device);

 private:
  explicit TcBackend(nl::Socket sk) : sk_(std::move(sk)) {}
  Result<int> ifindex(const std::string& device);
  nl::Socket sk_;
};

}  // namespace sg::netpolicy
