// The pure rule compiler: (effective trust policy, running VMs, authorized
// holes) -> the daemon's nftables ruleset, and the small plans that add or
// remove one VM or one hole without touching the rest. No syscalls here.
//
// Layout (see docs/enforcement.md for the full picture): every VM runs
// through the same chains; what makes a VM itself (its MAC, addresses,
// client, level, ct mark, tc classes, quota, holes) are elements keyed by
// its interface name in shared sets and maps. Adding or removing a VM or a
// hole therefore adds or removes elements only, never a rule: on Linux 6.x
// any transaction that adds a rule or a jump re-validates every rule of the
// table, so per-VM rules made each change cost more with every VM.
//
//   table inet surrogated
//     chain forward  (hook forward, priority -10): iifname @vms goto vm_out,
//                    oifname @vms goto vm_in, then drop anything on "sg*" left
//     chain input    (hook input,   priority -10): iifname @vms goto vm_host,
//                    then drop anything from "sg*" left
//     chain vm_out   anti-spoofing, ct mark, tc class, guardrails, client,
//                    quota, holes, then goto <level>_out by @level_* set
//     chains untrusted_out / semi_out / trusted_out: meters, SYN rate,
//                    established, what the level allows
//     chains drop_<reason>: count the drop per VM in @drops, log it to the
//                    nflog group ("sg? <reason> ": the VM is the interface)
//     per VM         elements in vms, vm_mac, vm_addr_*, vm_client_*,
//                    vm_mark, vm_class, vm_quota (+ quota vm_<name>_quota),
//                    level_*, holes_*; a chain vm_<name>_pre only while its
//                    GRE tunnel is up
//   table arp surrogated
//     chain input: ARP from "sg*" only with the VM's own address and MAC
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/net.h"
#include "netpolicy/ruleset.h"
#include "netpolicy/tc_plan.h"
#include "trust/policy.h"

namespace sg::netpolicy {

struct VmNet {
  std::int64_t id = 0;  // also the flows' ct mark
  std::string name;     // "sg3": chain names and the tap
  std::string mac;
  std::optional<IpAddress> v4, v6;              // the guest's addresses
  std::optional<IpAddress> gateway4, gateway6;  // the host end of its tap
  trust::TrustLevel level = trust::TrustLevel::untrusted;
  std::vector<Prefix> client;  // the client's own addresses: always reachable
};

struct Hole {
  std::int64_t id = 0;  // authcert id (or admin hole id)
  std::string vm;       // VM name
  Prefix destination;
  std::uint8_t protocol = 0;  // IPPROTO_*; 0 = any protocol
  trust::PortRange ports;     // destination ports (tcp/udp); all for other protocols
  std::int64_t expires = 0;   // unix seconds; the kernel removes it then
  // Its own tc class (minor under CompileOptions::tc_major) when its
  // authcert names a rate; 0: the VM's shared "nodes" class.
  std::uint32_t tc_minor = 0;
};

// An untrusted VM's GRE tunnel back to its client, as the rules see it.
struct TunnelNet {
  std::string device;        // "sgt3": the tunnel's interface on the host
  std::uint16_t mtu = 1476;  // inner MTU: TCP SYNs are clamped to fit it
};

struct CompileOptions {
  std::string table = "surrogated";
  std::string iface_prefix = "sg";  // taps are "sg<id>"
  std::uint16_t log_group = 1;      // nflog group of every drop
  int priority = -10;
  // Traffic shaping (docs/shaping.md): each VM's chains set `meta priority`
  // to its HTB class (client, authorized nodes, everything else) under the
  // qdisc with this tc major.
  bool shaping = true;
  std::uint32_t tc_major = kTcMajorDefault;
  // Elements of each shared per-destination meter (all VMs together). The
  // kernel preallocates its hash table by this size (~16 bytes per element).
  std::uint32_t meter_size = 262'144;
  // GRE tunnels to the client (docs/tunnel.md): the tunnel of an untrusted
  // VM, if it has one up. Consulted on every compile, so a full reinstall
  // (restart, policy reload, repair) keeps the tunnels' rules.
  std::function<std::optional<TunnelNet>(const std::string& vm_name)> tunnel_of;
};

// Packet mark (`meta mark`) of a VM's tunnel-bound packets: set in
// prerouting, routed by `ip rule fwmark`, accepted in the VM's egress chain
// only when they leave through its own tunnel device.
inline constexpr std::uint32_t kTunnelMarkBit = 0x40000000U;
[[nodiscard]] inline std::uint32_t tunnel_mark(std::int64_t vm_id) {
  return kTunnelMarkBit | (static_cast<std::uint32_t>(vm_id) & 0x3fffffffU);
}
// "sgt3": under the VM interface prefix, so the catch-all "sg*" drops also
// cover a tunnel device that has no rules.
[[nodiscard]] inline std::string tunnel_device(const std::string& iface_prefix, std::int64_t vm_id) {
  return iface_prefix + "t" + std::to_string(vm_id);
}

// ct mark bit for connections opened by a SYN-only allowance: such a
// connection may complete its handshake (so traceroute sees the answer) but
// the VM may not send data on it.
inline constexpr std::uint32_t kSynOnlyMark = 0x80000000U;
// ct mark bit for a "plain" flow: a new TCP or UDP flow its level accepted
// (not to the client, not through a hole, so its class is the VM's default
// one). Its later packets take a short path: anti-spoofing, evil packets,
// block list and quota, then accept; every lookup that classifies or
// admits a new flow is skipped.
inline constexpr std::uint32_t kPlainFlowMark = 0x40000000U;

class Compiler {
 public:
  Compiler(const trust::Policy& policy, CompileOptions options) : policy_(policy), opt_(std::move(options)) {}

