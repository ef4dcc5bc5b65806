#include "surrogated/enforcer.h"

#include <netinet/in.h>

#include <chrono>
#include <sstream>

#include "common/log.h"
#include "common/timeutil.h"

namespace sg {

Result<std::unique_ptr<Enforcer>> Enforcer::open(StateStore& store, const AddressPool& pool,
                                                 netpolicy::CompileOptions options) {
  auto backend = netpolicy::NftBackend::open();
  if (!backend) return with_context("nftables", backend.error());
  auto monitor = netpolicy::NftMonitor::open(options.table);
  if (!monitor) return with_context("nftables monitor", monitor.error());
  auto flusher = netpolicy::ConntrackFlusher::open();
  if (!flusher) return with_context("conntrack", flusher.error());
  return std::unique_ptr<Enforcer>(
      new Enforcer(store, pool, std::move(options), std::move(*backend), std::move(*monitor), std::move(*flusher)));
}

void Enforcer::count_ended(const Result<std::size_t>& ended, const std::string& which, const std::string& why) {
  if (!ended) {
    log::error("conntrack: could not end the flows " + which + " (" + why + "): " + ended.error().describe() +
               "; their established connections keep what they had until they end");
    return;
  }
  flows_ended_ += *ended;
  if (*ended > 0) {
    log::info("conntrack: ended " + std::to_string(*ended) + (*ended == 1 ? " flow " : " flows ") + which + " (" + why +
              ")");
  }
}

void Enforcer::end_flows(const netpolicy::FlowSelector& s, const std::string& why) {
  count_ended(flusher_.end_flows(s), "of VM " + std::to_string(s.vm_id), why);
}

void Enforcer::end_flows_now_forbidden(const trust::Guardrails* before, const trust::Guardrails& now,
                                       const std::string& why) {
  if (before != nullptr && before->same_drops(now)) return;
  auto ended = flusher_.end_flows_of_all_vms([&](const netpolicy::FlowEvent& f) {
    return now.forbid(f.dst, f.proto, f.dport) && (before == nullptr || !before->forbid(f.dst, f.proto, f.dport));
  });
  count_ended(ended, "the guardrails now forbid", why);
}

Status Enforcer::apply(const netpolicy::Plan& plan) {
  auto start = std::chrono::steady_clock::now();
  Status st = backend_.apply(plan);
  apply_latency_.observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return st;
}

netpolicy::VmNet Enforcer::vm_net(const VmRecord& vm, const VmAddresses& addr) {
  netpolicy::VmNet n;
  n.id = vm.id;
  n.name = vm.name;
  n.mac = vm.mac;
  n.v4 = addr.v4_guest;
  n.v6 = addr.v6_guest;
  n.gateway4 = addr.v4_gateway;
  n.gateway6 = addr.v6_gateway;
  n.level = trust::parse_trust_level(vm.trust_level).value_or(trust::TrustLevel::untrusted);
  std::stringstream ss(vm.client_addrs);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (auto p = Prefix::parse(item)) n.client.push_back(*p);
  }
  return n;
}

std::optional<netpolicy::Hole> Enforcer::hole_of(const HoleRecord& h) {
  auto dest = Prefix::parse(h.destination);
  if (!dest) return std::nullopt;
  netpolicy::Hole out;
  out.id = h.id;
  out.vm = h.vm_name;
  out.destination = *dest;
  out.protocol = static_cast<std::uint8_t>(h.protocol);
  out.ports = trust::PortRange{static_cast<std::uint16_t>(h.port_first), static_cast<std::uint16_t>(h.port_last)};
  out.expires = h.expires;
  out.tc_minor = h.tc_minor;
  return out;
}

std::vector<netpolicy::Hole> Enforcer::holes_of(std::int64_t vm_id) const {
  std::vector<netpolicy::Hole> out;
  auto holes = store_.open_holes(now_unix(), vm_id);
  if (!holes) {
    log::error("cannot read holes: " + holes.error().describe());
    return out;
  }
  for (const auto& h : *holes) {
    if (auto x = hole_of(h)) out.push_back(*x);
  }
  return out;
}

