#include "surrogated/shaper.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>

#include "common/log.h"
#include "common/timeutil.h"

namespace sg {

namespace {

using netpolicy::FlowClass;

constexpr FlowClass kLeavesFirst[] = {FlowClass::other, FlowClass::nodes, FlowClass::client, FlowClass::vm};
// How often the tick re-reads holes and checks the qdiscs are still there.
constexpr std::int64_t kSlowTicks = 5;

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string quota_name(const std::string& vm) { return "vm_" + vm + "_quota"; }

// A throttle worth re-applying: switched on or off, or moved by over 10%.
bool throttle_changed(const std::optional<std::uint64_t>& a, const std::optional<std::uint64_t>& b) {
  if (a.has_value() != b.has_value()) return true;
  if (!a) return false;
  const double x = static_cast<double>(*a);
  const double y = static_cast<double>(*b);
  return std::fabs(x - y) > 0.1 * std::max(x, y);
}

}  // namespace

Result<std::unique_ptr<Shaper>> Shaper::open(StateStore& store, Options options, PolicySource policy, Clock clock) {
  auto tc = netpolicy::TcBackend::open();
  if (!tc) return with_context("traffic shaping", tc.error());
  auto nft = netpolicy::NftBackend::open();
  if (!nft) return with_context("traffic shaping (quota reader)", nft.error());
  if (options.egress_devices.empty()) {
    auto devices = tc->routed_devices(options.iface_prefix);
    if (!devices) return with_context("probing egress devices for traffic shaping", devices.error());
    if (devices->empty()) {
      // A host with no route out (a lab namespace): nothing leaves it, so
      // there is nothing to shape on the way out; the taps still are.
      log::warning(
          "traffic shaping: no interface with a route out; only traffic towards the VMs is shaped "
          "(list egress devices in [shaping] egress_devices)");
    }
    options.egress_devices = std::move(*devices);
  }
  for (const auto& d : options.egress_devices) {
    auto exists = tc->device_exists(d);
    if (!exists) return exists.error();
    if (!*exists) {
      return make_error("traffic shaping: egress device '" + d + "' does not exist; fix [shaping] egress_devices");
    }
  }
  return std::unique_ptr<Shaper>(
      new Shaper(store, std::move(options), std::move(policy), std::move(clock), std::move(*tc), std::move(*nft)));
}

std::int64_t Shaper::now() const { return clock_ ? clock_() : now_unix(); }

std::optional<std::uint64_t> Shaper::ceiling() const {
  return policy_ ? policy_->owner.bandwidth_ceiling_bits_per_second : std::nullopt;
}

netpolicy::VmShaping Shaper::shaping_of(const VmRecord& vm) const {
  netpolicy::VmShaping s;
  s.vm_id = vm.id;
  s.name = vm.name;
  auto level = trust::parse_trust_level(vm.trust_level).value_or(trust::TrustLevel::untrusted);
  if (policy_) s.cap = policy_->level(level).egress_bits_per_second;
  // A class per rated authcert (all its holes share the minor); holes
  // without a rate share the VM's nodes class.
  if (auto holes = store_.open_holes(now(), vm.id)) {
    for (const auto& h : *holes) {
      if (h.tc_minor == 0 || h.rate_bps == 0) continue;
      bool seen = std::any_of(s.hole_classes.begin(), s.hole_classes.end(),
                              [&](const auto& c) { return c.minor == h.tc_minor; });
      if (!seen) s.hole_classes.push_back({h.tc_minor, h.rate_bps});
    }
  }
  return s;
}

Status Shaper::put_egress(const VmState& s) {
  for (const auto& dev : opt_.egress_devices) {
    for (const auto& c : netpolicy::tc_vm_classes(opt_.tc_major, s.shaping, ceiling())) {
      if (auto st = tc_.put_class(dev, c); !st) return st;
    }
  }
  return {};
}

Status Shaper::put_tap(VmState& s) {
  // Towards the VM: its own tree on its tap, capped at its cap. The quota
  // counts what the VM sends, so the throttle stays on the egress side.
  netpolicy::VmShaping in = s.shaping;
  in.throttle.reset();
  // Towards the VM, nftables picks only client or everything else.
  in.hole_classes.clear();
  if (in.cap == 0) {
    s.tap_shaped = true;  // nothing to cap
    return {};
  }
  auto exists = tc_.device_exists(s.record.name);
  if (!exists) return exists.error();
  if (!*exists) return {};  // not there yet: the tick tries again
  if (auto st = tc_.ensure_qdisc(s.record.name, opt_.tc_major, netpolicy::tc_root_class(opt_.tc_major, in.cap)); !st) {
    return st;
  }
  for (const auto& c : netpolicy::tc_vm_classes(opt_.tc_major, in, in.cap)) {
    if (auto st = tc_.put_class(s.record.name, c); !st) return st;
  }
  s.tap_shaped = true;
  return {};
}

void Shaper::remove_egress(std::int64_t vm_id, const std::vector<netpolicy::VmShaping::HoleClass>& holes) {
  for (const auto& dev : opt_.egress_devices) {
    for (const auto& h : holes) {
      if (auto st = tc_.delete_class(dev, netpolicy::tc_handle(opt_.tc_major, h.minor)); !st) {
        log::error("shaping: " + st.error().describe());
      }
    }
    for (FlowClass fc : kLeavesFirst) {
      if (auto st = tc_.delete_class(dev, netpolicy::tc_handle(opt_.tc_major, vm_id, fc)); !st) {
        log::error("shaping: " + st.error().describe());
      }
    }
  }
}

Status Shaper::install_all() {
  policy_ = policy_source_();
  day_ = netpolicy::utc_day(now());
  auto active = store_.active();
  if (!active) return active.error();
  const auto root = netpolicy::tc_root_class(opt_.tc_major, ceiling());
  for (const auto& dev : opt_.egress_devices) {
    if (auto st = tc_.ensure_qdisc(dev, opt_.tc_major, root); !st) return st;
  }
  std::map<std::string, VmState> next;
  std::map<std::uint32_t, std::string> by_index;
  std::set<std::uint32_t> hole_minors;
  for (const auto& vm : *active) {
    VmState s;
    s.record = vm;
    s.shaping = shaping_of(vm);
    if (auto old = vms_.find(vm.name); old != vms_.end()) s.shaping.throttle = old->second.shaping.throttle;
    if (auto st = put_egress(s); !st) return st;
    if (auto st = put_tap(s); !st) log::warning("shaping: tap of " + vm.name + ": " + st.error().describe());
    by_index[netpolicy::tc_vm_index(vm.id)] = vm.name;
    for (const auto& h : s.shaping.hole_classes) hole_minors.insert(h.minor);
    next[vm.name] = std::move(s);
  }
  vms_ = std::move(next);
  // Nothing may be left of VMs that are gone (released while the daemon was
  // down) or of minors this scheme never uses.
  std::size_t removed = 0;
  for (const auto& dev : opt_.egress_devices) {
    auto classes = tc_.list_classes(dev, opt_.tc_major);
    if (!classes) return classes.error();
    // Leaves before their parents: the kernel refuses to delete a class
    // with children. Authcert classes are leaves; a VM's own class (minor
    // % 4 == 0) is the parent of the rest.
    auto rank = [](std::uint32_t handle) {
      const std::uint32_t minor = handle & 0xffffU;
      return netpolicy::tc_is_hole_minor(minor) ? 4U : minor % 4;
    };
    std::stable_sort(classes->begin(), classes->end(),
                     [&](const auto& a, const auto& b) { return rank(a.cls.handle) > rank(b.cls.handle); });
    for (const auto& c : *classes) {
      const std::uint32_t minor = c.cls.handle & 0xffffU;
      if (minor == netpolicy::kTcRootMinor) continue;
      if (netpolicy::tc_is_hole_minor(minor) && hole_minors.count(minor) != 0) continue;
      auto slot = netpolicy::tc_slot_of(minor);
      if (slot && by_index.count(slot->vm_index) != 0) continue;
      if (auto st = tc_.delete_class(dev, c.cls.handle); !st) return st;
      ++removed;
    }
  }
  poll_quotas();
  log::info("shaping: HTB " + netpolicy::tc_handle_text(opt_.tc_major << 16U) + " on " +
            std::to_string(opt_.egress_devices.size()) + " egress device(s) for " + std::to_string(vms_.size()) +
            " VMs; " + std::to_string(removed) + " stale class(es) removed");
  return {};
}

Status Shaper::prepare(const VmRecord& vm, const VmAddresses& /*addr*/) {
  if (!policy_) policy_ = policy_source_();
  const std::uint32_t index = netpolicy::tc_vm_index(vm.id);
  for (const auto& [name, s] : vms_) {
    if (name != vm.name && netpolicy::tc_vm_index(s.record.id) == index) {
      return make_error("traffic shaping: " + vm.name + " would share tc classes with " + name + " (VM ids " +
                        std::to_string(netpolicy::kTcVmIndices) + " apart); release " + name + " or try again");
    }
  }
  VmState s;
  s.record = vm;
  s.shaping = shaping_of(vm);
  if (auto st = put_egress(s); !st) {
    remove_egress(vm.id, s.shaping.hole_classes);
    return st;
  }
  vms_[vm.name] = std::move(s);
  return {};
}

Status Shaper::started(const VmRecord& vm, const VmAddresses& /*addr*/) {
  auto it = vms_.find(vm.name);
  if (it == vms_.end()) return {};
  if (auto st = put_tap(it->second); !st) log::warning("shaping: tap of " + vm.name + ": " + st.error().describe());
  return {};
}

Status Shaper::refresh_holes(const VmRecord& vm) {
  auto it = vms_.find(vm.name);
  if (it == vms_.end()) return {};
  VmState& s = it->second;
  auto fresh = shaping_of(s.record).hole_classes;
  if (fresh == s.shaping.hole_classes) return {};
  const auto old = s.shaping.hole_classes;
  s.shaping.hole_classes = fresh;
  // New classes first (the caller's hole element names them next) ...
  if (auto st = put_egress(s); !st) return st;
  // ... then the classes of authcerts that have no open hole any more.
  for (const auto& o : old) {
    if (std::any_of(fresh.begin(), fresh.end(), [&](const auto& f) { return f.minor == o.minor; })) continue;
    for (const auto& dev : opt_.egress_devices) {
      if (auto st = tc_.delete_class(dev, netpolicy::tc_handle(opt_.tc_major, o.minor)); !st) return st;
    }
  }
  return {};
}

void Shaper::released(const VmRecord& vm, const VmAddresses& /*addr*/) {
  auto known = vms_.find(vm.name);
  remove_egress(
      vm.id, known != vms_.end() ? known->second.shaping.hole_classes : std::vector<netpolicy::VmShaping::HoleClass>{});
  // The tap usually vanished with the domain; if not, take our qdisc off it.
  if (auto st = tc_.remove_qdisc(vm.name, opt_.tc_major); !st) log::warning("shaping: " + st.error().describe());
  vms_.erase(vm.name);
  for (auto it = last_bytes_.begin(); it != last_bytes_.end();) {
    it = it->first.first == vm.name ? last_bytes_.erase(it) : std::next(it);
  }
}

void Shaper::poll_quotas() {
  const std::int64_t t = now();
  for (auto& [name, s] : vms_) {
    auto level = trust::parse_trust_level(s.record.trust_level).value_or(trust::TrustLevel::untrusted);
    if (!policy_ || policy_->level(level).daily_quota_bytes == 0) {
      s.quota_bytes = s.quota_used = 0;
      continue;
    }
    auto q = nft_.read_quota(netpolicy::TableFamily::inet, opt_.nft_table, quota_name(name));
    if (!q) {
      log::warning("shaping: cannot read the quota of " + name + ": " + q.error().describe());
      continue;
    }
    s.quota_bytes = q->bytes;
    s.quota_used = q->consumed;
    auto throttle =
        netpolicy::quota_throttle(q->bytes, q->consumed, netpolicy::seconds_to_utc_midnight(t), s.shaping.cap);
    if (!throttle_changed(throttle, s.shaping.throttle)) continue;
    if (throttle && !s.shaping.throttle) {
      log::notice("shaping: " + name + " used " + trust::format_byte_size(q->consumed) + " of its daily " +
                  trust::format_byte_size(q->bytes) + "; throttled to " + trust::format_bit_rate(*throttle) +
                  " until midnight UTC");
    }
    s.shaping.throttle = throttle;
    if (auto st = put_egress(s); !st) log::error("shaping: throttling " + name + ": " + st.error().describe());
  }
}

Status Shaper::reset_quotas() {
  for (auto& [name, s] : vms_) {
    if (s.quota_bytes == 0) continue;
    auto q = nft_.read_quota(netpolicy::TableFamily::inet, opt_.nft_table, quota_name(name), true);
    if (!q) return with_context("resetting the daily quota of " + name, q.error());
    s.quota_used = 0;
    s.shaping.throttle.reset();
    if (auto st = put_egress(s); !st) return st;
  }
  log::notice("shaping: new UTC day, daily quotas reset for " + std::to_string(vms_.size()) + " VMs");
  return {};
}

void Shaper::sample_rates() {
  const std::int64_t t = now_ms();
  const double dt = static_cast<double>(t - last_sample_ms_) / 1000.0;
  std::map<std::uint32_t, VmState*> by_index;
  std::map<std::uint32_t, VmState*> by_hole_minor;
  for (auto& [name, s] : vms_) {
    by_index[netpolicy::tc_vm_index(s.record.id)] = &s;
    for (const auto& h : s.shaping.hole_classes) by_hole_minor[h.minor] = &s;
    s.egress_rate = Rates{};
    s.ingress_rate = Rates{};
  }
  auto add = [&](const std::string& dev, bool egress) {
    auto classes = tc_.list_classes(dev, opt_.tc_major);
    if (!classes) return;
    for (const auto& c : *classes) {
      const std::uint32_t minor = c.cls.handle & 0xffffU;
      auto slot = netpolicy::tc_slot_of(minor);
      const bool hole = netpolicy::tc_is_hole_minor(minor);
      if (!hole && (!slot || slot->flow == FlowClass::vm)) continue;
      auto key = std::make_pair(dev, c.cls.handle);
      auto prev = last_bytes_.find(key);
      std::uint64_t rate = 0;
      if (prev != last_bytes_.end() && c.bytes >= prev->second && dt > 0.2) {
        rate = static_cast<std::uint64_t>(static_cast<double>(c.bytes - prev->second) * 8.0 / dt);
      }
      last_bytes_[key] = c.bytes;
      if (hole) {  // an authcert's own class: part of the VM's "nodes" rate
        auto owner = by_hole_minor.find(minor);
        if (owner != by_hole_minor.end())
          (egress ? owner->second->egress_rate : owner->second->ingress_rate).nodes += rate;
        continue;
      }
      auto vm = by_index.find(slot->vm_index);
      if (vm == by_index.end()) continue;
      Rates& r = egress ? vm->second->egress_rate : vm->second->ingress_rate;
      (slot->flow == FlowClass::client ? r.client : slot->flow == FlowClass::nodes ? r.nodes : r.other) += rate;
    }
  };
  for (const auto& dev : opt_.egress_devices) add(dev, true);
  for (auto& [name, s] : vms_) {
    if (s.tap_shaped && s.shaping.cap > 0) add(name, false);
  }
  last_sample_ms_ = t;
}

void Shaper::on_tick() {
  ++ticks_;
  // The daemon swaps its policy on reload: follow it (levels and caps may change).
  if (auto p = policy_source_(); p != policy_) {
    if (auto st = install_all(); !st) log::error("shaping: applying the new policy: " + st.error().describe());
  }
  if (const std::int64_t day = netpolicy::utc_day(now()); day != day_) {
    day_ = day;
    if (auto st = reset_quotas(); !st) log::error("shaping: " + st.error().describe());
  }
  poll_quotas();
  for (auto& [name, s] : vms_) {
    if (!s.tap_shaped) {
      if (auto st = put_tap(s); !st) log::warning("shaping: tap of " + name + ": " + st.error().describe());
    }
  }
  if (ticks_ % kSlowTicks == 0) {
    for (const auto& dev : opt_.egress_devices) {
      auto ours = tc_.has_qdisc(dev, opt_.tc_major);
      if (ours && !*ours) {
        log::alert("shaping: the HTB qdisc of " + dev + " was removed by someone else; VM traffic there is " +
                   "unshaped until it is back: reinstalling");
        if (auto st = install_all(); !st) log::alert("shaping: REPAIR FAILED: " + st.error().describe());
        break;
      }
    }
    // Holes that expired or closed since: their authcerts' classes go.
    for (auto& [name, s] : vms_) {
      if (auto st = refresh_holes(s.record); !st) log::error("shaping: " + st.error().describe());
    }
  }
  sample_rates();
}

nlohmann::json Shaper::status_json(const std::string& vm_name) const {
  auto it = vms_.find(vm_name);
  if (it == vms_.end()) return {{"shaped", false}};
  const VmState& s = it->second;
  auto classes = netpolicy::tc_vm_classes(opt_.tc_major, s.shaping, ceiling());
  auto rates = [](const Rates& r) {
    return nlohmann::json{{"client", r.client}, {"nodes", r.nodes}, {"other", r.other}, {"total", r.total()}};
  };
  nlohmann::json cls = nlohmann::json::object();
  nlohmann::json authcert_classes = nlohmann::json::array();
  for (const auto& c : classes) {
    auto slot = netpolicy::tc_slot_of(c.handle & 0xffffU);
    if (!slot) {  // a rated authcert's own class
      authcert_classes.push_back(
          {{"class", netpolicy::tc_handle_text(c.handle)}, {"rate_bps", c.rate}, {"ceil_bps", c.ceil}});
      continue;
    }
    static const char* kNames[] = {"aggregate", "client", "nodes", "other"};
    cls[kNames[static_cast<int>(slot->flow)]] = {
        {"class", netpolicy::tc_handle_text(c.handle)}, {"rate_bps", c.rate}, {"ceil_bps", c.ceil}};
  }
  const bool exhausted = s.quota_bytes > 0 && s.quota_used >= s.quota_bytes;
  return {{"shaped", true},
          {"egress_devices", opt_.egress_devices},
          {"cap_bps", classes.front().ceil},
          {"cap", trust::format_bit_rate(classes.front().ceil)},
          {"ceiling_bps", ceiling().value_or(0)},
          {"classes", cls},
          {"authcert_classes", authcert_classes},
          {"egress_rate_bps", rates(s.egress_rate)},
          {"ingress_rate_bps", rates(s.ingress_rate)},
          {"quota_limit_bytes", s.quota_bytes},
          {"quota_used_bytes", s.quota_used},
          {"quota_exhausted", exhausted},
          {"throttled", s.shaping.throttle.has_value()},
          {"throttle_bps", s.shaping.throttle.value_or(0)}};
}

std::string Shaper::classes_text(const std::string& vm_name) const {
  std::string out;
  auto lines = [&](const std::string& dev, const netpolicy::VmShaping& sh, std::optional<std::uint64_t> ceil) {
    for (const auto& c : netpolicy::tc_vm_classes(opt_.tc_major, sh, ceil)) {
      auto slot = netpolicy::tc_slot_of(c.handle & 0xffffU);
      const std::string what =
          slot ? netpolicy::flow_class_name(slot->flow) : "an authorized node, at its authcert's rate";
      out += netpolicy::tc_class_text(dev, c, sh.name + ": " + what) + "\n";
    }
  };
  const auto root = netpolicy::tc_root_class(opt_.tc_major, ceiling());
  for (const auto& dev : opt_.egress_devices) {
    out += netpolicy::tc_class_text(dev, root, "all VMs: the owner's ceiling") + "\n";
    for (const auto& [name, s] : vms_) {
      if (vm_name.empty() || name == vm_name) lines(dev, s.shaping, ceiling());
    }
  }
  for (const auto& [name, s] : vms_) {
    if ((!vm_name.empty() && name != vm_name) || s.shaping.cap == 0) continue;
    netpolicy::VmShaping in = s.shaping;
    in.throttle.reset();
    in.hole_classes.clear();
    out += netpolicy::tc_class_text(name, netpolicy::tc_root_class(opt_.tc_major, in.cap), name + ": towards the VM") +
           "\n";
    lines(name, in, in.cap);
  }
  return out;
}

}  // namespace sg
