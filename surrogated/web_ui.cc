#include "surrogated/web_ui.h"

#include <fcntl.h>
#include <grp.h>
#include <httplib.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <thread>

#include "common/log.h"
#include "common/raii/fd.h"
#include "common/timeutil.h"

namespace sg {

std::string html_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

namespace {

constexpr const char* kCookie = "sg_web";

std::string random_hex(std::size_t bytes) {
  std::string raw(bytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()), static_cast<int>(bytes)) != 1) return "";
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : raw) {
    out += hex[c >> 4];
    out += hex[c & 15];
  }
  return out;
}

bool same_secret(const std::string& a, const std::string& b) {
  return a.size() == b.size() && !a.empty() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string bytes_text(std::int64_t b) {
  char buf[32];
  if (b >= (1LL << 30)) {
    (void)std::snprintf(buf, sizeof buf, "%.1f GiB", static_cast<double>(b) / (1LL << 30));
  } else if (b >= (1LL << 20)) {
    (void)std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(b) / (1LL << 20));
  } else if (b >= 1024) {
    (void)std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(b) / 1024);
  } else {
    (void)std::snprintf(buf, sizeof buf, "%lld B", static_cast<long long>(b));
  }
  return buf;
}

std::string rate_text(std::uint64_t bps) {
  char buf[32];
  if (bps >= 1000000) {
    (void)std::snprintf(buf, sizeof buf, "%.1f Mbit/s", static_cast<double>(bps) / 1e6);
  } else {
    (void)std::snprintf(buf, sizeof buf, "%.1f kbit/s", static_cast<double>(bps) / 1e3);
  }
  return buf;
}

std::string str(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return "";
  return it->is_string() ? it->get<std::string>() : it->dump();
}

std::int64_t num(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<std::int64_t>() : 0;
}