Status Enforcer::install_all(std::shared_ptr<const trust::Policy> policy) {
  auto vms = store_.active();
  if (!vms) return vms.error();
  std::map<std::string, netpolicy::VmNet> nets;
  std::vector<netpolicy::VmNet> list;
  for (const auto& vm : *vms) {
    auto n = vm_net(vm, pool_.addresses(vm.slot));
    nets[n.name] = n;
    list.push_back(n);
  }
  netpolicy::Compiler compiler(*policy, opt_);
  auto rs = compiler.compile(list, holes_of(0), now_unix());
  if (auto st = apply(netpolicy::plan_replace(rs)); !st) return st;
  const auto previous = std::move(policy_);
  policy_ = std::move(policy);
  end_flows_now_forbidden(previous ? &previous->guardrails : nullptr, policy_->guardrails,
                          previous ? "policy reloaded" : "rules installed");
  // A VM whose level changed: its established flows meet the new rules.
  for (const auto& [name, net] : nets) {
    auto before = installed_.find(name);
    if (before != installed_.end() && before->second.level != net.level) {
      end_flows({net.id}, "now " + std::string(trust::to_string(net.level)));
    }
  }
  installed_ = std::move(nets);
  log::info("nftables: installed table '" + opt_.table + "' for " + std::to_string(installed_.size()) +
            " VMs (policy " + policy_->version.substr(0, 19) + ")");
  return {};
}

Status Enforcer::prepare(const VmRecord& vm, const VmAddresses& addr) {
  auto net = vm_net(vm, addr);
  auto it = installed_.find(vm.name);
  if (it != installed_.end()) return {};  // installed by install_all (adopted VM)
  netpolicy::Compiler compiler(*policy_, opt_);
  if (auto st = apply(compiler.plan_add_vm(net, holes_of(vm.id), now_unix())); !st) return st;
  installed_[vm.name] = net;
  return {};
}

void Enforcer::released(const VmRecord& vm, const VmAddresses& /*addr*/) {
  auto it = installed_.find(vm.name);
  if (it == installed_.end()) return;
  netpolicy::Compiler compiler(*policy_, opt_);
  // Its holes' elements go with it (the shared hole maps are keyed by its
  // interface): the store still lists them, the authcert service closes
  // them after this observer.
  if (auto st = apply(compiler.plan_remove_vm(it->second, holes_of(vm.id))); !st) {
    // The VM is gone, its tap too; whatever is left is unreachable, and the
    // next full install cleans it. Say so rather than fail the release.
    log::error("nftables: could not remove rules of " + vm.name + ": " + st.error().describe());
  }
  // No flow of it lives on for a later VM with its address to continue.
  end_flows({vm.id}, "released");
  // Its entries in the dynamic sets shared by all VMs (meters, SYN rate,
  // drop counters; keyed by its interface first): a release leaves nothing.
  for (const auto& set : compiler.packet_path_sets()) {
    auto purged =
        backend_.purge_elements(netpolicy::TableFamily::inet, opt_.table, set, netpolicy::ifname_bytes(vm.name));
    if (!purged)
      log::warning("nftables: meter entries of " + vm.name + " in " + set.name + ": " + purged.error().describe());
  }
  installed_.erase(it);
}

Status Enforcer::add_hole(const VmRecord& vm, const HoleRecord& hole) {
  auto it = installed_.find(vm.name);
  auto h = hole_of(hole);
  if (it == installed_.end() || !h) return make_error("VM " + vm.name + " has no rules installed");
  if (hole_shaping_) {
    if (auto st = hole_shaping_(vm); !st) return with_context("traffic shaping for the hole", st.error());
  }
  netpolicy::Compiler compiler(*policy_, opt_);
  return apply(compiler.plan_add_hole(it->second, *h, now_unix()));
}

Status Enforcer::add_holes(const VmRecord& vm, const std::vector<HoleRecord>& holes) {
  return replace_holes(vm, {}, holes);
}

