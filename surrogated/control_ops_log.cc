// Control operations for authcerts, the host's PKI, the flow log (the
// complaint lookup among them), the block list and the audit trail.
#include <algorithm>
#include <set>

#include "certs/identity.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "surrogated/daemon.h"
#include "trust/parse.h"

namespace sg {
namespace {

nlohmann::json bad(const std::string& m) { return proto::error_response("bad_request", m); }

std::string str_arg(const nlohmann::json& args, const char* key) {
  auto it = args.find(key);
  if (it == args.end() || it->is_null()) return "";
  return it->get<std::string>();
}

// "2026-11-26T14:02:00Z", unix seconds, or a duration back from now ("30m").
Result<std::int64_t> time_arg(const std::string& text, std::int64_t now) {
  if (auto t = parse_utc(text)) return *t;
  if (auto d = parse_duration(text)) return now - *d;
  return make_error("time '" + text + "' is not understood; write 2026-11-26T14:02:00Z, unix seconds, or 30m (ago)");
}

// Optional since/until arguments in unix milliseconds.
Result<std::pair<std::optional<std::int64_t>, std::optional<std::int64_t>>> window(const nlohmann::json& args,
                                                                                   std::int64_t now) {
  std::pair<std::optional<std::int64_t>, std::optional<std::int64_t>> w;
  for (const char* key : {"since", "until"}) {
    std::string v = str_arg(args, key);
    if (v.empty()) continue;
    auto t = time_arg(v, now);
    if (!t) return with_context(std::string("--") + key, t.error());
    (std::string(key) == "since" ? w.first : w.second) = *t * 1000;
  }
  return w;
}

Result<std::optional<Prefix>> prefix_arg(const nlohmann::json& args, const char* key) {
  std::string v = str_arg(args, key);
  if (v.empty()) return std::optional<Prefix>();
  auto p = Prefix::parse(v);
  if (!p) return with_context(std::string("--") + key, p.error());
  return std::optional<Prefix>(*p);
}

int limit_arg(const nlohmann::json& args, int def) {
  int l = args.value("limit", def);
  return std::clamp(l, 1, 100000);
}

}  // namespace

nlohmann::json Daemon::op_authcert_submit(const proto::Request& req, const Peer& peer) {
  Caller who;
  nlohmann::json err;
  if (!identify(req, peer, false, who, err)) return err;
  auto vm = vm_for(req, who, err);
  if (!vm) return err;
  std::string text = str_arg(req.args, "authcert");
  if (text.empty()) return bad("missing \"authcert\": the authcert file's content (PEM)");
  std::int64_t now = now_unix();
  auto r = authcerts_->submit(*vm, text, now);
  if (!r) {
    auto reason = certs::reject_reason_of(r.error());
    std::string why = reason ? std::string(certs::to_string(*reason)) : "error";
    log::warning("authcert for " + vm->name + " rejected: " + r.error().message);
    recorder_->audit(actor(who, peer), "authcert-rejected", vm->name, {{"reason", why}, {"detail", r.error().message}});
    metrics_.authcerts.add(why);
    return proto::error_response(reason ? "forbidden" : "unavailable", r.error().message);
  }
  recorder_->forget(vm->id);
  const auto& c = r->cert.content;
  nlohmann::json holes = nlohmann::json::array();
  for (const auto& h : r->holes) {
    holes.push_back({{"id", h.id},
                     {"protocol", h.protocol},
                     {"ports", std::to_string(h.port_first) + "-" + std::to_string(h.port_last)}});
  }
  nlohmann::json out = {{"id", c.id},
                        {"vm", vm->name},
                        {"destination", c.destination.to_string()},
                        {"protocols", certs::format_protocols(c.protocols)},
                        {"ports", certs::format_port_ranges(c.ports)},
                        {"signer", r->cert.signer_subject},
                        {"signer_fingerprint", r->cert.signer_fingerprint},
                        {"expires", format_utc(r->holes.front().expires)},
                        {"holes", holes}};
  log::notice("authcert " + c.id + " accepted for " + vm->name + ": " + c.destination.to_string() + " (" +
              certs::format_protocols(c.protocols) + " " + certs::format_port_ranges(c.ports) + ") until " +
              format_utc(r->holes.front().expires) + ", signed by " + r->cert.signer_subject);
  recorder_->audit(actor(who, peer), "authcert-accepted", vm->name, out);
  metrics_.authcerts.add("accepted");
  return proto::ok_response(out);
}

nlohmann::json Daemon::op_authcert_list(const proto::Request& req, const Peer& peer) {
  Caller who;
  nlohmann::json err;
  if (!identify(req, peer, false, who, err)) return err;
  std::int64_t vm_id = 0;
  std::set<std::int64_t> mine;
  if (req.args.contains("vm")) {
    auto vm = vm_for(req, who, err);
    if (!vm) return err;
    vm_id = vm->id;
  } else if (!who.admin) {
    auto vms = store_.active();
    if (!vms) return proto::error_response("internal", vms.error().describe());
    for (const auto& v : *vms) {
      if (v.owner_fp == who.key->fingerprint()) mine.insert(v.id);
    }
  }
  auto holes = store_.open_holes(now_unix(), vm_id);
  if (!holes) return proto::error_response("internal", holes.error().describe());
  std::map<std::string, nlohmann::json> by_id;
  for (const auto& h : *holes) {
    if (h.authcert_id.empty()) continue;
    if (!who.admin && vm_id == 0 && mine.count(h.vm_id) == 0) continue;
    auto& j = by_id[h.authcert_id];
    if (j.is_null()) {
      j = {{"id", h.authcert_id},
           {"vm", h.vm_name},
           {"destination", h.destination},
           {"expires", format_utc(h.expires)},
           {"holes", nlohmann::json::array()}};
    }
    j["holes"].push_back({{"id", h.id},
                          {"protocol", h.protocol},
                          {"ports", std::to_string(h.port_first) + "-" + std::to_string(h.port_last)}});
  }
  nlohmann::json out = nlohmann::json::array();
  for (auto& [id, j] : by_id) out.push_back(j);
  return proto::ok_response(out);
}

nlohmann::json Daemon::op_authcert_revoke(const proto::Request& req, const Peer& peer) {
  Caller who;
  nlohmann::json err;
  if (!identify(req, peer, false, who, err)) return err;
  std::string id = str_arg(req.args, "id");
  if (id.empty()) return bad("missing \"id\": the authcert id (see authcert list)");
  auto holes = store_.holes_of_authcert(id);
  if (!holes) return proto::error_response("internal", holes.error().describe());
  if (!who.admin) {
    // Only the owner of the VM the authcert was submitted for may revoke it.
    for (const auto& h : *holes) {
      auto vm = store_.find_by_id(h.vm_id);
      if (!vm || !vm->has_value() || (*vm)->owner_fp != who.key->fingerprint()) {
        return proto::error_response("not_found", "no authcert " + id + " of yours");
      }
    }
  }
  if (holes->empty() && !who.admin) return proto::error_response("not_found", "no authcert " + id + " of yours");
  auto closed = authcerts_->revoke(id, now_unix());
  if (!closed) return proto::error_response("unavailable", closed.error().describe());
  for (const auto& h : *closed) recorder_->forget(h.vm_id);
  recorder_->audit(actor(who, peer), "authcert-revoked", id, {{"holes_closed", closed->size()}});
  log::notice("authcert " + id + " revoked; " + std::to_string(closed->size()) + " hole(s) closed");
  return proto::ok_response({{"id", id}, {"revoked", true}, {"holes_closed", closed->size()}});
}

nlohmann::json Daemon::op_pki(const proto::Request& req, const Peer& peer) {
  std::string what = str_arg(req.args, "what");
  std::int64_t now = now_unix();
  if (what == "crl") {
    auto crl = authcerts_->crl_pem(now);
    if (!crl) return proto::error_response("internal", crl.error().describe());
    return proto::ok_response({{"pem", *crl}});
  }
  if (what == "ca") return proto::ok_response({{"pem", authcerts_->host_ca_pem()}});
  if (what == "anchors") {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& a : authcerts_->pki().anchors()) {
      out.push_back({{"subject", a.subject},
                     {"fingerprint", a.fingerprint},
                     {"not_after", format_utc(a.not_after)},
                     {"origin", a.origin}});
    }
    return proto::ok_response({{"anchors", out}, {"crls", authcerts_->pki().crl_count()}});
  }
  if (what == "vm-cert") {
    Caller who;
    nlohmann::json err;
    if (!identify(req, peer, false, who, err)) return err;
    auto vm = vm_for(req, who, err);
    if (!vm) return err;
    std::vector<IpAddress> addrs;
    for (const auto& a : {vm->ipv4, vm->ipv6}) {
      if (auto ip = IpAddress::parse(a); !a.empty() && ip) addrs.push_back(*ip);
    }
    std::optional<std::string> pub;
    if (std::string k = str_arg(req.args, "public_key"); !k.empty()) pub = k;
    auto issued = authcerts_->issue_vm_cert(*vm, addrs, pub, now);
    if (!issued) return proto::error_response("bad_request", issued.error().describe());
    recorder_->audit(actor(who, peer), "vm-cert-issued", vm->name,
                     {{"serial", issued->serial}, {"not_after", format_utc(issued->not_after)}});
    return proto::ok_response({{"cert", issued->cert_pem},
                               {"key", issued->key_pem},
                               {"serial", issued->serial},
                               {"not_after", format_utc(issued->not_after)},
                               {"ca", authcerts_->host_ca_pem()}});
  }
  return bad("unknown pki request '" + what + "'; use crl, ca, anchors or vm-cert");
}

