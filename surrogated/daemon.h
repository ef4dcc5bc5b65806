// The daemon: wires config, trust policy, state store, hypervisor, VM
// manager, nftables enforcement and the control socket together, and runs
// the event loop.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "surrogated/config.h"
#include "surrogated/control_server.h"
#include "surrogated/enforcer.h"
#include "surrogated/event_source.h"
#include "surrogated/guest_sim.h"
#include "surrogated/hypervisor.h"
#include "surrogated/protocol.h"
#include "surrogated/state_store.h"
#include "surrogated/vm_manager.h"
#include "trust/policy.h"

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
  // Loads the policy file and applies it to every running VM atomically; on
  // any error the running policy stays in force.
  Status reload_policy(const std::string& why);

  // Who is asking: the verified signer (if the request is signed) and
  // whether the peer is an admin. Sets `err` and returns false when the
  // request must be refused.
  struct Caller {
    std::optional<certs::PublicKey> key;
    bool admin = false;
  };
  bool identify(const proto::Request& req, const Peer& peer, bool need_key, Caller& who, nlohmann::json& err);
  // The active VM named in args["vm"] that the caller may act on.
  std::optional<VmRecord> vm_for(const proto::Request& req, const Caller& who, nlohmann::json& err);
  [[nodiscard]] nlohmann::json vm_json(const VmRecord& vm) const;

  nlohmann::json op_status();
  nlohmann::json op_allocate(const proto::Request& req, const Peer& peer);
  nlohmann::json op_release(const proto::Request& req, const Peer& peer);
  nlohmann::json op_list(const proto::Request& req, const Peer& peer);
  nlohmann::json op_show(const proto::Request& req, const Peer& peer);
  nlohmann::json op_policy_reload(const proto::Request& req, const Peer& peer);
  nlohmann::json op_policy_show(const proto::Request& req, const Peer& peer);
  nlohmann::json op_policy_explain(const proto::Request& req, const Peer& peer);
  nlohmann::json op_rules_show(const proto::Request& req, const Peer& peer);
  nlohmann::json op_hole_add(const proto::Request& req, const Peer& peer);
  nlohmann::json op_hole_remove(const proto::Request& req, const Peer& peer);
  nlohmann::json op_hole_list(const proto::Request& req, const Peer& peer);

  DaemonConfig cfg_;
  StateStore store_;
  std::unique_ptr<Hypervisor> hv_;
  std::unique_ptr<VmManager> vms_;
  std::shared_ptr<const trust::Policy> policy_;
  std::unique_ptr<Enforcer> enforcer_;
  std::unique_ptr<GuestNetworkSimulator> simulator_;  // test:// driver only
  // Polled by the event loop, in this order.
  std::vector<EventSource*> sources_;
  std::int64_t last_tick_ = 0;
  proto::ReplayGuard replay_;
  std::int64_t started_at_ = 0;
};

}  // namespace sg
