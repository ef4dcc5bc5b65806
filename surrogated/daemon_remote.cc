// The daemon's side of the HTTPS API, the owner's web page, /metrics and
// systemd notification. Everything here runs on the event loop; the HTTP
// threads reach it only through bridge_ (surrogated/loop_bridge.h).
#include <unistd.h>

#include "common/log.h"
#include "common/timeutil.h"
#include "surrogated/daemon.h"
#include "trust/classify.h"

namespace sg {

Status Daemon::start_remote() {
  if (!cfg_.api.listen.empty() || !cfg_.web.listen.empty()) {
    auto bridge = LoopBridge::create();
    if (!bridge) return bridge.error();
    bridge_ = std::move(*bridge);
    sources_.push_back(bridge_.get());
  }
  if (!cfg_.api.listen.empty()) {
    auto api = ApiServer::start(
        cfg_.api, *bridge_, [this](const proto::Request& r, const Peer& p) { return api_request(r, p); },
        metrics_.api_requests);
    if (!api) return api.error();
    api_ = std::move(*api);
  }
  if (!cfg_.web.listen.empty()) {
    WebUi::Hooks hooks{[this](const WebQuery& q) { return web_overview(q); },
                       [this](const WebAction& a) { return web_action(a); }, [this] { return metrics_text(); }};
    auto web = WebUi::start(cfg_.web, cfg_.admin_group, *bridge_, std::move(hooks));
    if (!web) return web.error();
    web_ = std::move(*web);
  }
  watchdog_ = sd::Watchdog::from_env();
  (void)sd::notify("READY=1\nSTATUS=serving " + cfg_.socket_path +
                   (api_ ? ", HTTPS API on " + cfg_.api.listen : std::string()) +
                   (web_ ? ", web page on " + cfg_.web.listen : std::string()));
  return {};
}

void Daemon::stop_remote() {
  (void)sd::notify("STOPPING=1");
  // Waiting workers must return before their servers are joined.
  if (bridge_) bridge_->close();
  if (api_) api_->stop();
  if (web_) web_->stop();
}

void Daemon::remote_tick() {
  if (watchdog_) watchdog_->tick(now_unix() * 1000);
}

nlohmann::json Daemon::api_request(const proto::Request& req, const Peer& peer) {
  if (req.op != "allocate" || !peer.tls_key_pem) return handle(req, peer);
  // Limits on what one API client, and each trust level, may hold at once.
  auto key = certs::PublicKey::from_pem(*peer.tls_key_pem);
  if (!key) return proto::error_response("unauthorized", key.error().message);
  auto active = store_.active();
  if (!active) return proto::error_response("internal", active.error().describe());
  auto cls = trust::classify(*policy_, trust::ClientIdentity{key->fingerprint(), peer.issuer_ca_fp, peer.remote});
  std::string level(trust::to_string(cls.level));
  int mine = 0;
  int same_level = 0;
  for (const auto& vm : *active) {
    if (vm.owner_fp == key->fingerprint()) ++mine;
    if (vm.trust_level == level) ++same_level;
  }
  const auto& a = cfg_.api;
  if (a.max_vms_per_client > 0 && mine >= a.max_vms_per_client) {
    return proto::error_response("too_many", "you hold " + std::to_string(mine) +
                                                 " VMs, the most one client may "
                                                 "hold through the API ([api] max_vms_per_client); release one first");
  }
  int level_cap = level == "trusted"        ? a.max_vms_trusted
                  : level == "semi-trusted" ? a.max_vms_semi_trusted
                                            : a.max_vms_untrusted;
  if (!cls.refused && level_cap > 0 && same_level >= level_cap) {
    return proto::error_response("too_many", "the host runs " + std::to_string(same_level) + " " + level +
                                                 " VMs, its limit for that level ([api] max_vms_" + level +
                                                 "); try again later");
  }
  return handle(req, peer);
}

nlohmann::json Daemon::web_action(const WebAction& a) {
  Peer admin;
  admin.admin = true;
  admin.via = "web";
  proto::Request r;
  r.op = a.op;
  if (a.op == "stop") {
    r.args = {{"vm", a.vm}};
  } else if (a.op == "block" || a.op == "unblock") {
    r.args = {{"prefix", a.prefix}, {"reason", a.reason}};
  } else {
    return proto::error_response("bad_request", "unknown action");
  }
  return handle(r, admin);
}

nlohmann::json Daemon::web_overview(const WebQuery& q) {
  constexpr std::int64_t kWindow = 600;  // "the last minutes" of traffic and drops
  std::int64_t now = now_unix();
  nlohmann::json out;
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  out["host"] = host;
  out["now"] = format_utc(now);
  out["window_s"] = kWindow;
  out["slots"] = vms_->pool().size();
  (void)recorder_->flows().flush();
  nlohmann::json vms = nlohmann::json::array();
  if (auto active = store_.active()) {
    out["vm_count"] = active->size();
    out["slots_free"] = vms_->pool().size() - static_cast<int>(active->size());
    TopQuery tq;
    tq.since_ms = (now - kWindow) * 1000;
    tq.limit = 100000;
    std::map<std::int64_t, TopRow> traffic;
    if (auto top = recorder_->flows().top(tq)) {
      for (const auto& row : *top) traffic[row.vm_id] = row;
    }
    for (const auto& vm : *active) {
      nlohmann::json v = vm_json(vm);
      v["age_s"] = now - vm.created;
      if (auto it = traffic.find(vm.id); it != traffic.end()) {
        v["bytes_out"] = it->second.bytes_out;
        v["bytes_in"] = it->second.bytes_in;
        v["flows"] = it->second.flows;
      }
      if (shaper_) {
        auto sh = shaper_->status_json(vm.name);
        if (sh.value("shaped", false)) {
          v["rate_out_bps"] = sh["egress_rate_bps"].value("total", std::uint64_t{0});
          v["rate_in_bps"] = sh["ingress_rate_bps"].value("total", std::uint64_t{0});
        }
      }
      DropQuery dq;
      dq.vm = vm.name;
      dq.since_ms = (now - kWindow) * 1000;
      dq.limit = 100000;
      nlohmann::json by_reason = nlohmann::json::object();
      if (auto drops = recorder_->flows().drops(dq)) {
        for (const auto& d : *drops) {
          std::int64_t n = d.kind == "summary" ? d.suppressed : 1;
          by_reason[d.reason] = by_reason.value(d.reason, std::int64_t{0}) + n;
        }
      }
      v["drops_by_reason"] = by_reason;
      vms.push_back(v);
    }
  }
  out["vms"] = vms;
  Peer admin;
  admin.admin = true;
  admin.via = "web";
  if (!q.lookup_to.empty()) {
    proto::Request r;
    r.op = "who-sent";
    r.args = {{"to", q.lookup_to}};
    if (!q.lookup_at.empty()) r.args["at"] = q.lookup_at;
    auto resp = handle(r, admin);
    nlohmann::json lookup = {{"to", q.lookup_to}, {"at", q.lookup_at}};
    if (resp.value("ok", false)) {
      lookup["vms"] = resp["result"]["vms"];
      lookup["since"] = resp["result"]["since"];
      lookup["until"] = resp["result"]["until"];
    } else {
      lookup["error"] = resp.value("error", "lookup failed");
    }
    out["lookup"] = lookup;
  }
  if (auto blocks = store_.blocks()) {
    nlohmann::json b = nlohmann::json::array();
    for (const auto& [prefix, reason] : *blocks) b.push_back({{"prefix", prefix}, {"reason", reason}});
    out["blocks"] = b;
  }
  if (auto audit = recorder_->audit().list((now - 7 * 86400) * 1000, 100000)) {
    nlohmann::json a = nlohmann::json::array();
    for (auto it = audit->rbegin(); it != audit->rend() && a.size() < 50; ++it) a.push_back(*it);
    out["audit"] = a;
  }
  return out;
}

std::string Daemon::metrics_text() {
  std::string out;
  std::map<std::string, int> by_level = {{"trusted", 0}, {"semi-trusted", 0}, {"untrusted", 0}};
  if (auto active = store_.active()) {
    for (const auto& vm : *active) ++by_level[vm.trust_level];
  }
  out += prom_header("surrogated_vms", "gauge", "Running VMs by trust level.");
  for (const auto& [level, n] : by_level) out += prom_line("surrogated_vms", {{"trust_level", level}}, n);
  out += prom_header("surrogated_vm_slots", "gauge", "VM slots in the address pool.");
  out += prom_line("surrogated_vm_slots", {}, vms_->pool().size());
  out += prom_header("surrogated_flows_logged_total", "counter", "Flows written to the flow log since start.");
  out += prom_line("surrogated_flows_logged_total", {}, static_cast<double>(recorder_->flows_logged()));
  out += prom_header("surrogated_drops_total", "counter", "Dropped packets seen through nflog, by reason.");
  for (const auto& [reason, n] : recorder_->drops_by_reason()) {
    out += prom_line("surrogated_drops_total", {{"reason", reason}}, static_cast<double>(n));
  }
  out += prom_header("surrogated_authcerts_total", "counter",
                     "Authcerts submitted since start: result accepted, or the reject reason.");
  for (const auto& [result, n] : metrics_.authcerts.snapshot()) {
    std::map<std::string, std::string> labels = {{"result", result == "accepted" ? "accepted" : "rejected"}};
    if (result != "accepted") labels["reason"] = result;
    out += prom_line("surrogated_authcerts_total", labels, static_cast<double>(n));
  }
  out += prom_header("surrogated_netlink_overruns_total", "counter",
                     "ENOBUFS on the conntrack and nflog sockets (events lost, recorded as gaps).");
  out += prom_line("surrogated_netlink_overruns_total", {}, static_cast<double>(recorder_->overruns()));
  out += prom_header("surrogated_nft_repairs_total", "counter", "Times the ruleset was reinstalled after tampering.");
  out += prom_line("surrogated_nft_repairs_total", {}, static_cast<double>(enforcer_->repairs()));
  out += prom_header("surrogated_flows_ended_total", "counter",
                     "Conntrack entries ended because a hole closed, a level changed, a tunnel went down or a VM "
                     "was released (their next packet meets the current rules).");
  out += prom_line("surrogated_flows_ended_total", {}, static_cast<double>(enforcer_->flows_ended()));
  out += enforcer_->apply_latency().render("surrogated_rule_apply_seconds",
                                           "Time to apply one nftables netlink transaction.");
  out += prom_header("surrogated_api_requests_total", "counter", "HTTPS API requests by HTTP status.");
  for (const auto& [status, n] : metrics_.api_requests.snapshot()) {
    out += prom_line("surrogated_api_requests_total", {{"status", status}}, static_cast<double>(n));
  }
  return out;
}

}  // namespace sg
