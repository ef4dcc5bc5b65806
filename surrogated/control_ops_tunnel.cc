// Control operations for GRE tunnels to the client (docs/tunnel.md):
// tunnel-up, tunnel-down, tunnel-status. A tunnel belongs to its VM's owner;
// the admin may act on any.
#include "common/log.h"
#include "surrogated/daemon.h"

namespace sg {

nlohmann::json Daemon::tunnel_json(const TunnelRecord& t, const VmRecord& vm) const {
  nlohmann::json j = tunnels_->to_json(t);
  // What the client's end needs: the VM's inner addresses and the host's end.
  j["vm_ipv4"] = vm.ipv4;
  j["vm_ipv6"] = vm.ipv6;
  j["host"] = t.local;
  return j;
}

nlohmann::json Daemon::op_tunnel_up(const proto::Request& req, const Peer& peer) {
  Caller who;
  nlohmann::json err;
  if (!identify(req, peer, false, who, err)) return err;
  auto vm = vm_for(req, who, err);
  if (!vm) return err;
  TunnelRequest tr;
  if (auto it = req.args.find("remote"); it != req.args.end() && !it->is_null()) tr.remote = it->get<std::string>();
  tr.no_key = req.args.value("no_key", false);
  if (tunnels_->has(vm->id)) {
    return proto::error_response("conflict",
                                 vm->name + " has a tunnel already; 'surrogatectl tunnel down " + vm->name + "' first");
  }
  auto t = tunnels_->up(*vm, tr);
  if (!t) {
    log::warning("tunnel for " + vm->name + " refused: " + t.error().describe());
    return proto::error_response("bad_request", t.error().describe());
  }
  recorder_->forget(vm->id);
  recorder_->audit(actor(who, peer), "tunnel-up", vm->name,
                   {{"remote", t->remote}, {"local", t->local}, {"key", t->key}, {"mtu", t->mtu}});
  return proto::ok_response(tunnel_json(*t, *vm));
}

nlohmann::json Daemon::op_tunnel_down(const proto::Request& req, const Peer& peer) {
  Caller who;
  nlohmann::json err;
  if (!identify(req, peer, false, who, err)) return err;
  auto vm = vm_for(req, who, err);
  if (!vm) return err;
  if (!tunnels_->has(vm->id)) return proto::error_response("not_found", vm->name + " has no tunnel");
  if (auto st = tunnels_->down(*vm, "requested by " + actor(who, peer)); !st) {
    return proto::error_response("unavailable", st.error().describe());
  }
  recorder_->forget(vm->id);
  recorder_->audit(actor(who, peer), "tunnel-down", vm->name, nlohmann::json::object());
  return proto::ok_response({{"vm", vm->name}, {"down", true}});
}

nlohmann::json Daemon::op_tunnel_status(const proto::Request& req, const Peer& peer) {
  Caller who;
  nlohmann::json err;
  if (!identify(req, peer, false, who, err)) return err;
  nlohmann::json list = nlohmann::json::array();
  if (req.args.contains("vm")) {
    auto vm = vm_for(req, who, err);
    if (!vm) return err;
    auto t = tunnels_->record_of(vm->id);
    if (!t)
      return proto::error_response("not_found",
                                   vm->name + " has no tunnel; 'surrogatectl tunnel up " + vm->name + "' makes one");
    list.push_back(tunnel_json(*t, *vm));
  } else {
    auto vms = store_.active();
    if (!vms) return proto::error_response("internal", vms.error().describe());
    for (const auto& t : tunnels_->records()) {
      for (const auto& v : *vms) {
        if (v.id != t.vm_id) continue;
        if (!who.admin && (!who.key || v.owner_fp != who.key->fingerprint())) continue;
        list.push_back(tunnel_json(t, v));
      }
    }
  }
  return proto::ok_response({{"endpoint", tunnels_->endpoint_text()}, {"tunnels", list}});
}

}  // namespace sg
