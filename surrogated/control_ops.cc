// The control operations: one function per request "op". Each checks who
// asks, validates its arguments and answers with a result or an error that
// says what to do.
#include <netinet/in.h>

#include <algorithm>

#include "common/log.h"
#include "common/timeutil.h"
#include "surrogated/daemon.h"
#include "surrogated/version.h"
#include "trust/classify.h"
#include "trust/explain.h"
#include "trust/render.h"

namespace sg {

namespace {

std::string arg_string(const nlohmann::json& args, const char* key) {
  auto it = args.find(key);
  if (it == args.end() || it->is_null()) return "";
  return it->get<std::string>();  // throws on a wrong type: reported as bad_request
}

nlohmann::json bad(const std::string& m) { return proto::error_response("bad_request", m); }

}  // namespace

nlohmann::json Daemon::handle(const proto::Request& req, const Peer& peer) {
  try {
    if (req.op == "status") return op_status();
    if (req.op == "allocate") return op_allocate(req, peer);
    if (req.op == "release" || req.op == "stop") return op_release(req, peer);
    if (req.op == "list") return op_list(req, peer);
    if (req.op == "show") return op_show(req, peer);
    if (req.op == "policy-reload") return op_policy_reload(req, peer);
    if (req.op == "policy-show") return op_policy_show(req, peer);
    if (req.op == "policy-explain") return op_policy_explain(req, peer);
    if (req.op == "rules-show") return op_rules_show(req, peer);
    if (req.op == "hole-add") return op_hole_add(req, peer);
    if (req.op == "hole-remove") return op_hole_remove(req, peer);
    if (req.op == "hole-list") return op_hole_list(req, peer);
    if (req.op == "authcert-submit") return op_authcert_submit(req, peer);
    if (req.op == "authcert-list") return op_authcert_list(req, peer);
    if (req.op == "authcert-revoke") return op_authcert_revoke(req, peer);
    if (req.op == "pki") return op_pki(req, peer);
    if (req.op == "flows") return op_flows(req, peer);
    if (req.op == "who-sent") return op_who_sent(req, peer);
    if (req.op == "drops") return op_drops(req, peer);
    if (req.op == "top") return op_top(req, peer);
    if (req.op == "block") return op_block(req, peer, true);
    if (req.op == "unblock") return op_block(req, peer, false);
    if (req.op == "blocks") return op_blocks(req, peer);
    if (req.op == "audit") return op_audit(req, peer);
    if (req.op == "tunnel-up") return op_tunnel_up(req, peer);
    if (req.op == "tunnel-down") return op_tunnel_down(req, peer);
    if (req.op == "tunnel-status") return op_tunnel_status(req, peer);
    return bad("unknown operation '" + req.op +
               "'; known: status, allocate, release, stop, list, show, policy-reload, policy-show, policy-explain, "
               "rules-show, hole-add, hole-remove, hole-list, authcert-submit, authcert-list, authcert-revoke, pki, "
               "flows, who-sent, drops, top, block, unblock, blocks, audit, tunnel-up, tunnel-down, tunnel-status");
  } catch (const nlohmann::json::exception& e) {
    // A field of the wrong type inside args.
    return bad(std::string("malformed arguments: ") + e.what());
  }
}

bool Daemon::identify(const proto::Request& req, const Peer& peer, bool need_key, Caller& who, nlohmann::json& err) {
  who.admin = peer.admin;
  if (peer.tls_key_pem) {
    // HTTPS API: the TLS handshake proved possession of the certificate's key.
    auto key = certs::PublicKey::from_pem(*peer.tls_key_pem);
    if (!key) {
      err = proto::error_response("unauthorized", "client certificate key: " + key.error().message);
      return false;
    }
    who.key = *key;
  } else if (req.key_pem) {
    auto key = proto::verify_request(req, now_unix(), replay_);
    if (!key) {
      err = proto::error_response("unauthorized", key.error().message);
      return false;
    }
    who.key = *key;
  }
  if (need_key && !who.key) {
    err = proto::error_response("unauthorized", "this operation needs a signed request; pass --key FILE");
    return false;
  }
  if (!who.key && !who.admin) {
    err = proto::error_response("unauthorized",
                                "sign the request with your key (--key FILE), or run as root or a "
                                "member of group '" +
                                    cfg_.admin_group + "'");
    return false;
  }
  return true;
}

std::optional<VmRecord> Daemon::vm_for(const proto::Request& req, const Caller& who, nlohmann::json& err) {
  std::string name = arg_string(req.args, "vm");
  if (name.empty()) {
    err = bad("missing \"vm\": name the VM, e.g. sg12");
    return std::nullopt;
  }
  auto vm = store_.find_active(name);
  if (!vm) {
    err = proto::error_response("internal", vm.error().describe());
    return std::nullopt;
  }
  bool mine = vm->has_value() && who.key && (*vm)->owner_fp == who.key->fingerprint();
  if (!vm->has_value() || (!mine && !who.admin)) {
    // Someone else's VM is reported like an unknown one: no probing of names.
    err =
        proto::error_response("not_found", "no VM named '" + name + "' that you own; 'surrogatectl list' shows yours");
    return std::nullopt;
  }
  return **vm;
}

std::string Daemon::actor(const Caller& who, const Peer& peer) {
  if (who.key) return "client " + who.key->fingerprint();
  if (peer.via == "web") return "web (admin)";
  return "uid " + std::to_string(peer.uid);
}

nlohmann::json Daemon::vm_json(const VmRecord& vm) const {
  std::int64_t now = now_unix();
  VmAddresses a = vms_->addresses_of(vm);
  return {{"name", vm.name},
          {"id", vm.id},
          {"domain", vm.domain},
          {"owner", vm.owner_fp},
          {"template", vm.template_name},
          {"ipv4", vm.ipv4},
          {"ipv6", vm.ipv6},
          {"gateway_ipv4", a.v4_gateway ? a.v4_gateway->to_string() : ""},
          {"gateway_ipv6", a.v6_gateway ? a.v6_gateway->to_string() : ""},
          {"mac", vm.mac},
          {"tap", vm.name},
          {"client", vm.client_addrs},
          {"state", vm.state},
          {"trust_level", vm.trust_level},
          {"policy_version", vm.policy_version},
          {"created", format_utc(vm.created)},
          {"expires", format_utc(vm.expires)},
          {"remaining_s", std::max<std::int64_t>(0, vm.expires - now)},
          {"contact", vm.contact},
          {"title", vm.title}};
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
                             {"policy_version", policy_->version},
                             {"nft_table", cfg_.nft_table},
                             {"nft_repairs", enforcer_->repairs()},
                             {"tunnel_endpoint", tunnels_->endpoint_text()},
                             {"tunnels", tunnels_->records().size()},
                             {"simulated_guests", cfg_.simulate_guest_network},
                             {"guest_netns_prefix", cfg_.simulate_guest_network ? cfg_.guest_netns_prefix : ""}});
}