nlohmann::json Daemon::op_flows(const proto::Request& req, const Peer& peer) {
  Caller who;
  nlohmann::json err;
  if (!identify(req, peer, false, who, err)) return err;
  FlowQuery q;
  if (auto v = str_arg(req.args, "vm"); !v.empty()) q.vm = v;
  if (auto c = str_arg(req.args, "client"); !c.empty()) q.client_fp = c;
  // A client sees only its own VMs' flows.
  if (!who.admin || (who.key && req.args.value("mine", false))) q.client_fp = who.key->fingerprint();
  auto to = prefix_arg(req.args, "to");
  if (!to) return bad(to.error().message);
  q.to = *to;
  if (req.args.contains("port")) q.port = req.args["port"].get<int>();
  auto w = window(req.args, now_unix());
  if (!w) return bad(w.error().message);
  q.since_ms = w->first;
  q.until_ms = w->second;
  q.limit = limit_arg(req.args, 1000);
  (void)recorder_->flows().flush();  // what happened a moment ago is visible now
  auto rows = recorder_->flows().flows(q);
  if (!rows) return proto::error_response("internal", rows.error().describe());
  return proto::ok_response(nlohmann::json(*rows));
}

nlohmann::json Daemon::op_who_sent(const proto::Request& req, const Peer& peer) {
  if (!peer.admin)
    return proto::error_response(
        "forbidden", "the complaint lookup is for the host owner (root or group '" + cfg_.admin_group + "')");
  auto to = prefix_arg(req.args, "to");
  if (!to) return bad(to.error().message);
  if (!*to) return bad("missing the address a complaint names, e.g. who-sent 203.0.113.7");
  std::int64_t now = now_unix();
  std::int64_t since = 0, until = now * 1000 + 60000;
  if (std::string at = str_arg(req.args, "at"); !at.empty()) {
    auto t = time_arg(at, now);
    if (!t) return bad("--at: " + t.error().message);
    std::int64_t slack = req.args.value("slack_s", 300);
    since = (*t - slack) * 1000;
    until = (*t + slack) * 1000;
  } else {
    auto w = window(req.args, now);
    if (!w) return bad(w.error().message);
    if (w->first) since = *w->first;
    if (w->second) until = *w->second;
  }
  (void)recorder_->flows().flush();
  auto rows = recorder_->flows().who_sent(**to, since, until, limit_arg(req.args, 1000));
  if (!rows) return proto::error_response("internal", rows.error().describe());
  // One entry per VM: who it belonged to, how to reach them, what it sent.
  std::map<std::string, nlohmann::json> vms;
  for (const auto& f : *rows) {
    auto& v = vms[f.vm_name];
    if (v.is_null()) {
      v = {{"vm", f.vm_name},
           {"vm_id", f.vm_id},
           {"client", f.client_fp},
           {"contact", f.client_contact},
           {"trust_level", f.trust_level},
           {"authcerts", nlohmann::json::array()},
           {"flows", 0},
           {"bytes_out", 0},
           {"bytes_in", 0}};
      auto rec = store_.find_by_id(f.vm_id);
      if (rec && rec->has_value()) {
        v["title"] = (*rec)->title;
        v["state"] = (*rec)->state;
      }
    }
    v["flows"] = v["flows"].get<std::int64_t>() + 1;
    v["bytes_out"] = v["bytes_out"].get<std::int64_t>() + f.orig_bytes;
    v["bytes_in"] = v["bytes_in"].get<std::int64_t>() + f.reply_bytes;
    if (f.authcert_id &&
        std::find(v["authcerts"].begin(), v["authcerts"].end(), *f.authcert_id) == v["authcerts"].end()) {
      v["authcerts"].push_back(*f.authcert_id);
    }
  }
  nlohmann::json summary = nlohmann::json::array();
  for (auto& [name, v] : vms) summary.push_back(v);
  recorder_->audit(actor(Caller{}, peer), "who-sent", (*to)->to_string(),
                   {{"since", format_utc(since / 1000)}, {"until", format_utc(until / 1000)}, {"vms", vms.size()}});
  return proto::ok_response({{"to", (*to)->to_string()},
                             {"since", format_utc(since / 1000)},
                             {"until", format_utc(until / 1000)},
                             {"vms", summary},
                             {"flows", nlohmann::json(*rows)}});
}

