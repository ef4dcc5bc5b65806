#include "surrogated/config.h"

#include <toml++/toml.h>

#include <fstream>
#include <set>
#include <sstream>
#include <vector>

#include "common/timeutil.h"

namespace sg {
namespace {

class Parser {
 public:
  explicit Parser(std::string filename) : file_(std::move(filename)) {}

  void error(const toml::source_region& where, const std::string& message) {
    errors_.push_back(file_ + ":" + std::to_string(where.begin.line) + ":" + std::to_string(where.begin.column) + ": " +
                      message);
  }

  // Reports keys of `table` that are not in `known`.
  void check_keys(const toml::table& table, const std::string& section, const std::set<std::string>& known) {
    for (const auto& [key, node] : table) {
      if (known.count(std::string(key.str())) == 0) {
        std::string list;
        for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
        error(key.source(), "unknown key '" + std::string(key.str()) + "' in [" + section + "]; known keys: " + list);
      }
    }
  }

  void get_string(const toml::table& t, const char* key, std::string& out) {
    const toml::node* n = t.get(key);
    if (n == nullptr) return;
    if (auto v = n->value<std::string>()) {
      out = *v;
    } else {
      error(n->source(), std::string("'") + key + "' must be a string in quotes");
    }
  }

  void get_string_list(const toml::table& t, const char* key, std::vector<std::string>& out) {
    const toml::node* n = t.get(key);
    if (n == nullptr) return;
    const toml::array* a = n->as_array();
    if (a == nullptr) {
      error(n->source(), std::string("'") + key + "' must be a list of strings, e.g. [\"/etc/ssl/ca.pem\"]");
      return;
    }
    out.clear();
    for (const auto& item : *a) {
      if (auto v = item.value<std::string>()) {
        out.push_back(*v);
      } else {
        error(item.source(), std::string("every entry of '") + key + "' must be a string in quotes");
      }
    }
  }

  void get_bool(const toml::table& t, const char* key, bool& out) {
    const toml::node* n = t.get(key);
    if (n == nullptr) return;
    if (auto v = n->value_exact<bool>()) {
      out = *v;
    } else {
      error(n->source(), std::string("'") + key + "' must be true or false");
    }
  }

  void get_int(const toml::table& t, const char* key, int& out, int min, int max) {
    const toml::node* n = t.get(key);
    if (n == nullptr) return;
    auto v = n->value_exact<std::int64_t>();
    if (!v) {
      error(n->source(), std::string("'") + key + "' must be a whole number");
    } else if (*v < min || *v > max) {
      error(n->source(), std::string("'") + key + "' = " + std::to_string(*v) + " is out of range; use " +
                             std::to_string(min) + " to " + std::to_string(max));
    } else {
      out = static_cast<int>(*v);
    }
  }

  void get_duration(const toml::table& t, const char* key, std::int64_t& out) {
    const toml::node* n = t.get(key);
    if (n == nullptr) return;
    auto v = n->value<std::string>();
    if (!v) {
      error(n->source(), std::string("'") + key + "' must be a duration in quotes, e.g. \"12h\"");
      return;
    }
    auto d = parse_duration(*v);
    if (!d) {
      error(n->source(), d.error().message);
    } else if (*d <= 0) {
      error(n->source(), std::string("'") + key + "' must be longer than zero");
    } else {
      out = *d;
    }
  }

  void get_prefix(const toml::table& t, const char* key, std::optional<Prefix>& out, Family family, int min_len,
                  int max_len) {
    const toml::node* n = t.get(key);
    if (n == nullptr) return;
    auto v = n->value<std::string>();
    if (!v) {
      error(n->source(), std::string("'") + key + "' must be a prefix in quotes");
      return;
    }
    auto p = Prefix::parse(*v);
    if (!p) {
      error(n->source(), p.error().message);
    } else if (p->family() != family) {
      error(n->source(),
            std::string("'") + key + "' must be an " + (family == Family::v4 ? "IPv4" : "IPv6") + " prefix");
    } else if (p->length < min_len || p->length > max_len) {
      error(n->source(), std::string("'") + key + "' = " + *v + ": prefix length must be between /" +
                             std::to_string(min_len) + " and /" + std::to_string(max_len));
    } else {
      out = *p;
    }
  }