nlohmann::json Daemon::op_allocate(const proto::Request& req, const Peer& peer) {
  Caller who;
  nlohmann::json err;
  if (!identify(req, peer, true, who, err)) return err;
  AllocateRequest a;
  a.owner_fp = who.key->fingerprint();
  a.owner_key_pem = who.key->pem();
  a.template_name = arg_string(req.args, "template");
  if (std::string l = arg_string(req.args, "lifetime"); !l.empty()) {
    auto d = parse_duration(l);
    if (!d) return bad(d.error().message);
    a.lifetime_s = *d;
  }
  a.contact = arg_string(req.args, "contact");
  a.title = arg_string(req.args, "title");
  if (a.contact.size() > 256 || a.title.size() > 256) return bad("contact and title must be at most 256 characters");
  // The client's own machine: always reachable from its VMs.
  std::string client = arg_string(req.args, "client");
  std::string normalized;
  if (!client.empty()) {
    std::stringstream ss(client);
    std::string item;
    int count = 0;
    while (std::getline(ss, item, ',')) {
      auto p = Prefix::parse(item);
      if (!p) return bad("client address: " + p.error().message);
      if (p->length < (p->family() == Family::v4 ? 24 : 56)) {
        return bad("client address " + p->to_string() +
                   " is too wide; give your machine's address (at most a /24 "
                   "or an IPv6 /56)");
      }
      if (++count > 4) return bad("at most 4 client addresses");
      normalized += (normalized.empty() ? "" : ",") + p->to_string();
    }
  }
  auto cls = trust::classify(*policy_, trust::ClientIdentity{a.owner_fp, peer.issuer_ca_fp, peer.remote});
  if (cls.refused) {
    log::warning("allocation refused for " + a.owner_fp + ": " + cls.reason);
    return proto::error_response("forbidden",
                                 "this host accepts only clients listed by its owner; ask the owner to "
                                 "add your key " +
                                     a.owner_fp);
  }
  Classification c;
  c.level = std::string(trust::to_string(cls.level));
  c.policy_version = policy_->version;
  c.rule = cls.reason;
  a.client_addrs = normalized;
  auto vm = vms_->allocate(a, c);
  if (!vm) {
    const std::string& m = vm.error().message;
    std::string code = m.find("exhausted") != std::string::npos ? "exhausted" : "unavailable";
    if (m.find("not allowed") != std::string::npos || m.find("unknown template") != std::string::npos) {
      code = "bad_request";
    }
    log::warning("allocation for " + a.owner_fp + " (pid " + std::to_string(peer.pid) +
                 ") failed: " + vm.error().describe());
    return proto::error_response(code, m);
  }
  log::info(vm->name + " classified " + vm->trust_level + " by " + cls.reason);
  // --tunnel: all or nothing; a VM whose tunnel cannot be built is released.
  if (req.args.value("tunnel", false)) {
    auto t = tunnels_->up(*vm, TunnelRequest{});
    if (!t) {
      (void)vms_->release(*vm, "its tunnel could not be built");
      return proto::error_response("bad_request", "allocation undone: " + t.error().describe());
    }
    recorder_->audit(actor(who, peer), "tunnel-up", vm->name, {{"remote", t->remote}, {"key", t->key}});
  }
  recorder_->audit(actor(who, peer), "allocate", vm->name,
                   {{"owner", vm->owner_fp},
                    {"trust_level", vm->trust_level},
                    {"rule", cls.reason},
                    {"ipv4", vm->ipv4},
                    {"ipv6", vm->ipv6},
                    {"contact", vm->contact},
                    {"title", vm->title},
                    {"expires", format_utc(vm->expires)}});
  return proto::ok_response(vm_json(*vm));
}