Status Enforcer::replace_holes(const VmRecord& vm, const std::vector<HoleRecord>& old,
                               const std::vector<HoleRecord>& holes) {
  auto it = installed_.find(vm.name);
  if (it == installed_.end()) return make_error("VM " + vm.name + " has no rules installed");
  netpolicy::Compiler compiler(*policy_, opt_);
  netpolicy::Plan plan;
  for (const auto& hole : old) {
    if (auto h = hole_of(hole)) plan.append(compiler.plan_remove_hole(it->second, *h, now_unix()));
  }
  for (const auto& hole : holes) {
    auto h = hole_of(hole);
    if (!h) return make_error("hole destination '" + hole.destination + "' is not a prefix");
    plan.append(compiler.plan_add_hole(it->second, *h, now_unix()));
  }
  if (hole_shaping_) {
    if (auto st = hole_shaping_(vm); !st) return with_context("traffic shaping for the holes", st.error());
  }
  return apply(plan);
}

Status Enforcer::remove_hole(const VmRecord& vm, const HoleRecord& hole) {
  auto it = installed_.find(vm.name);
  auto h = hole_of(hole);
  if (it == installed_.end() || !h) return {};
  netpolicy::Compiler compiler(*policy_, opt_);
  if (auto st = apply(compiler.plan_remove_hole(it->second, *h, now_unix())); !st) return st;
  // The caller marks the hole removed in the store afterwards; the shaper's
  // tick then drops a class no open hole names any more.
  return {};
}

Status Enforcer::close_hole(const VmRecord* vm, const HoleRecord& hole, std::int64_t now, const std::string& reason) {
  const bool live = hole.expires == 0 || hole.expires > now;
  if (vm != nullptr && live) {
    if (auto st = remove_hole(*vm, hole); !st) return st;
  }
  // Connections opened through it end with it (expired ones too).
  if (auto h = hole_of(hole); vm != nullptr && h) {
    netpolicy::FlowSelector sel{vm->id, h->destination, h->protocol};  // any port
    if (h->protocol == IPPROTO_TCP || h->protocol == IPPROTO_UDP) {
      sel.first_port = h->ports.first;
      sel.last_port = h->ports.last;
    }
    end_flows(sel, "hole " + std::to_string(hole.id) + " closed: " + reason);
  }
  if (auto st = store_.remove_hole(hole.id, now, reason); !st) {
    log::error("hole " + std::to_string(hole.id) + " is closed but could not be recorded: " + st.error().describe());
  }
  if (vm != nullptr) holes_closed(*vm);
  return {};
}

void Enforcer::holes_closed(const VmRecord& vm) {
  if (!hole_shaping_) return;
  if (auto st = hole_shaping_(vm); !st)
    log::warning("shaping after closing holes of " + vm.name + ": " + st.error().describe());
}

Status Enforcer::update_block_list(std::shared_ptr<const trust::Policy> policy) {
  netpolicy::Compiler compiler(*policy, opt_);
  if (auto st = apply(compiler.plan_update_block_list()); !st) return st;
  const auto previous = std::move(policy_);
  policy_ = std::move(policy);
  end_flows_now_forbidden(previous ? &previous->guardrails : nullptr, policy_->guardrails, "block list changed");
  return {};
}

Result<std::string> Enforcer::rules_text(const std::string& vm_name) const {
  netpolicy::Compiler compiler(*policy_, opt_);
  if (!vm_name.empty()) {
    auto it = installed_.find(vm_name);
    if (it == installed_.end()) return make_error("no rules for '" + vm_name + "': no such running VM");
    return compiler.vm_text(it->second, holes_of(it->second.id), now_unix());
  }
  std::vector<netpolicy::VmNet> list;
  for (const auto& [name, n] : installed_) list.push_back(n);
  return netpolicy::to_nft_text(compiler.compile(list, holes_of(0), now_unix()));
}

void Enforcer::on_event_ready() {
  bool tampered = false;
  for (const auto& ev : monitor_.read_events()) {
    if (ev.from_us) continue;
    tampered = true;
    log::alert("nftables: " + ev.describe() + " by someone else; reinstalling the surrogated ruleset");
  }
  if (!tampered) return;
  ++repairs_;
  if (auto st = install_all(policy_); !st) {
    log::alert("nftables: REPAIR FAILED, VM traffic may be unfiltered: " + st.error().describe());
  }
}

}  // namespace sg