  std::vector<std::string> errors_;
  std::string file_;
};

}  // namespace

Result<DaemonConfig> parse_daemon_config(std::string_view text, const std::string& filename) {
  toml::table root;
  try {
    root = toml::parse(text, filename);
  } catch (const toml::parse_error& e) {
    return make_error(filename + ":" + std::to_string(e.source().begin.line) + ":" +
                      std::to_string(e.source().begin.column) + ": " + std::string(e.description()));
  }

  DaemonConfig cfg;
  cfg.source = filename;
  Parser p(filename);
  p.check_keys(root, "top level",
               {"daemon", "libvirt", "pool", "netfilter", "pki", "flowlog", "shaping", "templates", "api", "web"});

  auto section = [&](const char* name) -> const toml::table* {
    const toml::node* n = root.get(name);
    if (n == nullptr) return nullptr;
    if (!n->is_table()) {
      p.error(n->source(), std::string("'") + name + "' must be a section: write [" + name + "]");
      return nullptr;
    }
    return n->as_table();
  };

  if (const auto* d = section("daemon")) {
    p.check_keys(*d, "daemon", {"state_dir", "socket", "admin_group", "trust_policy", "log_level"});
    p.get_string(*d, "state_dir", cfg.state_dir);
    p.get_string(*d, "socket", cfg.socket_path);
    p.get_string(*d, "admin_group", cfg.admin_group);
    p.get_string(*d, "trust_policy", cfg.trust_policy);
    p.get_string(*d, "log_level", cfg.log_level);
    static const std::set<std::string> levels = {"debug", "info", "notice", "warning", "error"};
    if (levels.count(cfg.log_level) == 0) {
      p.error(d->get("log_level")->source(), "log_level must be one of debug, info, notice, warning, error");
    }
    if (cfg.socket_path.size() >= 108) {
      p.error(d->get("socket")->source(), "socket path is longer than a Unix socket allows (107 bytes)");
    }
  }
  if (const auto* l = section("libvirt")) {
    p.check_keys(*l, "libvirt", {"uri", "simulate_guest_network", "domain_prefix", "guest_netns_prefix"});
    p.get_string(*l, "uri", cfg.libvirt_uri);
    p.get_bool(*l, "simulate_guest_network", cfg.simulate_guest_network);
    p.get_string(*l, "domain_prefix", cfg.domain_prefix);
    p.get_string(*l, "guest_netns_prefix", cfg.guest_netns_prefix);
    if (cfg.simulate_guest_network && cfg.libvirt_uri.rfind("test:", 0) != 0) {
      p.error(l->get("simulate_guest_network")->source(),
              "simulate_guest_network only works with the test:// driver; remove it for real guests");
    }
  }
  if (const auto* pool = section("pool")) {
    p.check_keys(*pool, "pool", {"ipv4", "ipv6", "max_vms"});
    p.get_prefix(*pool, "ipv4", cfg.pool_v4, Family::v4, 8, 30);
    p.get_prefix(*pool, "ipv6", cfg.pool_v6, Family::v6, 16, 64);
    p.get_int(*pool, "max_vms", cfg.max_vms, 1, 65535);
  }
  if (const auto* nf = section("netfilter")) {
    p.check_keys(*nf, "netfilter", {"table", "nflog_group"});
    p.get_string(*nf, "table", cfg.nft_table);
    p.get_int(*nf, "nflog_group", cfg.nflog_group, 1, 65535);
    if (cfg.nft_table.empty() || cfg.nft_table.size() > 64 ||
        cfg.nft_table.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_-") != std::string::npos) {
      p.error(nf->get("table")->source(), "table must be 1-64 characters of a-z, 0-9, _ and -");
    }
  }
  if (const auto* pki = section("pki")) {
    p.check_keys(*pki, "pki", {"ca_files", "crl_files", "crl_mode"});
    p.get_string_list(*pki, "ca_files", cfg.pki_ca_files);
    p.get_string_list(*pki, "crl_files", cfg.pki_crl_files);
    p.get_string(*pki, "crl_mode", cfg.pki_crl_mode);
    if (cfg.pki_crl_mode != "when-present" && cfg.pki_crl_mode != "require-all") {
      p.error(pki->get("crl_mode")->source(), "crl_mode must be \"when-present\" or \"require-all\"");
    }
  }
  if (const auto* fl = section("flowlog")) {
    p.check_keys(*fl, "flowlog",
                 {"database", "retention", "max_size_mb", "batch_ms", "drops_per_second", "netlink_buffer_kb"});
    p.get_string(*fl, "database", cfg.flowlog_path);
    p.get_duration(*fl, "retention", cfg.flowlog_retention_s);
    int mb = static_cast<int>(cfg.flowlog_max_bytes >> 20);
    p.get_int(*fl, "max_size_mb", mb, 1, 1 << 24);
    cfg.flowlog_max_bytes = static_cast<std::int64_t>(mb) << 20;
    p.get_int(*fl, "batch_ms", cfg.flowlog_batch_ms, 10, 60000);
    p.get_int(*fl, "drops_per_second", cfg.flowlog_drops_per_second, 1, 100000);
    p.get_int(*fl, "netlink_buffer_kb", cfg.flowlog_netlink_buffer_kb, 4, 1 << 20);
  }
  if (const auto* sh = section("shaping")) {
    p.check_keys(*sh, "shaping", {"enabled", "egress_devices", "tc_major"});
    p.get_bool(*sh, "enabled", cfg.shaping_enabled);
    p.get_string_list(*sh, "egress_devices", cfg.shaping_egress_devices);
    p.get_int(*sh, "tc_major", cfg.shaping_tc_major, 1, 0xfffe);
  }
  if (const auto* api = section("api")) {
    p.check_keys(*api, "api",
                 {"listen", "cert", "key", "client_ca_files", "max_body_kb", "requests_per_second", "burst",
                  "max_vms_per_client", "max_vms_trusted", "max_vms_semi_trusted", "max_vms_untrusted", "threads",
                  "io_timeout_s", "request_timeout_s"});
    auto& a = cfg.api;
    p.get_string(*api, "listen", a.listen);
    p.get_string(*api, "cert", a.cert);
    p.get_string(*api, "key", a.key);
    p.get_string_list(*api, "client_ca_files", a.client_ca_files);
    p.get_int(*api, "max_body_kb", a.max_body_kb, 1, 16384);
    p.get_int(*api, "requests_per_second", a.requests_per_second, 1, 100000);
    p.get_int(*api, "burst", a.burst, 1, 100000);
    p.get_int(*api, "max_vms_per_client", a.max_vms_per_client, 0, 65535);
    p.get_int(*api, "max_vms_trusted", a.max_vms_trusted, 0, 65535);
    p.get_int(*api, "max_vms_semi_trusted", a.max_vms_semi_trusted, 0, 65535);
    p.get_int(*api, "max_vms_untrusted", a.max_vms_untrusted, 0, 65535);
    p.get_int(*api, "threads", a.threads, 1, 1024);
    p.get_int(*api, "io_timeout_s", a.io_timeout_s, 1, 3600);
    p.get_int(*api, "request_timeout_s", a.request_timeout_s, 1, 3600);
    if (!a.listen.empty()) {
      if (auto l = parse_listen(a.listen); !l) p.error(api->get("listen")->source(), l.error().message);
      if (a.cert.empty() || a.key.empty() || a.client_ca_files.empty()) {
        p.error(api->source(),
                "[api] with listen needs cert, key (the server's) and client_ca_files (the CAs "
                "whose client certificates are accepted)");
      }
    }
  }
  if (const auto* web = section("web")) {
    p.check_keys(*web, "web", {"listen", "token_file", "allow_non_loopback"});
    p.get_string(*web, "listen", cfg.web.listen);
    p.get_string(*web, "token_file", cfg.web.token_file);
    p.get_bool(*web, "allow_non_loopback", cfg.web.allow_non_loopback);
    if (!cfg.web.listen.empty()) {
      auto l = parse_listen(cfg.web.listen);
      if (!l) {
        p.error(web->get("listen")->source(), l.error().message);
      } else if (!cfg.web.allow_non_loopback && l->first != "127.0.0.1" && l->first != "::1") {
        p.error(web->get("listen")->source(),
                "the web page speaks plain HTTP: listen on 127.0.0.1 or [::1] (reach it through an SSH tunnel), "
                "or set allow_non_loopback = true behind your own TLS proxy");
      }
    }
  }
  if (const auto* tpls = section("templates")) {
    for (const auto& [key, node] : *tpls) {
      std::string name(key.str());
      if (!node.is_table()) {
        p.error(node.source(), "template '" + name + "' must be a section: write [templates." + name + "]");
        continue;
      }
      const auto& t = *node.as_table();
      VmTemplate tpl;
      tpl.name = name;
      p.check_keys(t, "templates." + name,
                   {"vcpus", "memory_mib", "max_lifetime", "default_lifetime", "kernel", "initrd", "cmdline", "disk",
                    "cpu_quota_percent"});
      p.get_int(t, "vcpus", tpl.vcpus, 1, 64);
      p.get_int(t, "memory_mib", tpl.memory_mib, 16, 1024 * 1024);
      p.get_duration(t, "max_lifetime", tpl.max_lifetime_s);
      p.get_duration(t, "default_lifetime", tpl.default_lifetime_s);
      p.get_string(t, "kernel", tpl.kernel);
      p.get_string(t, "initrd", tpl.initrd);
      p.get_string(t, "cmdline", tpl.cmdline);
      p.get_string(t, "disk", tpl.disk);
      p.get_int(t, "cpu_quota_percent", tpl.cpu_quota_percent, 0, 100 * 64);
      if (const toml::node* c = t.get("cmdline"); c != nullptr && !tpl.cmdline.empty()) {
        std::map<std::string, std::string> probe;
        for (const auto& n : cmdline_placeholders()) probe[n] = "x";
        if (auto e = expand_cmdline(tpl.cmdline, probe); !e) p.error(c->source(), e.error().message);
      }
      if (tpl.default_lifetime_s > tpl.max_lifetime_s) {
        p.error(t.source(), "template '" + name + "': default_lifetime is longer than max_lifetime; shorten it");
      }
      cfg.templates[name] = tpl;
    }
  }
  if (!cfg.pool_v4 && !cfg.pool_v6) {
    p.errors_.push_back(filename + ":1:1: no address pool; add [pool] with ipv4 = \"198.51.100.0/24\" " +
                        "and/or ipv6 = \"2001:db8:5::/56\"");
  }
  if (cfg.flowlog_path.empty()) cfg.flowlog_path = cfg.state_dir + "/flows.db";
  if (cfg.web.token_file.empty()) {
    auto slash = cfg.socket_path.rfind('/');
    cfg.web.token_file =
        (slash == std::string::npos ? std::string(".") : cfg.socket_path.substr(0, slash)) + "/web-token";
  }
  if (cfg.templates.empty()) cfg.templates["small"] = VmTemplate{.name = "small"};
  if (cfg.templates.count(cfg.default_template) == 0) cfg.default_template = cfg.templates.begin()->first;

  if (!p.errors_.empty()) {
    std::string all;
    for (const auto& e : p.errors_) all += (all.empty() ? "" : "\n") + e;
    return make_error(all);
  }
  return cfg;
}

Result<std::pair<std::string, int>> parse_listen(std::string_view text) {
  std::string t(text);
  std::string host;
  std::string port;
  if (!t.empty() && t.front() == '[') {
    auto close = t.find("]:");
    if (close == std::string::npos) return make_error("listen '" + t + "': write [ADDRESS]:PORT, e.g. [::1]:8443");
    host = t.substr(1, close - 1);
    port = t.substr(close + 2);
  } else {
    auto colon = t.rfind(':');
    if (colon == std::string::npos || t.find(':') != colon) {
      return make_error("listen '" + t + "': write ADDRESS:PORT, e.g. 127.0.0.1:8443 (IPv6 in brackets)");
    }
    host = t.substr(0, colon);
    port = t.substr(colon + 1);
  }
  if (!IpAddress::parse(host)) return make_error("listen '" + t + "': '" + host + "' is not an IP address");
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) {
    return make_error("listen '" + t + "': port must be 1 to 65535");
  }
  int n = std::stoi(port);
  if (n < 1 || n > 65535) return make_error("listen '" + t + "': port must be 1 to 65535");
  return std::pair<std::string, int>{IpAddress::parse(host)->to_string(), n};
}

Result<std::string> expand_cmdline(std::string_view cmdline, const std::map<std::string, std::string>& values) {
  std::string out;
  for (std::size_t i = 0; i < cmdline.size(); ++i) {
    if (cmdline[i] != '{') {
      out += cmdline[i];
      continue;
    }
    std::size_t end = cmdline.find('}', i);
    if (end == std::string_view::npos) {
      return make_error("cmdline has a '{' without '}' at offset " + std::to_string(i) + ": " + std::string(cmdline));
    }
    std::string name(cmdline.substr(i + 1, end - i - 1));
    auto it = values.find(name);
    if (it == values.end()) {
      std::string known;
      for (const auto& n : cmdline_placeholders()) known += (known.empty() ? "{" : ", {") + n + "}";
      return make_error("cmdline names an unknown value {" + name + "}; known: " + known);
    }
    out += it->second;
    i = end;
  }
  return out;
}

Result<DaemonConfig> load_daemon_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_sys_error("cannot read config " + path + " (give another with --config)");
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse_daemon_config(ss.str(), path);
}

}  // namespace sg
