// Ends flows in the kernel's conntrack table, so that a change of what a VM
// may reach also applies to the connections it already has.
//
// The rules accept established flows early (docs/enforcement.md, "short
// path"), and a level chain accepts what conntrack calls established. So
// when a hole closes, a VM's level changes, its tunnel goes down or the VM
// is released, the daemon deletes the conntrack entries concerned: the next
// packet of such a flow is a new one to conntrack and meets the rules as
// they are now. A TCP connection that is still allowed carries on (conntrack
// picks it up mid-stream, nf_conntrack_tcp_loose); one that is not any more
// is dropped. The flow log records the old entry as ended.
//
// Only flows the rules marked with a VM's id are touched (ct mark &
// kVmIdMarkMask): one VM's, selected by the kernel during the dump, or those
// of every VM that a predicate picks (a guardrail that now forbids their
// destination: the short path does not look at the block list).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "common/net.h"
#include "common/raii/nftnl.h"
#include "common/result.h"
#include "netpolicy/conntrack_listener.h"

namespace sg::netpolicy {

// Which of a VM's flows to end. Everything unset selects all of them.
struct FlowSelector {
  std::int64_t vm_id = 0;
  // Only flows the VM sent to this prefix (original direction).
  std::optional<Prefix> destination;
  std::uint8_t protocol = 0;  // IPPROTO_*; 0: any
  // Destination ports, for protocols with ports; [0, 65535]: any.
  std::uint16_t first_port = 0;
  std::uint16_t last_port = 65535;
};

// Whether `flow` (a conntrack entry of the VM) is one `s` selects. Pure.
[[nodiscard]] bool selects(const FlowSelector& s, const FlowEvent& flow);

class ConntrackFlusher {
 public:
  // A netlink socket in the calling thread's network namespace.
  static Result<ConntrackFlusher> open();

  // Ends every flow `s` selects; returns how many were ended. A flow that
  // ends by itself meanwhile is no error.
  Result<std::size_t> end_flows(const FlowSelector& s);
  // Ends every flow of any VM (a non-zero VM id in its mark) for which
  // `pick` is true; returns how many were ended.
  Result<std::size_t> end_flows_of_all_vms(const std::function<bool(const FlowEvent&)>& pick);

 private:
  // vm_id 0: every VM's flows (no kernel filter, the mark checked here).
  Result<std::size_t> end_matching(std::int64_t vm_id, const std::function<bool(const FlowEvent&)>& pick);

  explicit ConntrackFlusher(nft::MnlSocket sock) : sock_(std::move(sock)) {}

  nft::MnlSocket sock_;
  std::uint32_t seq_ = 0;
};

}  // namespace sg::netpolicy