constexpr const char* kStyle = R"(
body{font-family:sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #ddd;padding:.3em .5em;text-align:left;font-size:.9em;vertical-align:top}
th{background:#eee}.trusted{color:#070}.semi-trusted{color:#a60}.untrusted{color:#a00}
.msg{background:#ffd;border:1px solid #cc8;padding:.5em;margin:.5em 0}.err{background:#fdd;border-color:#c88}
form.inline{display:inline}button{cursor:pointer}code{font-size:.85em;word-break:break-all}
input[type=text]{width:16em}
)";

std::string page(const std::string& title, const std::string& body) {
  return "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + html_escape(title) +
         "</title><style>" + kStyle + "</style></head><body>\n" + body + "\n</body></html>\n";
}

std::string hidden_csrf(const std::string& csrf) {
  return "<input type=\"hidden\" name=\"csrf\" value=\"" + html_escape(csrf) + "\">";
}

}  // namespace

std::string render_overview(const nlohmann::json& ov, const std::string& csrf, const std::string& message) {
  std::string b = "<h1>surrogated on " + html_escape(str(ov, "host")) + "</h1>\n<p>" + html_escape(str(ov, "now")) +
                  " &middot; " + std::to_string(num(ov, "vm_count")) + " VMs, " +
                  std::to_string(num(ov, "slots_free")) + " of " + std::to_string(num(ov, "slots")) +
                  " slots free &middot; <a href=\"/metrics\">metrics</a></p>\n";
  if (!message.empty()) {
    bool error = message.rfind("error:", 0) == 0;
    b += "<div class=\"msg" + std::string(error ? " err" : "") + "\" id=\"message\">" + html_escape(message) +
         "</div>\n";
  }
  std::int64_t window = num(ov, "window_s");
  std::string win = format_duration(window);
  b += "<h2>Virtual machines</h2>\n<table id=\"vms\"><tr><th>VM</th><th>Client</th><th>Contact</th><th>Title</th>"
       "<th>Trust</th><th>Addresses</th><th>Age</th><th>Remaining</th><th>Traffic</th><th>Drops (last " +
       html_escape(win) + ")</th><th></th></tr>\n";
  for (const auto& v : ov.value("vms", nlohmann::json::array())) {
    std::string name = str(v, "name");
    std::string traffic;
    if (v.contains("rate_out_bps")) {
      traffic = "now: out " + rate_text(v["rate_out_bps"].get<std::uint64_t>()) + ", in " +
                rate_text(v.value("rate_in_bps", std::uint64_t{0})) + "<br>";
    }
    traffic += "last " + html_escape(win) + ": out " + bytes_text(num(v, "bytes_out")) + ", in " +
               bytes_text(num(v, "bytes_in")) + " (" + std::to_string(num(v, "flows")) + " flows)";
    std::string drops;
    const nlohmann::json by_reason = v.value("drops_by_reason", nlohmann::json::object());
    for (const auto& [reason, n] : by_reason.items()) {
      drops += (drops.empty() ? "" : "<br>") + html_escape(reason) + ": " + std::to_string(n.get<std::int64_t>());
    }
    std::string level = str(v, "trust_level");
    b += "<tr id=\"vm-" + html_escape(name) + "\"><td><b>" + html_escape(name) + "</b></td><td><code title=\"" +
         html_escape(str(v, "owner")) + "\">" + html_escape(str(v, "owner").substr(0, 23)) + "…</code></td><td>" +
         html_escape(str(v, "contact")) + "</td><td>" + html_escape(str(v, "title")) + "</td><td class=\"" +
         html_escape(level) + "\">" + html_escape(level) + "</td><td>" + html_escape(str(v, "ipv4")) + "<br>" +
         html_escape(str(v, "ipv6")) + "</td><td>" + html_escape(format_duration(num(v, "age_s"))) + "</td><td>" +
         html_escape(format_duration(num(v, "remaining_s"))) + "</td><td>" + traffic + "</td><td>" +
         (drops.empty() ? "none" : drops) + "</td><td><form class=\"inline\" method=\"post\" action=\"/stop\">" +
         hidden_csrf(csrf) + "<input type=\"hidden\" name=\"vm\" value=\"" + html_escape(name) +
         "\"><button type=\"submit\" name=\"stop\" id=\"stop-" + html_escape(name) +
         "\" title=\"cut its traffic, destroy the domain, keep its flows\">Stop</button></form></td></tr>\n";
  }
  b += "</table>\n";
  if (ov.value("vms", nlohmann::json::array()).empty()) b += "<p>No VMs are running.</p>\n";

  const auto lookup = ov.value("lookup", nlohmann::json::object());
  b += "<h2>Complaint lookup</h2>\n<form method=\"get\" action=\"/lookup\" id=\"lookup\">"
       "<label>Address <input type=\"text\" name=\"to\" value=\"" +
       html_escape(str(lookup, "to")) +
       "\" placeholder=\"203.0.113.7\"></label> <label>At <input type=\"text\" name=\"at\" value=\"" +
       html_escape(str(lookup, "at")) +
       "\" placeholder=\"2026-11-26T14:02:00Z or 30m\"></label> <button type=\"submit\">Who sent it?</button></form>\n";
  if (lookup.contains("error")) {
    b += "<div class=\"msg err\">" + html_escape(str(lookup, "error")) + "</div>\n";
  } else if (lookup.contains("vms")) {
    b += "<p>Traffic to " + html_escape(str(lookup, "to")) + " between " + html_escape(str(lookup, "since")) + " and " +
         html_escape(str(lookup, "until")) + ":</p>\n";
    if (lookup["vms"].empty()) b += "<p id=\"lookup-none\">No VM sent traffic there in that window.</p>\n";
    b += "<table id=\"lookup-result\"><tr><th>VM</th><th>State</th><th>Client</th><th>Contact</th><th>Title</th>"
         "<th>Trust</th><th>Flows</th><th>Bytes out</th><th>Authcerts</th></tr>\n";
    for (const auto& v : lookup["vms"]) {
      std::string certs;
      for (const auto& c : v.value("authcerts", nlohmann::json::array())) certs += html_escape(c.dump()) + " ";
      b += "<tr><td>" + html_escape(str(v, "vm")) + "</td><td>" + html_escape(str(v, "state")) + "</td><td><code>" +
           html_escape(str(v, "client")) + "</code></td><td>" + html_escape(str(v, "contact")) + "</td><td>" +
           html_escape(str(v, "title")) + "</td><td>" + html_escape(str(v, "trust_level")) + "</td><td>" +
           std::to_string(num(v, "flows")) + "</td><td>" + bytes_text(num(v, "bytes_out")) + "</td><td>" + certs +
           "</td></tr>\n";
    }
    b += "</table>\n";
  }
  std::string suggested = str(lookup, "to");
  b += "<h2>Block list</h2>\n<form method=\"post\" action=\"/block\" id=\"block\">" + hidden_csrf(csrf) +
       "<label>Prefix <input type=\"text\" name=\"prefix\" value=\"" + html_escape(suggested) +
       "\" placeholder=\"203.0.113.0/24\"></label> <label>Reason <input type=\"text\" name=\"reason\" "
       "placeholder=\"complaint #12\"></label> <button type=\"submit\">Block</button></form>\n<table id=\"blocks\">"
       "<tr><th>Prefix</th><th>Reason</th><th></th></tr>\n";
  for (const auto& bl : ov.value("blocks", nlohmann::json::array())) {
    b += "<tr><td>" + html_escape(str(bl, "prefix")) + "</td><td>" + html_escape(str(bl, "reason")) +
         "</td><td><form class=\"inline\" method=\"post\" action=\"/unblock\">" + hidden_csrf(csrf) +
         "<input type=\"hidden\" name=\"prefix\" value=\"" + html_escape(str(bl, "prefix")) +
         "\"><button type=\"submit\">Unblock</button></form></td></tr>\n";
  }
  b += "</table>\n<h2>Audit trail (newest first)</h2>\n<table id=\"audit\"><tr><th>#</th><th>Time</th><th>Actor</th>"
       "<th>Action</th><th>Subject</th><th>Detail</th></tr>\n";
  for (const auto& a : ov.value("audit", nlohmann::json::array())) {
    std::string detail = str(a, "detail");
    if (detail.size() > 200) detail = detail.substr(0, 200) + "…";
    b += "<tr><td>" + std::to_string(num(a, "seq")) + "</td><td>" + html_escape(format_utc(num(a, "time_ms") / 1000)) +
         "</td><td>" + html_escape(str(a, "actor")) + "</td><td>" + html_escape(str(a, "action")) + "</td><td>" +
         html_escape(str(a, "subject")) + "</td><td><code>" + html_escape(detail) + "</code></td></tr>\n";
  }
  b += "</table>\n<form method=\"post\" action=\"/logout\">" + hidden_csrf(csrf) +
       "<p><button type=\"submit\">Log out</button></p></form>\n";
  return page("surrogated", b);
}

struct WebUi::Impl {
  WebConfig cfg;
  LoopBridge& bridge;
  Hooks hooks;
  std::string token;  // what the owner pastes into the login form
  std::string csrf;   // per process, in every form
  std::unique_ptr<httplib::Server> server;
  std::thread thread;

  Impl(WebConfig c, LoopBridge& b, Hooks h) : cfg(std::move(c)), bridge(b), hooks(std::move(h)) {}

  [[nodiscard]] bool allowed_peer(const httplib::Request& req) const {
    if (cfg.allow_non_loopback) return true;
    auto a = IpAddress::parse(req.remote_addr);
    return a && (a->to_string() == "::1" || a->to_string().rfind("127.", 0) == 0);
  }

  [[nodiscard]] bool logged_in(const httplib::Request& req) const {
    std::string cookies = req.get_header_value("Cookie");
    std::string key = std::string(kCookie) + "=";
    for (std::size_t pos = 0; pos < cookies.size();) {
      std::size_t end = cookies.find(';', pos);
      if (end == std::string::npos) end = cookies.size();
      std::string item = cookies.substr(pos, end - pos);
      while (!item.empty() && item.front() == ' ') item.erase(0, 1);
      if (item.rfind(key, 0) == 0 && same_secret(item.substr(key.size()), token)) return true;
      pos = end + 1;
    }
    return false;
  }

  static void redirect(httplib::Response& res, const std::string& message) {
    res.status = 303;
    res.set_header("Location", "/?msg=" + httplib::detail::encode_query_param(message));
  }

  void login_page(httplib::Response& res, const std::string& error) {
    std::string b = "<h1>surrogated: owner's page</h1>\n";
    if (!error.empty()) b += "<div class=\"msg err\">" + html_escape(error) + "</div>\n";
    b += "<form method=\"post\" action=\"/login\" id=\"login\">" + hidden_csrf(csrf) +
         "<p><label>Token <input type=\"password\" name=\"token\" autocomplete=\"off\"></label> "
         "<button type=\"submit\">Log in</button></p></form>\n<p>The token is in <code>" +
         html_escape(cfg.token_file) +
         "</code> (readable by root and the admin group; a new one at every daemon start).</p>";
    res.status = error.empty() ? 200 : 403;
    res.set_content(page("surrogated: log in", b), "text/html; charset=utf-8");
  }

  void show_overview(const httplib::Request& req, httplib::Response& res, const WebQuery& q) {
    auto ov = bridge.call<nlohmann::json>([f = hooks.overview, q] { return f(q); }, std::chrono::seconds(30));
    if (!ov) {
      res.status = 503;
      res.set_content(page("surrogated", "<p>The daemon did not answer in time; reload the page.</p>"),
                      "text/html; charset=utf-8");
      return;
    }
    res.set_content(render_overview(*ov, csrf, req.get_param_value("msg")), "text/html; charset=utf-8");
  }

  // Every POST: a logged-in owner, and our own form (CSRF token).
  bool check_post(const httplib::Request& req, httplib::Response& res) {
    if (!logged_in(req)) {
      login_page(res, "log in first");
      return false;
    }
    if (!same_secret(req.get_param_value("csrf"), csrf)) {
      res.status = 403;
      res.set_content(page("surrogated", "<p>This form is stale or did not come from this page; reload it.</p>"),
                      "text/html; charset=utf-8");
      return false;
    }
    return true;
  }

  void act(const httplib::Request& req, httplib::Response& res, WebAction a) {
    if (!check_post(req, res)) return;
    auto r = bridge.call<nlohmann::json>([f = hooks.action, a] { return f(a); }, std::chrono::seconds(60));
    if (!r) return redirect(res, "error: the daemon did not answer in time");
    if (!r->value("ok", false)) return redirect(res, "error: " + r->value("error", "refused"));
    if (a.op == "stop") return redirect(res, "stopped " + a.vm + ": traffic cut, domain destroyed, flows kept");
    return redirect(res, (a.op == "block" ? "blocked " : "unblocked ") + (*r)["result"].value("prefix", a.prefix));
  }

  void routes() {
    auto& s = *server;
    s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (allowed_peer(req)) return httplib::Server::HandlerResponse::Unhandled;
      res.status = 403;
      res.set_content("the owner's page answers on loopback only\n", "text/plain");
      return httplib::Server::HandlerResponse::Handled;
    });
    s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      auto text = bridge.call<std::string>([f = hooks.metrics] { return f(); }, std::chrono::seconds(10));
      if (!text) {
        res.status = 503;
        return;
      }
      res.set_content(*text, "text/plain; version=0.0.4; charset=utf-8");
    });
    s.Get("/", [this](const httplib::Request& req, httplib::Response& res) {
      if (!logged_in(req)) return login_page(res, "");
      show_overview(req, res, {});
    });
    s.Get("/lookup", [this](const httplib::Request& req, httplib::Response& res) {
      if (!logged_in(req)) return login_page(res, "");
      show_overview(req, res, WebQuery{req.get_param_value("to"), req.get_param_value("at")});
    });
    s.Post("/login", [this](const httplib::Request& req, httplib::Response& res) {
      if (!same_secret(req.get_param_value("csrf"), csrf) || !same_secret(req.get_param_value("token"), token)) {
        log::warning("web page: failed login from " + req.remote_addr);
        return login_page(res, "wrong token");
      }
      res.set_header("Set-Cookie", std::string(kCookie) + "=" + token + "; Path=/; HttpOnly; SameSite=Strict");
      res.status = 303;
      res.set_header("Location", "/");
    });
    s.Post("/logout", [this](const httplib::Request& req, httplib::Response& res) {
      if (!check_post(req, res)) return;
      res.set_header("Set-Cookie", std::string(kCookie) + "=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict");
      res.status = 303;
      res.set_header("Location", "/");
    });
    s.Post("/stop", [this](const httplib::Request& req, httplib::Response& res) {
      act(req, res, WebAction{"stop", req.get_param_value("vm"), "", ""});
    });
    s.Post("/block", [this](const httplib::Request& req, httplib::Response& res) {
      act(req, res, WebAction{"block", "", req.get_param_value("prefix"), req.get_param_value("reason")});
    });
    s.Post("/unblock", [this](const httplib::Request& req, httplib::Response& res) {
      act(req, res, WebAction{"unblock", "", req.get_param_value("prefix"), ""});
    });
    // Pages are never framed (clickjacking) and never cached.
    s.set_post_routing_handler([](const httplib::Request&, httplib::Response& res) {
      res.set_header("X-Frame-Options", "DENY");
      res.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'");
      res.set_header("Cache-Control", "no-store");
      res.set_header("Referrer-Policy", "no-referrer");
    });
  }
};