nlohmann::json Daemon::op_release(const proto::Request& req, const Peer& peer) {
  Caller who;
  nlohmann::json err;
  if (!identify(req, peer, false, who, err)) return err;
  auto vm = vm_for(req, who, err);
  if (!vm) return err;
  bool by_owner = who.key && who.key->fingerprint() == vm->owner_fp;
  std::string reason = by_owner ? "released by owner" : "released by admin (uid " + std::to_string(peer.uid) + ")";
  // "stop": the owner's Stop button (web page): admin only, audited as such.
  bool stop = req.op == "stop";
  if (stop && !who.admin) return proto::error_response("forbidden", "only the host owner stops VMs");
  if (stop) reason = "stopped by the host owner" + std::string(peer.via == "web" ? " (web page)" : "");
  if (auto st = vms_->release(*vm, reason); !st) return proto::error_response("unavailable", st.error().describe());
  recorder_->forget(vm->id);
  recorder_->audit(actor(who, peer), stop ? "stop" : "release", vm->name,
                   {{"owner", vm->owner_fp}, {"reason", reason}});
  return proto::ok_response({{"name", vm->name}, {"released", true}, {"reason", reason}});
}

nlohmann::json Daemon::op_show(const proto::Request& req, const Peer& peer) {
  Caller who;
  nlohmann::json err;
  if (!identify(req, peer, false, who, err)) return err;
  auto vm = vm_for(req, who, err);
  if (!vm) return err;
  nlohmann::json out = vm_json(*vm);
  if (shaper_) out["shaping"] = shaper_->status_json(vm->name);
  return proto::ok_response(out);
}

