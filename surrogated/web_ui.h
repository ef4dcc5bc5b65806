// The host owner's web page (docs/web.md): every VM with its client, trust
// level, lifetime, traffic and drops; a Stop button per VM; the complaint
// lookup and a Block button; the audit trail; and /metrics for Prometheus.
// Plain server-rendered HTML with forms (POST, then redirect), no scripts.
//
// Who may use it: the listener is on loopback, and every page but /metrics
// needs a session cookie obtained by pasting the token from `token_file`
// (mode 0640, root and the admin group) into the login form, the same people
// the control socket treats as admins. Forms carry a per-process CSRF token.
#pragma once

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "common/result.h"
#include "surrogated/config.h"
#include "surrogated/loop_bridge.h"

namespace sg {

// The complaint lookup's form: an address and, optionally, when.
struct WebQuery {
  std::string lookup_to;
  std::string lookup_at;
};

// A button: "stop" (vm), "block" (prefix, reason) or "unblock" (prefix).
struct WebAction {
  std::string op;
  std::string vm;
  std::string prefix;
  std::string reason;
};

class WebUi {
 public:
  // Each runs on the event loop (through the bridge).
  struct Hooks {
    std::function<nlohmann::json(const WebQuery&)> overview;
    std::function<nlohmann::json(const WebAction&)> action;  // a control-protocol response
    std::function<std::string()> metrics;
  };

  static Result<std::unique_ptr<WebUi>> start(const WebConfig& cfg, const std::string& admin_group, LoopBridge& bridge,
                                              Hooks hooks);
  ~WebUi();
  WebUi(const WebUi&) = delete;
  WebUi& operator=(const WebUi&) = delete;
  void stop();

  struct Impl;

 private:
  explicit WebUi(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

std::string html_escape(std::string_view text);
// The page for one overview (see Daemon::web_overview); pure, for tests.
std::string render_overview(const nlohmann::json& overview, const std::string& csrf, const std::string& message);

}  // namespace sg
