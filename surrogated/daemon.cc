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
#include "surrogated/guest_sim.h"
#include "surrogated/libvirt_hypervisor.h"

namespace sg {

namespace {
constexpr const char* kVersion = "0.1.0";
}

Result<std::unique_ptr<Daemon>> Daemon::create(DaemonConfig cfg) {
  std::error_code ec;
  std::filesystem::create_directories(cfg.state_dir, ec);
  if (ec) return make_error("cannot create state_dir " + cfg.state_dir + ": " + ec.message());
  std::filesystem::create_directories(std::filesystem::path(cfg.socket_path).parent_path(), ec);
  auto store = StateStore::open(cfg.state_dir + "/state.db");
  if (!store) return store.error();
  auto hv = LibvirtHypervisor::connect(cfg.libvirt_uri);
  if (!hv) return hv.error();
  std::unique_ptr<Daemon> d(new Daemon(std::move(cfg), std::move(*store), std::move(*hv)));
  if (d->cfg_.simulate_guest_network) {
    d->simulator_ = std::make_unique<GuestNetworkSimulator>(d->cfg_.guest_netns_prefix);
    d->vms_->add_observer(d->simulator_.get());
    if (auto st = d->reregister_simulated_guests(); !st) return st.error();
  }
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

int Daemon::run() {
  // Signals arrive through a descriptor so the loop handles them in order.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);
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
  log::notice("surrogated " + std::string(kVersion) + " ready on " + cfg_.socket_path + " (libvirt " + hv_->describe() +
              ", " + std::to_string(vms_->pool().size()) + " VM slots)");

  RequestHandler handler = [this](const proto::Request& r, const Peer& p) { return handle(r, p); };
  int exit_code = 0;
  for (bool running = true; running;) {
    std::vector<pollfd> fds;
    fds.push_back({sigfd.get(), POLLIN, 0});
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
          log::info("SIGHUP received: nothing to reload yet");
        } else {
          log::notice(std::string("received ") + strsignal(static_cast<int>(si.ssi_signo)) + ", shutting down");
          running = false;
        }
      }
    }
    server->on_ready(fds, handler);
    server->expire_idle();
    for (const auto& name : vms_->expire(now_unix())) log::notice(name + " expired");
  }
  ::unlink(cfg_.socket_path.c_str());
  // VMs keep running (and filtered) across a daemon stop; the next start
  // adopts them.
  log::notice("surrogated stopped");
  return exit_code;
}

nlohmann::json Daemon::vm_json(const VmRecord& vm) const {
  std::int64_t now = now_unix();
  return {{"name", vm.name},
          {"id", vm.id},
          {"domain", vm.domain},
          {"owner", vm.owner_fp},
          {"template", vm.template_name},
          {"ipv4", vm.ipv4},
          {"ipv6", vm.ipv6},
          {"gateway_ipv4", vms_->addresses_of(vm).v4_gateway ? vms_->addresses_of(vm).v4_gateway->to_string() : ""},
          {"gateway_ipv6", vms_->addresses_of(vm).v6_gateway ? vms_->addresses_of(vm).v6_gateway->to_string() : ""},
          {"mac", vm.mac},
          {"tap", vm.name},
          {"state", vm.state},
          {"trust_level", vm.trust_level},
          {"policy_version", vm.policy_version},
          {"created", format_utc(vm.created)},
          {"expires", format_utc(vm.expires)},
          {"remaining_s", std::max<std::int64_t>(0, vm.expires - now)},
          {"contact", vm.contact},
          {"title", vm.title}};
}

nlohmann::json Daemon::handle(const proto::Request& req, const Peer& peer) {
  try {
    if (req.op == "status") return op_status();
    if (req.op == "allocate") return op_allocate(req, peer);
    if (req.op == "release") return op_release(req, peer);
    if (req.op == "list") return op_list(req, peer);
    if (req.op == "show") return op_show(req, peer);
    return proto::error_response("bad_request",
                                 "unknown operation '" + req.op + "'; known: status, allocate, release, list, show");
  } catch (const nlohmann::json::exception& e) {
    // A field of the wrong type inside args.
    return proto::error_response("bad_request", std::string("malformed arguments: ") + e.what());
  }
}

nlohmann::json Daemon::op_status() {
  auto active = store_.active();
  if (!active) return proto::error_response("internal", active.error().describe());
  return proto::ok_response({{"version", kVersion},
                             {"libvirt", hv_->describe()},
                             {"uptime_s", now_unix() - started_at_},
                             {"vms", active->size()},
                             {"slots", vms_->pool().size()},
                             {"slots_free", vms_->pool().size() - static_cast<int>(active->size())},
                             {"simulated_guests", cfg_.simulate_guest_network},
                             {"guest_netns_prefix", cfg_.simulate_guest_network ? cfg_.guest_netns_prefix : ""}});
}