nlohmann::json Daemon::op_list(const proto::Request& req, const Peer& peer) {
  Caller who;
  nlohmann::json err;
  if (!identify(req, peer, false, who, err)) return err;
  std::optional<std::string> only;
  if (who.key && (!who.admin || req.args.value("mine", false))) only = who.key->fingerprint();
  auto vms = store_.active();
  if (!vms) return proto::error_response("internal", vms.error().describe());
  nlohmann::json out = nlohmann::json::array();
  for (const auto& v : *vms) {
    if (only && v.owner_fp != *only) continue;
    out.push_back(vm_json(v));
  }
  return proto::ok_response(out);
}

nlohmann::json Daemon::op_policy_reload(const proto::Request& /*req*/, const Peer& peer) {
  if (!peer.admin)
    return proto::error_response("forbidden", "only root or group '" + cfg_.admin_group + "' may reload");
  const std::string why = "requested by uid " + std::to_string(peer.uid);
  if (auto st = reload_policy(why); !st) {
    (void)reload_pki(why);  // the CRLs are independent of the policy file
    return proto::error_response("bad_request", st.error().describe());
  }
  auto closed = reload_pki(why);
  if (!closed) {
    return proto::error_response("bad_request", "the policy was reloaded (version " + policy_->version.substr(0, 19) +
                                                    "), but " + closed.error().describe());
  }
  nlohmann::json gone = nlohmann::json::array();
  for (const auto& c : *closed) gone.push_back({{"id", c.id}, {"vm", c.vm}, {"reason", c.reason}, {"holes", c.holes}});
  return proto::ok_response({{"version", policy_->version}, {"file", cfg_.trust_policy}, {"authcerts_closed", gone}});
}

nlohmann::json Daemon::op_policy_show(const proto::Request& req, const Peer& peer) {
  Caller who;
  nlohmann::json err;
  if (!identify(req, peer, false, who, err)) return err;
  return proto::ok_response({{"policy", trust::to_json(*policy_)}, {"text", trust::to_text(*policy_)}});
}

nlohmann::json Daemon::op_policy_explain(const proto::Request& req, const Peer& peer) {
  Caller who;
  nlohmann::json err;
  if (!identify(req, peer, false, who, err)) return err;
  auto to = arg_string(req.args, "to");
  auto dest = IpAddress::parse(to);
  if (!dest) return bad("--to: " + dest.error().message);
  trust::ExplainQuery q;
  q.destination = *dest;
  if (auto p = arg_string(req.args, "proto"); !p.empty()) {
    auto proto = trust::parse_protocol(p);
    if (!proto) return bad("unknown protocol '" + p + "'; use tcp, udp or icmp");
    q.protocol = *proto;
  }
  if (req.args.contains("port")) {
    int port = req.args["port"].get<int>();
    if (port < 1 || port > 65535) return bad("port must be 1 to 65535");
    q.port = static_cast<std::uint16_t>(port);
  }
  q.syn_only = req.args.value("syn_only", false);
  trust::ExplainContext ctx;
  trust::Explanation ex;
  if (req.args.contains("vm")) {
    auto vm = vm_for(req, who, err);
    if (!vm) return err;
    VmAddresses a = vms_->addresses_of(*vm);
    ctx.vm_address = dest->family == Family::v4 ? a.v4_guest : a.v6_guest;
    ctx.gateway = dest->family == Family::v4 ? a.v4_gateway : a.v6_gateway;
    auto net = Enforcer::vm_net(*vm, a);
    for (const auto& c : net.client) {
      if (c.contains(*dest)) ctx.client_address = *dest;
    }
    auto holes = store_.open_holes(now_unix(), vm->id);
    if (holes) {
      for (const auto& h : *holes) {
        auto p = Prefix::parse(h.destination);
        if (!p) continue;
        ctx.authorized.push_back(trust::Destination{
            *p, {trust::PortRange{static_cast<std::uint16_t>(h.port_first), static_cast<std::uint16_t>(h.port_last)}}});
      }
    }
    auto level = trust::parse_trust_level(vm->trust_level).value_or(trust::TrustLevel::untrusted);
    ex = trust::explain(*policy_, level, q, ctx);
  } else {
    std::string fp = arg_string(req.args, "client");
    if (fp.empty() && who.key) fp = who.key->fingerprint();
    if (fp.empty()) return bad("name a client (--client FINGERPRINT or KEYFILE) or a VM (--vm NAME)");
    if (!who.admin && (!who.key || who.key->fingerprint() != fp)) {
      return proto::error_response("forbidden", "you may explain the policy for your own key only");
    }
    ex = trust::explain(*policy_, trust::ClientIdentity{fp, std::nullopt, std::nullopt}, q, ctx);
  }
  return proto::ok_response({{"explanation", trust::to_json(ex)}, {"text", trust::to_text(ex)}});
}