  // The whole ruleset for these VMs and holes; `now` turns hole expiry into
  // element timeouts.
  [[nodiscard]] Ruleset compile(const std::vector<VmNet>& vms, const std::vector<Hole>& holes, std::int64_t now) const;

  // Everything that belongs to one VM, and the plans to add or remove it.
  // Removing takes its holes too: their elements go with it (those the
  // kernel already timed out are no error).
  [[nodiscard]] Plan plan_add_vm(const VmNet& vm, const std::vector<Hole>& holes, std::int64_t now) const;
  [[nodiscard]] Plan plan_remove_vm(const VmNet& vm, const std::vector<Hole>& holes = {}) const;
  [[nodiscard]] Plan plan_add_hole(const VmNet& vm, const Hole& hole, std::int64_t now) const;
  [[nodiscard]] Plan plan_remove_hole(const VmNet& vm, const Hole& hole, std::int64_t now) const;
  // A VM's tunnel: the prerouting chain that marks its tunnel-bound packets
  // and clamps MSS, and the dispatch elements; added after the tunnel device
  // and its routes exist, removed before they go.
  [[nodiscard]] Plan plan_tunnel_up(const VmNet& vm, const TunnelNet& tunnel) const;
  [[nodiscard]] Plan plan_tunnel_down(const VmNet& vm, const TunnelNet& tunnel) const;
  // The prerouting hook exists only while some VM has a tunnel: a plan that
  // adds a tunnel's parts puts it in (idempotent), and this one takes it
  // out, for after the last tunnel went down.
  [[nodiscard]] Plan plan_prerouting_off() const;
  // Replaces the block list in place (abuse complaints act at once).
  [[nodiscard]] Plan plan_update_block_list() const;

  // What the VM's packets go through and its own elements, as nft text
  // (surrogatectl rules show VM).
  [[nodiscard]] std::string vm_text(const VmNet& vm, const std::vector<Hole>& holes, std::int64_t now) const;

  [[nodiscard]] const CompileOptions& options() const { return opt_; }
  // The dynamic sets the packet path fills, keyed by a VM's interface name
  // first (meters, SYN rate, drop counters), as declared: purged when a VM
  // goes.
  [[nodiscard]] std::vector<Set> packet_path_sets() const;
  // The chain a drop for `reason` goes to ("spoof-ip" -> "drop_spoof_ip").
  [[nodiscard]] static std::string drop_chain(const std::string& reason);

 private:
  struct VmParts {
    std::vector<QuotaObject> quotas;
    std::vector<Chain> chains;                                      // its tunnel's chain, while it has one
    std::vector<std::pair<std::string, SetElement>> elements;       // set name -> element (inet table)
    std::vector<std::pair<std::string, SetElement>> hole_elements;  // set name -> element
    std::vector<SetElement> arp_elements;
  };
  [[nodiscard]] VmParts vm_parts(const VmNet& vm, const std::vector<Hole>& holes, std::int64_t now) const;
  // The ops that add these parts ("vms" membership last) or remove them
  // ("vms" membership first).
  [[nodiscard]] Plan plan_add_parts(const VmParts& p) const;
  [[nodiscard]] Plan plan_remove_parts(const VmParts& p) const;
  [[nodiscard]] std::vector<Chain> shared_chains() const;
  [[nodiscard]] Chain prerouting_chain() const;
  [[nodiscard]] Plan plan_prerouting_on() const;
  [[nodiscard]] Chain out_chain() const;
  // Fragments that escaped reassembly, IP options and IPv6 routing headers
  // (vm_out; the short path's entry rules let no such packet in).
  [[nodiscard]] std::vector<Rule> evil_packet_rules() const;
  [[nodiscard]] Chain level_chain(trust::TrustLevel level) const;
  [[nodiscard]] Chain in_chain() const;
  [[nodiscard]] Chain host_chain() const;
  [[nodiscard]] Chain tunnel_chain(const VmNet& vm, const TunnelNet& tunnel) const;
  // The tunnel's chain and its dispatch/guard elements (set name -> element).
  void add_tunnel_parts(VmParts& p, const VmNet& vm, const TunnelNet& tunnel) const;
  // Every set of the inet table, without the VMs' elements: the policy's
  // own (guardrails, allowlists, with their elements) and the per-VM ones
  // (declarations only, which is all a VM's or a hole's plan needs).
  [[nodiscard]] std::vector<Set> shared_sets() const;
  [[nodiscard]] std::vector<Set> policy_sets() const;
  [[nodiscard]] std::vector<Set> vm_sets() const;
  [[nodiscard]] std::uint32_t hole_class(const VmNet& vm, const Hole& hole) const;
  // The map a hole goes to (exact ones hash, ranges interval) and its element.
  [[nodiscard]] std::optional<std::pair<std::string, SetElement>> hole_element(const VmNet& vm, const Hole& hole,
                                                                               std::int64_t now) const;
  [[nodiscard]] Rule drop_rule(std::vector<Match> matches, const std::string& reason, const std::string& why) const;
  // The guardrails a flow meets on every packet (vm_out and its short path).
  [[nodiscard]] Rule block_rule(Family f) const;
  [[nodiscard]] Rule quota_rule() const;

  const trust::Policy& policy_;
  CompileOptions opt_;
};

// Set element helpers.
SetElement prefix_element(const Prefix& p);
SetElement port_range_element(const trust::PortRange& r);

}  // namespace sg::netpolicy
