#include "surrogated/daemon.h"

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "common/log.h"
#include "common/raii/fd.h"
#include "common/timeutil.h"
#include "surrogated/libvirt_events.h"
#include "surrogated/libvirt_hypervisor.h"
#include "surrogated/version.h"
#include "trust/classify.h"
#include "trust/parse.h"

namespace sg {

Result<std::unique_ptr<Daemon>> Daemon::create(DaemonConfig cfg) {
  auto policy = trust::load_policy_file(cfg.trust_policy);
  if (!policy) {
    return make_error("trust policy " + cfg.trust_policy + " is not usable:\n" + policy.error().message +
                      "\n(an empty file gives the safe defaults; 'surrogatectl policy check FILE' explains errors)");
  }
  std::error_code ec;
  std::filesystem::create_directories(cfg.state_dir, ec);
  if (ec) return make_error("cannot create state_dir " + cfg.state_dir + ": " + ec.message());
  std::filesystem::create_directories(std::filesystem::path(cfg.socket_path).parent_path(), ec);
  auto store = StateStore::open(cfg.state_dir + "/state.db");
  if (!store) return store.error();
  auto hv = LibvirtHypervisor::connect(cfg.libvirt_uri);
  if (!hv) return hv.error();
  std::unique_ptr<Daemon> d(new Daemon(std::move(cfg), std::move(*store), std::move(*hv)));
  auto effective = d->with_blocks(*policy);
  if (!effective) return effective.error();
  d->policy_ = std::move(*effective);

  // Rules first: the whole table, with the catch-all drop for VM interfaces
  // and every VM the state store knows, in one transaction, before any guest
  // is (re)registered or any request served.
  netpolicy::CompileOptions nft;
  nft.table = d->cfg_.nft_table;
  nft.log_group = static_cast<std::uint16_t>(d->cfg_.nflog_group);
  nft.shaping = d->cfg_.shaping_enabled;
  nft.tc_major = static_cast<std::uint32_t>(d->cfg_.shaping_tc_major);
  // Tunnels before the enforcer: every compile includes the recorded
  // tunnels' chains, and on release a tunnel goes before the VM's chains.
  nft.tunnel_of = [raw = d.get()](const std::string& vm) -> std::optional<netpolicy::TunnelNet> {
    return raw->tunnels_ ? raw->tunnels_->tunnel_of(vm) : std::nullopt;
  };
  auto tunnels = Tunnels::open(d->store_, d->vms_->pool(), nft, [raw = d.get()] { return raw->policy_; });
  if (!tunnels) return with_context("GRE tunnels", tunnels.error());
  d->tunnels_ = std::move(*tunnels);
  d->vms_->add_observer(d->tunnels_.get());
  auto enforcer = Enforcer::open(d->store_, d->vms_->pool(), nft);
  if (!enforcer) return enforcer.error();
  d->enforcer_ = std::move(*enforcer);
  if (auto st = d->enforcer_->install_all(d->policy_); !st) {
    return with_context("cannot install the nftables ruleset (nothing was changed)", st.error());
  }
  d->vms_->add_observer(d->enforcer_.get());
  // Flows that went into a tunnel meet the rules again once it is down.
  d->tunnels_->set_on_down([raw = d.get()](const VmRecord& vm) { raw->enforcer_->end_flows({vm.id}, "tunnel down"); });
  d->tunnels_->restore();
  d->sources_.push_back(d->enforcer_.get());

  // Real guests stop by themselves (power off, crash): libvirt's events
  // release them. test:// domains never do, so they need no listener.
  if (hypervisor_type_for_uri(d->cfg_.libvirt_uri) != "test") {
    auto events = LibvirtEvents::open(d->cfg_.libvirt_uri, d->store_, *d->vms_);
    if (!events) return events.error();
    d->libvirt_events_ = std::move(*events);
    d->sources_.push_back(d->libvirt_events_.get());
  }

  auto authcerts = AuthcertService::open(d->cfg_, d->store_, *d->enforcer_);
  if (!authcerts) return authcerts.error();
  d->authcerts_ = std::move(*authcerts);
  d->vms_->add_observer(d->authcerts_.get());
  d->sources_.push_back(d->authcerts_.get());

  auto recorder = FlowRecorder::open(d->cfg_, d->store_);
  if (!recorder) return recorder.error();
  d->recorder_ = std::move(*recorder);
  d->authcerts_->set_audit(
      [r = d->recorder_.get()](const std::string& actor, const std::string& action, const std::string& subject,
                               const nlohmann::json& details) { r->audit(actor, action, subject, details); });
  d->sources_.push_back(d->recorder_->conntrack_source());
  d->sources_.push_back(d->recorder_->nflog_source());

  if (d->cfg_.simulate_guest_network) {
    d->simulator_ = std::make_unique<GuestNetworkSimulator>(d->cfg_.guest_netns_prefix);
    d->vms_->add_observer(d->simulator_.get());
    if (auto st = d->reregister_simulated_guests(); !st) return st.error();
  }
  // Shaping after the simulator: started() finds the (simulated) tap there.
  if (d->cfg_.shaping_enabled) {
    Shaper::Options so{d->cfg_.shaping_egress_devices, nft.iface_prefix, nft.tc_major, nft.table};
    auto shaper = Shaper::open(d->store_, std::move(so), [raw = d.get()] { return raw->policy_; });
    if (!shaper) return shaper.error();
    d->shaper_ = std::move(*shaper);
    if (auto st = d->shaper_->install_all(); !st) return with_context("cannot set up traffic shaping", st.error());
    d->vms_->add_observer(d->shaper_.get());
    d->sources_.push_back(d->shaper_.get());
    // A rated authcert's class exists before its hole's element names it.
    d->enforcer_->set_hole_shaping([sh = d->shaper_.get()](const VmRecord& vm) { return sh->refresh_holes(vm); });
  }
  log::info("trust policy " + d->cfg_.trust_policy + " loaded (version " + d->policy_->version.substr(0, 19) + ")");
  return d;
}

Daemon::Daemon(DaemonConfig cfg, StateStore store, std::unique_ptr<Hypervisor> hv)
    : cfg_(std::move(cfg)), store_(std::move(store)), hv_(std::move(hv)) {
  vms_ = std::make_unique<VmManager>(cfg_, store_, *hv_);
  started_at_ = now_unix();
}

Daemon::~Daemon() = default;

Status Daemon::reregister_simulated_guests() {
  auto active = store_.active();
  if (!active) return active.error();
  auto domains = hv_->list();
  if (!domains) return domains.error();
  for (const auto& vm : *active) {
    bool known =
        std::any_of(domains->begin(), domains->end(), [&](const DomainInfo& d) { return d.name == vm.domain; });
    if (known || !simulator_->guest_alive(vm.name)) continue;
    auto tpl = cfg_.templates.find(vm.template_name);
    DomainSpec spec{vm.domain,
                    vm.name,
                    vm.id,
                    vm.owner_fp,
                    tpl != cfg_.templates.end() ? tpl->second : VmTemplate{},
                    vms_->addresses_of(vm)};
    if (auto st = hv_->start(spec); !st) return st;
    log::info("simulated guest " + vm.name + " outlived the previous daemon; registered it with the test driver again");
  }
  return {};
}

Result<std::shared_ptr<const trust::Policy>> Daemon::with_blocks(const trust::Policy& file_policy) {
  auto blocks = store_.blocks();
  if (!blocks) return blocks.error();
  auto p = std::make_shared<trust::Policy>(file_policy);
  for (const auto& [prefix, reason] : *blocks) {
    if (auto pr = Prefix::parse(prefix)) p->guardrails.block.push_back(*pr);
  }
  return std::shared_ptr<const trust::Policy>(std::move(p));
}

Status Daemon::reload_policy(const std::string& why) {
  auto loaded = trust::load_policy_file(cfg_.trust_policy);
  if (!loaded) {
    log::error("policy reload (" + why + ") refused; the running policy stays in force:\n" + loaded.error().message);
    return make_error("the new policy has errors; the running policy stays in force:\n" + loaded.error().message);
  }
  auto effective = with_blocks(*loaded);
  if (!effective) return effective.error();
  auto policy = std::move(*effective);
  auto vms = store_.active();
  if (!vms) return vms.error();
  // Re-classify every running VM under the new policy, then install the
  // whole ruleset in one transaction. If the kernel refuses, put the old
  // levels back: the old ruleset is still in force.
  std::vector<VmRecord> before = *vms;
  std::vector<std::string> changes;
  for (auto& vm : *vms) {
    auto key = certs::PublicKey::from_pem(vm.owner_key_pem);
    auto cls = trust::classify(*policy, trust::ClientIdentity{vm.owner_fp, std::nullopt, std::nullopt});
    std::string level(trust::to_string(cls.refused ? trust::TrustLevel::untrusted : cls.level));
    if (level != vm.trust_level) {
      changes.push_back(vm.name + ": " + vm.trust_level + " -> " + level + " (" + cls.reason + ")");
    }
    vm.trust_level = level;
    vm.policy_version = policy->version;
    if (auto st = store_.update(vm); !st) return st;
  }
  if (auto st = enforcer_->install_all(policy); !st) {
    for (const auto& vm : before) (void)store_.update(vm);
    log::error("policy reload (" + why +
               ") failed in the kernel; the running policy stays in force: " + st.error().describe());
    return with_context("the kernel refused the new ruleset; the running policy stays in force", st.error());
  }
  policy_ = policy;
  for (const auto& c : changes) log::notice("policy reload: " + c);
  recorder_->audit("daemon", "policy-reload", cfg_.trust_policy,
                   {{"version", policy_->version}, {"why", why}, {"changes", changes}});
  log::notice("policy reload (" + why + "): version " + policy_->version.substr(0, 19) + " in force for " +
              std::to_string(vms->size()) + " VMs, " + std::to_string(changes.size()) + " changed trust level");
  return {};
}

Result<std::vector<ClosedAuthcert>> Daemon::reload_pki(const std::string& why) {
  auto closed = authcerts_->reload(now_unix());
  if (!closed) {
    log::error("pki reload (" + why + ") refused: " + closed.error().describe());
    return closed.error();
  }
  log::notice("pki reload (" + why + "): trust anchors and CRLs read again; " + std::to_string(closed->size()) +
              " authcert(s) in force no longer verify and were closed");
  return closed;
}

int Daemon::run() {
  // Signals arrive through a descriptor so the loop handles them in order.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  (void)signal(SIGPIPE, SIG_IGN);
  Fd sigfd(signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!sigfd.valid()) {
    log::error(make_sys_error("cannot create signalfd").describe());
    return 1;
  }

  auto report = vms_->reconcile();
  if (!report) {
    log::error("cannot reconcile with libvirt: " + report.error().describe());
    return 1;
  }
  log::info("reconciled with " + hv_->describe() + ": " + std::to_string(report->adopted.size()) + " adopted, " +
            std::to_string(report->released.size()) + " released, " + std::to_string(report->unknown.size()) +
            " foreign domains left alone");

  auto server = ControlServer::listen(cfg_.socket_path, cfg_.admin_group);
  if (!server) {
    log::error(server.error().describe());
    return 1;
  }
  // The HTTPS API and the web page (their threads only post jobs to the
  // loop), then READY=1 to systemd.
  if (auto st = start_remote(); !st) {
    log::error(st.error().describe());
    stop_remote();
    return 1;
  }
  log::notice("surrogated " + std::string(kVersion) + " ready on " + cfg_.socket_path + " (libvirt " + hv_->describe() +
              ", " + std::to_string(vms_->pool().size()) + " VM slots)");

  RequestHandler handler = [this](const proto::Request& r, const Peer& p) { return handle(r, p); };
  int exit_code = 0;
  for (bool running = true; running;) {
    std::vector<pollfd> fds;
    fds.push_back({sigfd.get(), POLLIN, 0});
    for (auto* src : sources_) fds.push_back({src->event_fd(), POLLIN, 0});
    server->collect_poll(fds);
    int n = ::poll(fds.data(), fds.size(), 1000);
    if (n < 0 && errno != EINTR) {
      log::error(make_sys_error("poll failed").describe());
      exit_code = 1;
      break;
    }
    if (fds[0].revents != 0) {
      signalfd_siginfo si{};
      while (::read(sigfd.get(), &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
        if (si.ssi_signo == SIGHUP) {
          (void)reload_policy("SIGHUP");
          (void)reload_pki("SIGHUP");
        } else {
          log::notice(std::string("received ") + strsignal(static_cast<int>(si.ssi_signo)) + ", shutting down");
          running = false;
        }
      }
    }
    // Sources come in registration order: the ruleset monitor first, so
    // tampering is repaired before anything else is done.
    for (std::size_t i = 0; i < sources_.size(); ++i) {
      if (fds[1 + i].revents != 0) sources_[i]->on_event_ready();
    }
    if (std::int64_t now = now_unix(); now != last_tick_) {
      last_tick_ = now;
      for (auto* src : sources_) src->on_tick();
      remote_tick();
    }
    server->on_ready(fds, handler);
    server->expire_idle();
    for (const auto& name : vms_->expire(now_unix())) log::notice(name + " expired");
  }
  stop_remote();
  ::unlink(cfg_.socket_path.c_str());
  // VMs keep running, and filtered, across a daemon stop: the table stays in
  // the kernel and the next start adopts them.
  log::notice("surrogated stopped; " + std::to_string(store_.active() ? store_.active()->size() : 0) +
              " VMs keep running under their rules");
  return exit_code;
}

}  // namespace sg
