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
  p.check_keys(root, "top level", {"daemon", "libvirt", "pool", "netfilter", "templates"});

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
  if (cfg.templates.empty()) cfg.templates["small"] = VmTemplate{.name = "small"};
  if (cfg.templates.count(cfg.default_template) == 0) cfg.default_template = cfg.templates.begin()->first;

  if (!p.errors_.empty()) {
    std::string all;
    for (const auto& e : p.errors_) all += (all.empty() ? "" : "\n") + e;
    return make_error(all);
  }
  return cfg;
}

Result<DaemonConfig> load_daemon_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_sys_error("cannot read config " + path + " (give another with --config)");
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse_daemon_config(ss.str(), path);
}

}  // namespace sg
