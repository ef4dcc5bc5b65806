#include "surrogated/vm_manager.h"

#include <algorithm>

#include "common/log.h"
#include "common/timeutil.h"

namespace sg {

std::map<std::string, std::string> cmdline_values(const VmRecord& vm, const VmAddresses& addr) {
  auto text = [](const std::optional<IpAddress>& a) { return a ? a->to_string() : std::string(); };
  return {{"vm", vm.name},
          {"ipv4", text(addr.v4_guest)},
          {"gateway4", text(addr.v4_gateway)},
          {"ipv6", text(addr.v6_guest)},
          {"gateway6", text(addr.v6_gateway)},
          {"mac", addr.mac}};
}

VmManager::VmManager(const DaemonConfig& cfg, StateStore& store, Hypervisor& hv)
    : cfg_(cfg), store_(store), hv_(hv), pool_(cfg.pool_v4, cfg.pool_v6, cfg.max_vms) {}

Result<VmRecord> VmManager::allocate(const AllocateRequest& req, const Classification& cls) {
  std::string tpl_name = req.template_name.empty() ? cfg_.default_template : req.template_name;
  auto tpl_it = cfg_.templates.find(tpl_name);
  if (tpl_it == cfg_.templates.end()) {
    std::string names;
    for (const auto& [n, t] : cfg_.templates) names += (names.empty() ? "" : ", ") + n;
    return make_error("unknown template '" + tpl_name + "'; this host offers: " + names);
  }
  const VmTemplate& tpl = tpl_it->second;
  std::int64_t lifetime = req.lifetime_s.value_or(tpl.default_lifetime_s);
  if (lifetime <= 0 || lifetime > tpl.max_lifetime_s) {
    return make_error("lifetime " + format_duration(lifetime) + " is not allowed for template '" + tpl_name +
                      "'; ask for at most " + format_duration(tpl.max_lifetime_s));
  }

  auto in_use = store_.slots_in_use();
  if (!in_use) return in_use.error();
  auto released = store_.slot_release_times();
  if (!released) return released.error();
  auto slot = pool_.choose(*in_use, *released);
  if (!slot) return slot.error();
  VmAddresses addr = pool_.addresses(*slot);

  std::int64_t now = now_unix();
  VmRecord vm;
  vm.owner_fp = req.owner_fp;
  vm.owner_key_pem = req.owner_key_pem;
  vm.template_name = tpl_name;
  vm.slot = *slot;
  vm.ipv4 = addr.v4_guest ? addr.v4_guest->to_string() : "";
  vm.ipv6 = addr.v6_guest ? addr.v6_guest->to_string() : "";
  vm.mac = addr.mac;
  vm.created = now;
  vm.expires = now + lifetime;
  vm.trust_level = cls.level;
  vm.policy_version = cls.policy_version;
  vm.state = "starting";
  vm.contact = req.contact;
  vm.title = req.title;
  vm.client_addrs = req.client_addrs;
  if (auto st = store_.insert(vm); !st) return st.error();
  vm.domain = cfg_.domain_prefix + vm.name;
  if (auto st = store_.update(vm); !st) return st.error();

  // Undo everything done so far when a later step fails.
  auto abort = [&](const Error& why) -> Error {
    for (auto* o : observers_) o->released(vm, addr);
    if (auto st = store_.mark_released(vm.id, now_unix(), "allocation failed: " + why.message); !st) {
      log::error("cannot record failed allocation of " + vm.name + ": " + st.error().describe());
    }
    return why;
  };
  for (auto* o : observers_) {
    if (auto st = o->prepare(vm, addr); !st) return abort(with_context("preparing " + vm.name, st.error()));
  }
  DomainSpec spec{vm.domain, vm.name, vm.id, vm.owner_fp, tpl, addr};
  // The guest learns its own addresses from its kernel command line.
  auto cmdline = expand_cmdline(tpl.cmdline, cmdline_values(vm, addr));
  if (!cmdline) return abort(with_context("template '" + tpl_name + "'", cmdline.error()));
  spec.tpl.cmdline = *cmdline;
  if (auto st = hv_.start(spec); !st) return abort(st.error());
  for (auto* o : observers_) {
    if (auto st = o->started(vm, addr); !st) {
      (void)hv_.destroy(vm.domain);
      return abort(with_context("starting " + vm.name, st.error()));
    }
  }
  vm.state = "running";
  if (auto st = store_.update(vm); !st) return st.error();
  log::notice("allocated " + vm.name + " (" + vm.ipv4 + (vm.ipv6.empty() ? "" : " " + vm.ipv6) + ") for " +
              vm.owner_fp + ", trust " + vm.trust_level + ", lifetime " + format_duration(lifetime));
  return vm;
}

Status VmManager::release(const VmRecord& vm, const std::string& reason) {
  if (auto st = hv_.destroy(vm.domain); !st) {
    return with_context("releasing " + vm.name + " (nothing was changed; try again)", st.error());
  }
  VmAddresses addr = pool_.addresses(vm.slot);
  for (auto* o : observers_) o->released(vm, addr);
  if (auto st = store_.mark_released(vm.id, now_unix(), reason); !st) return st;
  log::notice("released " + vm.name + " of " + vm.owner_fp + ": " + reason);
  return {};
}

std::vector<std::string> VmManager::expire(std::int64_t now) {
  std::vector<std::string> out;
  auto vms = store_.active();
  if (!vms) {
    log::error("expiry check failed: " + vms.error().describe());
    return out;
  }
  for (const auto& vm : *vms) {
    if (vm.expires > now) continue;
    if (auto st = release(vm, "lifetime ended"); !st) {
      log::error("cannot expire " + vm.name + ": " + st.error().describe());
      continue;
    }
    out.push_back(vm.name);
  }
  return out;
}

Result<ReconcileReport> VmManager::reconcile() {
  auto domains = hv_.list();
  if (!domains) return domains.error();
  auto vms = store_.active();
  if (!vms) return vms.error();
  ReconcileReport report;
  for (const auto& vm : *vms) {
    auto it = std::find_if(domains->begin(), domains->end(), [&](const DomainInfo& d) { return d.name == vm.domain; });
    if (it == domains->end() || !it->active) {
      // The guest is gone (crashed, destroyed behind our back, host rebooted):
      // release its resources and keep its history.
      if (it != domains->end()) (void)hv_.destroy(vm.domain);
      VmAddresses addr = pool_.addresses(vm.slot);
      for (auto* o : observers_) o->released(vm, addr);
      if (auto st = store_.mark_released(vm.id, now_unix(), "domain vanished while the daemon was away"); !st) {
        return st.error();
      }
      log::warning("reconcile: " + vm.name + " (" + vm.domain + ") no longer runs in libvirt; released it");
      report.released.push_back(vm.name);
      continue;
    }
    VmAddresses addr = pool_.addresses(vm.slot);
    for (auto* o : observers_) {
      if (auto st = o->prepare(vm, addr); !st) log::error("reconcile: " + vm.name + ": " + st.error().describe());
      if (auto st = o->started(vm, addr); !st) log::error("reconcile: " + vm.name + ": " + st.error().describe());
    }
    if (vm.state != "running") {
      VmRecord updated = vm;
      updated.state = "running";
      if (auto st = store_.update(updated); !st) return st.error();
    }
    report.adopted.push_back(vm.name);
  }
  for (const auto& d : *domains) {
    bool known = std::any_of(vms->begin(), vms->end(), [&](const VmRecord& v) { return v.domain == d.name; });
    if (!known) {
      log::warning("reconcile: libvirt domain '" + d.name + "' is not managed by surrogated; leaving it alone");
      report.unknown.push_back(d.name);
    }
  }
  return report;
}

}  // namespace sg
