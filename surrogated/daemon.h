// The daemon: wires config, state store, hypervisor, VM manager and the
// control socket together and runs the event loop.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "surrogated/config.h"
#include "surrogated/control_server.h"
#include "surrogated/guest_sim.h"
#include "surrogated/hypervisor.h"
#include "surrogated/protocol.h"
#include "surrogated/state_store.h"
#include "surrogated/vm_manager.h"

namespace sg {

class Daemon {
 public:
  static Result<std::unique_ptr<Daemon>> create(DaemonConfig cfg);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Runs until SIGTERM or SIGINT; returns the process exit code.
  int run();

  nlohmann::json handle(const proto::Request& req, const Peer& peer);

 private:
  Daemon(DaemonConfig cfg, StateStore store, std::unique_ptr<Hypervisor> hv);
  Status reregister_simulated_guests();
  nlohmann::json vm_json(const VmRecord& vm) const;
  Result<VmRecord> find_vm_for(const proto::Request& req, const Peer& peer, bool& admin_act, nlohmann::json& err);

  nlohmann::json op_status();
  nlohmann::json op_allocate(const proto::Request& req, const Peer& peer);
  nlohmann::json op_release(const proto::Request& req, const Peer& peer);
  nlohmann::json op_list(const proto::Request& req, const Peer& peer);
  nlohmann::json op_show(const proto::Request& req, const Peer& peer);

  DaemonConfig cfg_;
  StateStore store_;
  std::unique_ptr<Hypervisor> hv_;
  std::unique_ptr<VmManager> vms_;
  std::unique_ptr<GuestNetworkSimulator> simulator_;  // test:// driver only
  proto::ReplayGuard replay_;
  std::int64_t started_at_ = 0;
};

}  // namespace sg
