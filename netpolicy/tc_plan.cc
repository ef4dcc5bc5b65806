#include "netpolicy/tc_plan.h"

#include <algorithm>
#include <cstdio>

namespace sg::netpolicy {

namespace {
constexpr std::uint32_t kClassesPerVm = 4;
constexpr std::int64_t kSecondsPerDay = 86'400;
}  // namespace

std::uint32_t tc_vm_index(std::int64_t vm_id) {
  // Ids start at 1; index 0 would collide with the root class's minors.
  std::int64_t id = std::max<std::int64_t>(vm_id, 1);
  return static_cast<std::uint32_t>((id - 1) % kTcVmIndices + 1);
}

std::uint32_t tc_minor(std::int64_t vm_id, FlowClass fc) {
  return tc_vm_index(vm_id) * kClassesPerVm + static_cast<std::uint32_t>(fc);
}

std::uint32_t tc_handle(std::uint32_t major, std::int64_t vm_id, FlowClass fc) {
  return tc_handle(major, tc_minor(vm_id, fc));
}

std::optional<TcSlot> tc_slot_of(std::uint32_t minor) {
  if (tc_is_hole_minor(minor)) return std::nullopt;
  std::uint32_t index = minor / kClassesPerVm;
  if (index == 0 || index > static_cast<std::uint32_t>(kTcVmIndices)) return std::nullopt;
  return TcSlot{index, static_cast<FlowClass>(minor % kClassesPerVm)};
}

std::string tc_handle_text(std::uint32_t handle) {
  char buf[24];
  (void)std::snprintf(buf, sizeof buf, "%x:%x", handle >> 16U, handle & 0xffffU);
  return buf;
}

TcClass tc_root_class(std::uint32_t major, std::optional<std::uint64_t> ceiling) {
  std::uint64_t r = ceiling && *ceiling > 0 ? std::max(*ceiling, kTcMinRate) : kTcUnlimited;
  return TcClass{tc_handle(major, kTcRootMinor), 0, r, r};
}

std::vector<TcClass> tc_vm_classes(std::uint32_t major, const VmShaping& vm, std::optional<std::uint64_t> ceiling) {
  const TcClass root = tc_root_class(major, ceiling);
  // A VM without a cap of its own may take the whole ceiling.
  const std::uint64_t cap = vm.cap > 0 ? std::max(std::min(vm.cap, root.ceil), kTcMinRate) : root.ceil;
  auto share = [&](std::uint64_t part) { return std::max(part, kTcMinRate); };
  std::vector<TcClass> out;
  const std::uint32_t parent = tc_handle(major, vm.vm_id, FlowClass::vm);
  out.push_back(TcClass{parent, root.handle, cap, cap});
  // Rated authcerts first: their guarantees come out of the VM's cap (HTB
  // grants every class its rate, so the children's rates must fit in the
  // parent's). Together they may take at most half of it; beyond that they
  // are scaled down, their ceilings stay at their rates.
  std::vector<std::pair<std::uint32_t, std::uint64_t>> holes;  // minor, rate
  std::uint64_t holes_total = 0;
  for (const auto& h : vm.hole_classes) {
    if (!tc_is_hole_minor(h.minor) || h.rate == 0) continue;
    const std::uint64_t r = share(std::min(h.rate, cap));
    holes.emplace_back(h.minor, r);
    holes_total += r;
  }
  const std::uint64_t holes_budget = std::min(holes_total, cap / 2);
  const std::uint64_t rest = cap - holes_budget;
  // Guarantees of the rest: half for the client (the VM's owner must always
  // reach it), a quarter each for nodes and everything else; all may borrow
  // up to the cap.
  out.push_back(TcClass{tc_handle(major, vm.vm_id, FlowClass::client), parent, share(rest / 2), cap});
  std::uint64_t nodes_rate = share(rest / 4);
  std::uint64_t nodes_ceil = cap;
  std::uint64_t other_rate = share(rest / 4);
  std::uint64_t other_ceil = cap;
  std::optional<std::uint64_t> throttle;
  if (vm.throttle) throttle = std::max(std::min(*vm.throttle, cap), kTcMinRate);
  if (throttle) {
    nodes_ceil = std::min(nodes_ceil, *throttle);
    nodes_rate = std::min(nodes_rate, nodes_ceil);
    other_ceil = *throttle;
    other_rate = std::min(other_rate, *throttle);
  }
  out.push_back(TcClass{tc_handle(major, vm.vm_id, FlowClass::nodes), parent, nodes_rate, nodes_ceil});
  out.push_back(TcClass{tc_handle(major, vm.vm_id, FlowClass::other), parent, other_rate, other_ceil});
  // Each rated authcert: its rate as ceiling, and as guarantee while they
  // all fit in their budget, whatever the VM's other traffic does.
  for (const auto& [minor, r] : holes) {
    std::uint64_t ceil = r;
    std::uint64_t rate =
        holes_total > holes_budget
            ? share(static_cast<std::uint64_t>(static_cast<long double>(r) * holes_budget / holes_total))
            : r;
    if (throttle) {
      ceil = std::min(ceil, *throttle);
      rate = std::min(rate, ceil);
    }
    out.push_back(TcClass{tc_handle(major, minor), parent, rate, ceil});
  }
  if (ceiling && *ceiling > 0) {
    // HTB always grants a class its rate, whatever its parent's ceil: for the
    // owner's ceiling to hold, every class below it guarantees only the
    // minimum and borrows the rest up to its ceil (equal rates: equal shares).
    for (auto& c : out) c.rate = kTcMinRate;
  }
  return out;
}

std::optional<std::uint64_t> quota_throttle(std::uint64_t quota_bytes, std::uint64_t used_bytes,
                                            std::int64_t seconds_left, std::uint64_t cap, double throttle_at) {
  if (quota_bytes == 0) return std::nullopt;
  if (static_cast<double>(used_bytes) < throttle_at * static_cast<double>(quota_bytes)) return std::nullopt;
  const std::uint64_t left = used_bytes >= quota_bytes ? 0 : quota_bytes - used_bytes;
  const std::uint64_t secs = static_cast<std::uint64_t>(std::max<std::int64_t>(seconds_left, 1));
  std::uint64_t rate = left / secs * 8 + (left % secs) * 8 / secs;
  rate = std::max(rate, kTcMinRate);
  if (cap > 0) rate = std::min(rate, std::max(cap, kTcMinRate));
  return rate;
}

std::int64_t seconds_to_utc_midnight(std::int64_t now) {
  return kSecondsPerDay - ((now % kSecondsPerDay) + kSecondsPerDay) % kSecondsPerDay;
}

std::int64_t utc_day(std::int64_t now) {
  return now >= 0 ? now / kSecondsPerDay : (now - kSecondsPerDay + 1) / kSecondsPerDay;
}

std::string tc_rate_text(std::uint64_t bps) {
  // Exact multiples print in the larger unit, as tc does.
  struct Unit {
    std::uint64_t factor;
    const char* name;
  };
  for (Unit u : {Unit{1'000'000'000, "Gbit"}, Unit{1'000'000, "Mbit"}, Unit{1'000, "Kbit"}}) {
    if (bps >= u.factor && bps % u.factor == 0) return std::to_string(bps / u.factor) + u.name;
  }
  if (bps >= 1'000'000) {
    char buf[32];
    (void)std::snprintf(buf, sizeof buf, "%.3gMbit", static_cast<double>(bps) / 1e6);
    return buf;
  }
  if (bps >= 1'000) return std::to_string(bps / 1'000) + "Kbit";
  return std::to_string(bps) + "bit";
}

std::string flow_class_name(FlowClass fc) {
  switch (fc) {
    case FlowClass::vm: return "aggregate";
    case FlowClass::client: return "client";
    case FlowClass::nodes: return "authorized nodes";
    case FlowClass::other: return "everything else";
  }
  return "?";
}

std::string tc_class_text(const std::string& device, const TcClass& c, const std::string& what) {
  std::string s = "class htb " + tc_handle_text(c.handle) + " ";
  s += c.parent == 0 ? "root" : "parent " + tc_handle_text(c.parent);
  s += " rate " + tc_rate_text(c.rate) + " ceil " + tc_rate_text(c.ceil) + " dev " + device;
  if (!what.empty()) s += "  # " + what;
  return s;
}

}  // namespace sg::netpolicy
