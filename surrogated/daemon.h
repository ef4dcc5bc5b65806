// The daemon: wires config, trust policy, state store, hypervisor, VM
// manager, nftables enforcement and the control socket together, and runs
// the event loop.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "surrogated/api_server.h"
#include "surrogated/authcerts.h"
#include "surrogated/config.h"
#include "surrogated/control_server.h"
#include "surrogated/enforcer.h"
#include "surrogated/event_source.h"
#include "surrogated/flow_recorder.h"
#include "surrogated/guest_sim.h"
#include "surrogated/hypervisor.h"
#include "surrogated/libvirt_events.h"
#include "surrogated/loop_bridge.h"
#include "surrogated/metrics.h"
#include "surrogated/protocol.h"
#include "surrogated/sd_notify.h"
#include "surrogated/shaper.h"
#include "surrogated/state_store.h"
#include "surrogated/tunnels.h"
#include "surrogated/vm_manager.h"
#include "surrogated/web_ui.h"
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
  // The trust anchors and CRL files read again; authcerts in force that no
  // longer verify are closed (and returned).
  Result<std::vector<ClosedAuthcert>> reload_pki(const std::string& why);

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
  nlohmann::json op_authcert_submit(const proto::Request& req, const Peer& peer);
  nlohmann::json op_authcert_list(const proto::Request& req, const Peer& peer);
  nlohmann::json op_authcert_revoke(const proto::Request& req, const Peer& peer);
  nlohmann::json op_pki(const proto::Request& req, const Peer& peer);
  nlohmann::json op_flows(const proto::Request& req, const Peer& peer);
  nlohmann::json op_who_sent(const proto::Request& req, const Peer& peer);
  nlohmann::json op_drops(const proto::Request& req, const Peer& peer);
  nlohmann::json op_top(const proto::Request& req, const Peer& peer);
  nlohmann::json op_block(const proto::Request& req, const Peer& peer, bool block);
  nlohmann::json op_blocks(const proto::Request& req, const Peer& peer);
  nlohmann::json op_audit(const proto::Request& req, const Peer& peer);
  // GRE tunnels to the client (control_ops_tunnel.cc).
  nlohmann::json op_tunnel_up(const proto::Request& req, const Peer& peer);
  nlohmann::json op_tunnel_down(const proto::Request& req, const Peer& peer);
  nlohmann::json op_tunnel_status(const proto::Request& req, const Peer& peer);
  nlohmann::json tunnel_json(const TunnelRecord& t, const VmRecord& vm) const;

  // The policy file's policy plus the owner's runtime block list.
  Result<std::shared_ptr<const trust::Policy>> with_blocks(const trust::Policy& file_policy);
  // "uid 0", or "client sha256:..." for signed requests.
  static std::string actor(const Caller& who, const Peer& peer);

  // The HTTPS API, the owner's web page, /metrics and sd_notify
  // (daemon_remote.cc). The servers' threads reach the daemon only through
  // bridge_, whose jobs run on the event loop.
  Status start_remote();
  void stop_remote();
  void remote_tick();
  // An API request on the loop: the API's limits, then handle().
  nlohmann::json api_request(const proto::Request& req, const Peer& peer);
  // Everything the web page shows, for one page load.
  nlohmann::json web_overview(const WebQuery& q);
  nlohmann::json web_action(const WebAction& a);
  std::string metrics_text();

  DaemonConfig cfg_;
  StateStore store_;
  std::unique_ptr<Hypervisor> hv_;
  std::unique_ptr<VmManager> vms_;
  std::shared_ptr<const trust::Policy> policy_;
  std::unique_ptr<Enforcer> enforcer_;
  // Life-cycle events of real guests (null with test://).
  std::unique_ptr<LibvirtEvents> libvirt_events_;
  std::unique_ptr<AuthcertService> authcerts_;
  std::unique_ptr<FlowRecorder> recorder_;
  std::unique_ptr<GuestNetworkSimulator> simulator_;  // test:// driver only
  std::unique_ptr<Shaper> shaper_;                    // null when [shaping] enabled = false
  std::unique_ptr<Tunnels> tunnels_;                  // GRE tunnels to clients (docs/tunnel.md)
  // Polled by the event loop, in this order.
  std::vector<EventSource*> sources_;
  std::int64_t last_tick_ = 0;
  proto::ReplayGuard replay_;
  std::int64_t started_at_ = 0;
  DaemonMetrics metrics_;
  std::unique_ptr<LoopBridge> bridge_;
  std::unique_ptr<ApiServer> api_;
  std::unique_ptr<WebUi> web_;
  std::optional<sd::Watchdog> watchdog_;
};

}  // namespace sg