nlohmann::json Daemon::op_rules_show(const proto::Request& req, const Peer& peer) {
  Caller who;
  nlohmann::json err;
  if (!identify(req, peer, false, who, err)) return err;
  std::string name;
  if (req.args.contains("vm")) {
    auto vm = vm_for(req, who, err);
    if (!vm) return err;
    name = vm->name;
  } else if (!who.admin) {
    return proto::error_response("forbidden", "only the admin sees the whole ruleset; name one of your VMs");
  }
  auto text = enforcer_->rules_text(name);
  if (!text) return proto::error_response("not_found", text.error().message);
  if (shaper_) *text += "\n# tc classes (traffic shaping)\n" + shaper_->classes_text(name);
  return proto::ok_response({{"text", *text}});
}

nlohmann::json Daemon::op_hole_add(const proto::Request& req, const Peer& peer) {
  if (!peer.admin) {
    return proto::error_response("forbidden", "only the admin opens holes by hand; clients submit an authcert");
  }
  Caller who;
  who.admin = true;
  nlohmann::json err;
  auto vm = vm_for(req, who, err);
  if (!vm) return err;
  std::string to = arg_string(req.args, "to");
  // "PREFIX" or "PREFIX:PORTS" (IPv6 in brackets: "[2001:db8::/48]:443").
  trust::Destination dest;
  if (to.find(':') == std::string::npos || (to.front() == '[' && to.back() == ']') ||
      (to.find('[') == std::string::npos && std::count(to.begin(), to.end(), ':') > 1)) {
    std::string p = to;
    if (!p.empty() && p.front() == '[') p = p.substr(1, p.size() - 2);
    auto prefix = Prefix::parse(p);
    if (!prefix) return bad("--to: " + prefix.error().message);
    dest.prefix = *prefix;
    dest.ports = {trust::PortRange{}};
  } else {
    auto d = trust::Destination::parse(to);
    if (!d) return bad("--to: " + d.error().message);
    dest = *d;
  }
  int proto = 0;
  if (auto p = arg_string(req.args, "proto"); !p.empty() && p != "any") {
    if (p == "tcp") {
      proto = IPPROTO_TCP;
    } else if (p == "udp") {
      proto = IPPROTO_UDP;
    } else if (p == "icmp") {
      proto = dest.prefix.family() == Family::v4 ? int{IPPROTO_ICMP} : int{IPPROTO_ICMPV6};
    } else {
      return bad("unknown protocol '" + p + "'; use tcp, udp, icmp or any");
    }
  }
  std::int64_t lifetime = 3600;
  if (auto f = arg_string(req.args, "for"); !f.empty()) {
    auto d = parse_duration(f);
    if (!d || *d <= 0) return bad("--for: " + (d ? std::string("must be longer than zero") : d.error().message));
    lifetime = *d;
  }
  std::int64_t now = now_unix();
  HoleRecord h;
  h.vm_id = vm->id;
  h.vm_name = vm->name;
  h.destination = dest.prefix.to_string();
  h.protocol = proto;
  h.port_first = dest.ports.empty() ? 1 : dest.ports.front().first;
  h.port_last = dest.ports.empty() ? 65535 : dest.ports.front().last;
  h.expires = std::min(now + lifetime, vm->expires);
  h.origin = "admin";
  h.created = now;
  if (auto st = store_.insert_hole(h); !st) return proto::error_response("internal", st.error().describe());
  if (auto st = enforcer_->add_hole(*vm, h); !st) {
    (void)store_.remove_hole(h.id, now, "kernel refused: " + st.error().message);
    return proto::error_response("unavailable", st.error().describe());
  }
  recorder_->forget(vm->id);
  recorder_->audit(actor(who, peer), "hole-add", vm->name,
                   {{"id", h.id}, {"to", to}, {"protocol", h.protocol}, {"expires", format_utc(h.expires)}});
  log::notice("hole " + std::to_string(h.id) + " opened by admin (uid " + std::to_string(peer.uid) + ") for " +
              vm->name + " to " + to + " until " + format_utc(h.expires));
  return proto::ok_response({{"id", h.id}, {"vm", vm->name}, {"to", to}, {"expires", format_utc(h.expires)}});
}

