// Traffic shaping as a plain value: which HTB classes a VM needs, with which
// rates, and how a class id is derived from a VM id. No syscalls here; the
// libnl-route backend (tc_backend.h) makes the kernel equal to this plan.
//
// One HTB qdisc (handle MAJOR:) sits at the root of every egress device and
// of every VM's tap. Its tree:
//
//   MAJOR:1            all VMs together: the owner's bandwidth ceiling
//     MAJOR:4i         VM with index i: its aggregate cap (LevelPolicy.egress)
//       MAJOR:4i+1     traffic to / from its own client
//       MAJOR:4i+2     traffic to / from authorized nodes (holes)
//       MAJOR:4i+3     everything else
//       MAJOR:m        an authorized node whose authcert names a rate: its
//                      own class at that rate (m from 0x8000 up, one per
//                      authcert, allocated when the authcert is submitted)
//
// nftables selects the leaf with `meta priority set MAJOR:MINOR`; HTB reads
// skb->priority when its major equals the qdisc's, so no tc filter is needed.
// Unclassified packets (the host's own traffic) find no class and go out
// unshaped (HTB "direct" packets).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace sg::netpolicy {

enum class FlowClass : std::uint8_t { vm = 0, client = 1, nodes = 2, other = 3 };

// The tc major number of the daemon's HTB qdiscs ("53:" in tc output).
inline constexpr std::uint32_t kTcMajorDefault = 0x53;
inline constexpr std::uint32_t kTcRootMinor = 1;
// Minors are 16 bits. Each VM takes 4 below 0x8000: 8190 VM indices. VM ids
// above that wrap around; two VMs alive at the same time whose ids differ by
// a multiple of kTcVmIndices would share classes, which the shaper refuses.
inline constexpr std::int64_t kTcVmIndices = 8190;
// Minors of the classes of rated authcerts (one per authcert, all VMs).
inline constexpr std::uint32_t kTcHoleMinorFirst = 0x8000;
inline constexpr std::uint32_t kTcHoleMinorLast = 0xfffe;
[[nodiscard]] inline bool tc_is_hole_minor(std::uint32_t minor) {
  return minor >= kTcHoleMinorFirst && minor <= kTcHoleMinorLast;
}
// Rate of the root class when the owner set no ceiling: unshaped in practice.
inline constexpr std::uint64_t kTcUnlimited = 10'000'000'000ULL;
// The lowest rate a class is ever given: HTB needs a non-zero rate, and a
// throttled VM still gets answers through.
inline constexpr std::uint64_t kTcMinRate = 8'000;

[[nodiscard]] std::uint32_t tc_vm_index(std::int64_t vm_id);
[[nodiscard]] std::uint32_t tc_minor(std::int64_t vm_id, FlowClass fc);
[[nodiscard]] std::uint32_t tc_handle(std::uint32_t major, std::int64_t vm_id, FlowClass fc);
[[nodiscard]] inline std::uint32_t tc_handle(std::uint32_t major, std::uint32_t minor) { return major << 16U | minor; }
// The VM index and flow class a minor belongs to; nullopt for the root class
// and minors the daemon never uses (reconciliation removes those).
struct TcSlot {
  std::uint32_t vm_index = 0;
  FlowClass flow = FlowClass::vm;
};
[[nodiscard]] std::optional<TcSlot> tc_slot_of(std::uint32_t minor);
// "53:1f"
[[nodiscard]] std::string tc_handle_text(std::uint32_t handle);

struct TcClass {
  std::uint32_t handle = 0;
  std::uint32_t parent = 0;  // 0: directly under the qdisc
  std::uint64_t rate = 0;    // bits per second, guaranteed
  std::uint64_t ceil = 0;    // bits per second, with borrowing
  friend bool operator==(const TcClass&, const TcClass&) = default;
};

// What the shaper knows about one VM.
struct VmShaping {
  std::int64_t vm_id = 0;
  std::string name;
  std::uint64_t cap = 0;  // LevelPolicy.egress_bits_per_second; 0: only the ceiling
  // One class per open authcert that names a rate (holes without a rate
  // share the VM's "nodes" class).
  struct HoleClass {
    std::uint32_t minor = 0;
    std::uint64_t rate = 0;  // bits per second, from the authcert
    friend bool operator==(const HoleClass&, const HoleClass&) = default;
  };
  std::vector<HoleClass> hole_classes;
  // Quota throttle: the rate at which the rest of today's quota lasts until
  // midnight UTC. Applies to what the quota counts (nodes and other), never to
  // the client.
  std::optional<std::uint64_t> throttle;
};

// The root class: the owner's ceiling (all VMs together) or kTcUnlimited.
[[nodiscard]] TcClass tc_root_class(std::uint32_t major, std::optional<std::uint64_t> ceiling);
// A VM's four classes, the VM class first (parents before children), then
// one class per rated authcert.
[[nodiscard]] std::vector<TcClass> tc_vm_classes(std::uint32_t major, const VmShaping& vm,
                                                 std::optional<std::uint64_t> ceiling);

// Daily quota: nullopt below `throttle_at` (80%) of the quota, else the rate
// at which the remaining bytes last for `seconds_left` (at least kTcMinRate,
// at most `cap` when there is one).
[[nodiscard]] std::optional<std::uint64_t> quota_throttle(std::uint64_t quota_bytes, std::uint64_t used_bytes,
                                                          std::int64_t seconds_left, std::uint64_t cap,
                                                          double throttle_at = 0.8);
// Seconds until the next midnight UTC.
[[nodiscard]] std::int64_t seconds_to_utc_midnight(std::int64_t now);
// The UTC day number (days since the epoch), to notice the day change.
[[nodiscard]] std::int64_t utc_day(std::int64_t now);

// tc's rate notation: "10Mbit", "1500Kbit", "8Kbit", "2Gbit", "300bit".
[[nodiscard]] std::string tc_rate_text(std::uint64_t bits_per_second);
// One line per class, like `tc class show dev DEV`:
// "class htb 53:4 parent 53:1 rate 10Mbit ceil 10Mbit (sg1: aggregate)".
[[nodiscard]] std::string tc_class_text(const std::string& device, const TcClass& c, const std::string& what = "");
[[nodiscard]] std::string flow_class_name(FlowClass fc);

}  // namespace sg::netpolicy