// A fresh token at every start, readable by root and the admin group only.
static Status write_token(const std::string& path, const std::string& token, const std::string& admin_group) {
  ::unlink(path.c_str());
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640));
  if (!fd.valid()) return make_sys_error("cannot write the web page's token file " + path);
  if (group* g = ::getgrnam(admin_group.c_str())) (void)!::fchown(fd.get(), 0, g->gr_gid);
  ::fchmod(fd.get(), 0640);
  std::string line = token + "\n";
  if (::write(fd.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    return make_sys_error("cannot write the web page's token file " + path);
  }
  return {};
}

WebUi::WebUi(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
WebUi::~WebUi() { stop(); }

void WebUi::stop() {
  if (!impl_ || !impl_->server) return;
  impl_->server->stop();
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_->server.reset();
  ::unlink(impl_->cfg.token_file.c_str());
}

Result<std::unique_ptr<WebUi>> WebUi::start(const WebConfig& cfg, const std::string& admin_group, LoopBridge& bridge,
                                            Hooks hooks) {
  auto where = parse_listen(cfg.listen);
  if (!where) return with_context("[web] listen", where.error());
  auto impl = std::make_unique<Impl>(cfg, bridge, std::move(hooks));
  impl->token = random_hex(32);
  impl->csrf = random_hex(32);
  if (impl->token.empty() || impl->csrf.empty()) return make_error("no randomness for the web page's tokens");
  if (auto st = write_token(cfg.token_file, impl->token, admin_group); !st) return st.error();
  impl->server = std::make_unique<httplib::Server>();
  auto& s = *impl->server;
  // One worker per open connection: a browser opens up to 6; idle ones go soon.
  s.new_task_queue = [] { return new httplib::ThreadPool(8); };
  s.set_read_timeout(10, 0);
  s.set_write_timeout(10, 0);
  s.set_keep_alive_timeout(2);
  s.set_payload_max_length(16 * 1024);
  impl->routes();
  if (!s.bind_to_port(where->first, where->second)) {
    return make_sys_error("web page: cannot listen on " + cfg.listen + " (in use? wrong address?)");
  }
  impl->thread = std::thread([srv = impl->server.get()] { srv->listen_after_bind(); });
  log::notice("owner's web page on http://" + cfg.listen + "/ (token in " + cfg.token_file + ")");
  return std::unique_ptr<WebUi>(new WebUi(std::move(impl)));
}

}  // namespace sg