nlohmann::json Daemon::op_allocate(const proto::Request& req, const Peer& peer) {
  auto key = proto::verify_request(req, now_unix(), replay_);
  if (!key) return proto::error_response("unauthorized", key.error().message);
  AllocateRequest a;
  a.owner_fp = key->fingerprint();
  a.owner_key_pem = key->pem();
  a.template_name = req.args.value("template", "");
  if (req.args.contains("lifetime")) {
    auto d = parse_duration(req.args["lifetime"].get<std::string>());
    if (!d) return proto::error_response("bad_request", d.error().message);
    a.lifetime_s = *d;
  }
  a.contact = req.args.value("contact", "");
  a.title = req.args.value("title", "");
  if (a.contact.size() > 256 || a.title.size() > 256) {
    return proto::error_response("bad_request", "contact and title must be at most 256 characters");
  }
  Classification cls;
  auto vm = vms_->allocate(a, cls);
  if (!vm) {
    std::string code = vm.error().message.find("exhausted") != std::string::npos ? "exhausted" : "unavailable";
    if (vm.error().message.find("not allowed") != std::string::npos ||
        vm.error().message.find("unknown template") != std::string::npos) {
      code = "bad_request";
    }
    log::warning("allocation for " + a.owner_fp + " (pid " + std::to_string(peer.pid) +
                 ") failed: " + vm.error().describe());
    return proto::error_response(code, vm.error().message);
  }
  return proto::ok_response(vm_json(*vm));
}

Result<VmRecord> Daemon::find_vm_for(const proto::Request& req, const Peer& peer, bool& admin_act,
                                     nlohmann::json& err) {
  std::string name = req.args.value("vm", "");
  if (name.empty()) {
    err = proto::error_response("bad_request", "missing \"vm\": name the VM, e.g. sg12");
    return make_error("bad");
  }
  std::optional<std::string> signer;
  if (req.key_pem) {
    auto key = proto::verify_request(req, now_unix(), replay_);
    if (!key) {
      err = proto::error_response("unauthorized", key.error().message);
      return make_error("bad");
    }
    signer = key->fingerprint();
  } else if (!peer.admin) {
    err = proto::error_response("unauthorized",
                                "sign the request with your key (--key FILE), or run as root or a "
                                "member of group '" +
                                    cfg_.admin_group + "'");
    return make_error("bad");
  }
  auto vm = store_.find_active(name);
  if (!vm) {
    err = proto::error_response("internal", vm.error().describe());
    return make_error("bad");
  }
  if (!vm->has_value() || (signer && (*vm)->owner_fp != *signer && !peer.admin)) {
    // Someone else's VM is reported like an unknown one: no probing of names.
    err =
        proto::error_response("not_found", "no VM named '" + name + "' that you own; 'surrogatectl list' shows yours");
    return make_error("bad");
  }
  admin_act = !signer || (*vm)->owner_fp != *signer;
  return **vm;
}

nlohmann::json Daemon::op_release(const proto::Request& req, const Peer& peer) {
  bool admin_act = false;
  nlohmann::json err;
  auto vm = find_vm_for(req, peer, admin_act, err);
  if (!vm) return err;
  std::string reason = admin_act ? "released by admin (uid " + std::to_string(peer.uid) + ")" : "released by owner";
  if (auto st = vms_->release(*vm, reason); !st) return proto::error_response("unavailable", st.error().describe());
  return proto::ok_response({{"name", vm->name}, {"released", true}, {"reason", reason}});
}

nlohmann::json Daemon::op_show(const proto::Request& req, const Peer& peer) {
  bool admin_act = false;
  nlohmann::json err;
  auto vm = find_vm_for(req, peer, admin_act, err);
  if (!vm) return err;
  return proto::ok_response(vm_json(*vm));
}

nlohmann::json Daemon::op_list(const proto::Request& req, const Peer& peer) {
  std::optional<std::string> only;
  if (req.key_pem) {
    auto key = proto::verify_request(req, now_unix(), replay_);
    if (!key) return proto::error_response("unauthorized", key.error().message);
    if (!peer.admin || req.args.value("mine", false)) only = key->fingerprint();
  } else if (!peer.admin) {
    return proto::error_response("unauthorized",
                                 "sign the request with your key (--key FILE) to list your VMs, "
                                 "or run as root or a member of group '" +
                                     cfg_.admin_group + "' to list all");
  }
  auto vms = store_.active();
  if (!vms) return proto::error_response("internal", vms.error().describe());
  nlohmann::json out = nlohmann::json::array();
  for (const auto& v : *vms) {
    if (only && v.owner_fp != *only) continue;
    out.push_back(vm_json(v));
  }
  return proto::ok_response(out);
}

}  // namespace sg