nlohmann::json Daemon::op_drops(const proto::Request& req, const Peer& peer) {
  Caller who;
  nlohmann::json err;
  if (!identify(req, peer, false, who, err)) return err;
  DropQuery q;
  if (auto v = str_arg(req.args, "vm"); !v.empty()) q.vm = v;
  if (!who.admin) {
    // A client sees the drops of its own VMs: name one.
    if (!q.vm) return proto::error_response("forbidden", "name one of your VMs (--vm)");
    auto vm = vm_for(req, who, err);
    if (!vm) return err;
  }
  if (auto r = str_arg(req.args, "reason"); !r.empty()) q.reason = r;
  auto to = prefix_arg(req.args, "to");
  if (!to) return bad(to.error().message);
  q.to = *to;
  auto w = window(req.args, now_unix());
  if (!w) return bad(w.error().message);
  q.since_ms = w->first;
  q.until_ms = w->second;
  q.limit = limit_arg(req.args, 1000);
  (void)recorder_->flows().flush();
  auto rows = recorder_->flows().drops(q);
  if (!rows) return proto::error_response("internal", rows.error().describe());
  return proto::ok_response(nlohmann::json(*rows));
}

nlohmann::json Daemon::op_top(const proto::Request& req, const Peer& peer) {
  if (!peer.admin) return proto::error_response("forbidden", "top is for the host owner");
  TopQuery q;
  std::string by = str_arg(req.args, "by");
  if (by == "flows") {
    q.by = TopBy::flows;
  } else if (!by.empty() && by != "bytes") {
    return bad("--by must be bytes or flows");
  }
  auto w = window(req.args, now_unix());
  if (!w) return bad(w.error().message);
  q.since_ms = w->first;
  q.until_ms = w->second;
  q.limit = limit_arg(req.args, 20);
  (void)recorder_->flows().flush();
  auto rows = recorder_->flows().top(q);
  if (!rows) return proto::error_response("internal", rows.error().describe());
  return proto::ok_response(nlohmann::json(*rows));
}