nlohmann::json Daemon::op_hole_remove(const proto::Request& req, const Peer& peer) {
  if (!peer.admin) return proto::error_response("forbidden", "only the admin removes holes by hand");
  std::int64_t id = req.args.value("id", std::int64_t{0});
  auto holes = store_.open_holes(now_unix());
  if (!holes) return proto::error_response("internal", holes.error().describe());
  auto it = std::find_if(holes->begin(), holes->end(), [&](const HoleRecord& h) { return h.id == id; });
  if (it == holes->end()) return proto::error_response("not_found", "no open hole " + std::to_string(id));
  auto vm = store_.find_active(it->vm_name);
  const VmRecord* active = vm && vm->has_value() ? &**vm : nullptr;
  if (auto st = enforcer_->close_hole(active, *it, now_unix(), "removed by admin"); !st) {
    return proto::error_response("unavailable", st.error().describe());
  }
  recorder_->forget(it->vm_id);
  recorder_->audit("uid " + std::to_string(peer.uid), "hole-remove", it->vm_name, {{"id", id}});
  log::notice("hole " + std::to_string(id) + " of " + it->vm_name + " removed by admin");
  return proto::ok_response({{"id", id}, {"removed", true}});
}

nlohmann::json Daemon::op_hole_list(const proto::Request& req, const Peer& peer) {
  Caller who;
  nlohmann::json err;
  if (!identify(req, peer, false, who, err)) return err;
  std::int64_t vm_id = 0;
  if (req.args.contains("vm")) {
    auto vm = vm_for(req, who, err);
    if (!vm) return err;
    vm_id = vm->id;
  } else if (!who.admin) {
    return proto::error_response("forbidden", "name one of your VMs");
  }
  auto holes = store_.open_holes(now_unix(), vm_id);
  if (!holes) return proto::error_response("internal", holes.error().describe());
  nlohmann::json out = nlohmann::json::array();
  for (const auto& h : *holes) {
    out.push_back({{"id", h.id},
                   {"vm", h.vm_name},
                   {"to", h.destination},
                   {"protocol", h.protocol},
                   {"ports", std::to_string(h.port_first) + "-" + std::to_string(h.port_last)},
                   {"expires", format_utc(h.expires)},
                   {"origin", h.origin},
                   {"authcert", h.authcert_id}});
  }
  return proto::ok_response(out);
}

}  // namespace sg