nlohmann::json Daemon::op_block(const proto::Request& req, const Peer& peer, bool block) {
  if (!peer.admin) return proto::error_response("forbidden", "only the host owner blocks destinations");
  auto p = prefix_arg(req.args, "prefix");
  if (!p) return bad(p.error().message);
  if (!*p) return bad("missing the prefix to block, e.g. block 203.0.113.0/24 --reason 'complaint #12'");
  std::string reason = str_arg(req.args, "reason");
  if (block && reason.empty()) return bad("--reason is required: say why (e.g. the complaint's reference)");
  std::int64_t now = now_unix();
  std::string prefix = (*p)->to_string();
  if (block) {
    if (auto st = store_.add_block(prefix, reason, now); !st)
      return proto::error_response("internal", st.error().describe());
  } else {
    auto removed = store_.remove_block(prefix, now);
    if (!removed) return proto::error_response("internal", removed.error().describe());
    if (!*removed) return proto::error_response("not_found", prefix + " is not on the runtime block list");
  }
  auto file_policy = trust::load_policy_file(cfg_.trust_policy);
  // The running policy stays the base when the file has since been broken.
  trust::Policy base = *policy_;
  if (file_policy) base = *file_policy;
  auto effective = with_blocks(base);
  if (!effective) return proto::error_response("internal", effective.error().describe());
  if (auto st = enforcer_->update_block_list(*effective); !st) {
    if (block) (void)store_.remove_block(prefix, now);
    return proto::error_response("unavailable", "the kernel refused the block list: " + st.error().describe());
  }
  if (file_policy) policy_ = *effective;
  recorder_->audit(actor(Caller{}, peer), block ? "block" : "unblock", prefix, {{"reason", reason}});
  log::notice(std::string(block ? "blocked " : "unblocked ") + prefix + (reason.empty() ? "" : " (" + reason + ")"));
  return proto::ok_response({{"prefix", prefix}, {"blocked", block}, {"reason", reason}});
}

nlohmann::json Daemon::op_blocks(const proto::Request& /*req*/, const Peer& peer) {
  if (!peer.admin) return proto::error_response("forbidden", "the block list is for the host owner");
  auto b = store_.blocks();
  if (!b) return proto::error_response("internal", b.error().describe());
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [prefix, reason] : *b)
    out.push_back({{"prefix", prefix}, {"reason", reason}, {"origin", "runtime"}});
  return proto::ok_response(out);
}

nlohmann::json Daemon::op_audit(const proto::Request& req, const Peer& peer) {
  if (!peer.admin) return proto::error_response("forbidden", "the audit trail is for the host owner");
  if (str_arg(req.args, "what") == "verify") {
    auto r = recorder_->audit().verify();
    if (!r) return proto::error_response("internal", r.error().describe());
    return proto::ok_response(nlohmann::json(*r));
  }
  auto w = window(req.args, now_unix());
  if (!w) return bad(w.error().message);
  auto rows = recorder_->audit().list(w->first.value_or(0), limit_arg(req.args, 1000));
  if (!rows) return proto::error_response("internal", rows.error().describe());
  return proto::ok_response(nlohmann::json(*rows));
}

}  // namespace sg
