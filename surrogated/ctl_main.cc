// surrogatectl: command-line client of surrogated.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>

#include "certs/identity.h"
#include "common/main_guard.h"
#include "common/timeutil.h"
#include "surrogated/ctl_client.h"
#include "surrogated/ctl_common.h"
#include "surrogated/ctl_tunnel_cmds.h"
#include "trust/classify.h"
#include "trust/explain.h"
#include "trust/parse.h"
#include "trust/render.h"

using sg::ctl::call;
using sg::ctl::fail;
using sg::ctl::Globals;
using sg::ctl::load_key;

namespace {

std::string short_fp(const std::string& fp) { return fp.substr(0, 19); }

void print_vm(const nlohmann::json& v) {
  auto line = [](const char* k, const std::string& val) {
    if (!val.empty()) std::cout << std::left << std::setw(15) << k << val << "\n";
  };
  line("VM", v.value("name", ""));
  line("Owner", v.value("owner", ""));
  line("Trust level", v.value("trust_level", ""));
  line("State", v.value("state", ""));
  line("Template", v.value("template", ""));
  line("IPv4", v.value("ipv4", "") +
                   (v.value("gateway_ipv4", "").empty() ? "" : "  (gateway " + v.value("gateway_ipv4", "") + ")"));
  line("IPv6", v.value("ipv6", "") +
                   (v.value("gateway_ipv6", "").empty() ? "" : "  (gateway " + v.value("gateway_ipv6", "") + ")"));
  line("MAC", v.value("mac", ""));
  line("Tap", v.value("tap", ""));
  line("Created", v.value("created", ""));
  line("Expires", v.value("expires", "") + "  (in " + sg::format_duration(v.value("remaining_s", 0)) + ")");
  line("Contact", v.value("contact", ""));
  line("Title", v.value("title", ""));
  line("Libvirt", v.value("domain", ""));
  // Traffic shaping (docs/shaping.md): caps, what flows now, the daily quota.
  if (const auto sh = v.value("shaping", nlohmann::json::object()); sh.value("shaped", false)) {
    auto rate = [](const nlohmann::json& j, const char* k) {
      return sg::trust::format_bit_rate(j.value(k, std::uint64_t{0}));
    };
    const auto cls = sh.value("classes", nlohmann::json::object());
    std::string caps = rate(sh, "cap_bps") + " (client " +
                       rate(cls.value("client", nlohmann::json::object()), "ceil_bps") + ", nodes " +
                       rate(cls.value("nodes", nlohmann::json::object()), "ceil_bps") + ", other " +
                       rate(cls.value("other", nlohmann::json::object()), "ceil_bps") + ")";
    if (sh.value("ceiling_bps", std::uint64_t{0}) > 0) caps += "; all VMs " + rate(sh, "ceiling_bps");
    line("Cap", caps);
    for (const auto& c : sh.value("authcert_classes", nlohmann::json::array())) {
      line("Node class", c.value("class", "") + " at " + rate(c, "ceil_bps") + " (a rated authcert)");
    }
    for (const auto& [label, key] :
         {std::pair{"Rate out", "egress_rate_bps"}, std::pair{"Rate in", "ingress_rate_bps"}}) {
      const auto r = sh.value(key, nlohmann::json::object());
      line(label, rate(r, "total") + " (client " + rate(r, "client") + ", nodes " + rate(r, "nodes") + ", other " +
                      rate(r, "other") + ")");
    }
    if (const auto limit = sh.value("quota_limit_bytes", std::uint64_t{0}); limit > 0) {
      line("Quota today",
           sg::trust::format_byte_size(sh.value("quota_used_bytes", std::uint64_t{0})) + " of " +
               sg::trust::format_byte_size(limit) +
               (sh.value("quota_exhausted", false) ? "  (used up: only its client until midnight UTC)" : ""));
    }
    line("Throttled",
         sh.value("throttled", false) ? "yes, to " + rate(sh, "throttle_bps") + " until midnight UTC" : "no");
  }
}

struct ExplainArgs {
  std::string client, vm, to, proto;
  bool syn_only = false;
};

// Reads a policy file for the local subcommands; prints every diagnostic.
std::optional<sg::trust::Policy> read_policy(const std::string& file, int& rc) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    rc = fail("cannot read " + file + " (check the path)", 2);
    return std::nullopt;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  auto outcome = sg::trust::parse_policy_detailed(ss.str(), file);
  if (!outcome.ok()) {
    for (const auto& d : outcome.diagnostics) std::cerr << d.to_string() << "\n";
    std::cerr << file << ": " << outcome.diagnostics.size() << " error(s); the file was not accepted\n";
    rc = 1;
    return std::nullopt;
  }
  rc = 0;
  return std::move(outcome.policy);
}

int run_policy(const Globals& g, CLI::App* check, CLI::App* show, CLI::App* reload, CLI::App* explain,
               const std::string& file, const ExplainArgs& ex) {
  int rc = 0;
  if (check->parsed()) {
    auto p = read_policy(file, rc);
    if (!p) return rc;
    std::cout << file << ": OK (version " << p->version.substr(0, 19) << ", " << p->rules.size() << " client rules, "
              << p->groups.size() << " groups)\n";
    return 0;
  }
  if (show->parsed()) {
    if (!file.empty()) {
      auto p = read_policy(file, rc);
      if (!p) return rc;
      std::cout << (g.json ? sg::trust::to_json(*p).dump(2) + "\n" : sg::trust::to_text(*p));
      return 0;
    }
    auto key = load_key(g, false, rc);
    if (rc != 0) return rc;
    auto r = call(g, "policy-show", nlohmann::json::object(), key ? &*key : nullptr, rc);
    if (!r) return rc;
    std::cout << (g.json ? (*r)["policy"].dump(2) + "\n" : r->value("text", ""));
    return 0;
  }
  if (reload->parsed()) {
    auto r = call(g, "policy-reload", nlohmann::json::object(), nullptr, rc);
    if (!r) return rc;
    if (g.json) {
      std::cout << r->dump(2) << "\n";
      return 0;
    }
    std::cout << "policy " << r->value("file", "") << " in force (version " << r->value("version", "").substr(0, 19)
              << "); trust anchors and CRLs read again\n";
    for (const auto& c : r->value("authcerts_closed", nlohmann::json::array())) {
      std::cout << "closed: authcert " << c.value("id", "") << " of " << c.value("vm", "") << " ("
                << c.value("holes", 0) << " hole(s)): " << c.value("reason", "") << "\n";
    }
    return 0;
  }
  if (explain->parsed()) {
    // ADDR, ADDR:PORT or [V6]:PORT.
    std::string addr = ex.to;
    std::optional<int> port;
    if (!addr.empty() && addr.front() == '[') {
      auto close = addr.find(']');
      if (close == std::string::npos) return fail("--to: missing ']' in " + ex.to, 2);
      if (close + 1 < addr.size() && addr[close + 1] == ':') port = std::atoi(addr.c_str() + close + 2);
      addr = addr.substr(1, close - 1);
    } else if (std::count(addr.begin(), addr.end(), ':') == 1) {
      port = std::atoi(addr.c_str() + addr.find(':') + 1);
      addr = addr.substr(0, addr.find(':'));
    }
    auto dest = sg::IpAddress::parse(addr);
    if (!dest) return fail("--to: " + dest.error().message, 2);
    if (port && (*port < 1 || *port > 65535)) return fail("--to: port must be 1 to 65535", 2);
    std::string client = ex.client;
    if (!client.empty() && client.rfind("sha256:", 0) != 0) {
      // A key file: its fingerprint.
      auto kp = sg::certs::KeyPair::load_pem_file(client);
      if (kp) {
        client = kp->public_key().fingerprint();
      } else {
        std::ifstream in(client);
        std::stringstream ss;
        ss << in.rdbuf();
        auto pub = sg::certs::PublicKey::from_pem(ss.str());
        if (!pub) return fail("--client: give a fingerprint (sha256:...) or a key file; " + client + " is neither", 2);
        client = pub->fingerprint();
      }
    }
    if (!file.empty()) {
      auto p = read_policy(file, rc);
      if (!p) return rc;
      if (client.empty()) return fail("--client is needed with --policy FILE", 2);
      sg::trust::ExplainQuery q;
      q.destination = *dest;
      q.protocol = *sg::trust::parse_protocol(ex.proto);
      if (port) q.port = static_cast<std::uint16_t>(*port);
      q.syn_only = ex.syn_only;
      auto e = sg::trust::explain(*p, sg::trust::ClientIdentity{client, std::nullopt, std::nullopt}, q);
      std::cout << (g.json ? sg::trust::to_json(e).dump(2) + "\n" : sg::trust::to_text(e));
      return e.verdict == sg::trust::Verdict::allowed ? 0 : 5;
    }
    nlohmann::json args = {{"to", dest->to_string()}, {"proto", ex.proto}, {"syn_only", ex.syn_only}};
    if (port) args["port"] = *port;
    if (!ex.vm.empty()) args["vm"] = ex.vm;
    if (!client.empty()) args["client"] = client;
    auto key = load_key(g, false, rc);
    if (rc != 0) return rc;
    auto r = call(g, "policy-explain", args, key ? &*key : nullptr, rc);
    if (!r) return rc;
    std::cout << (g.json ? (*r)["explanation"].dump(2) + "\n" : r->value("text", ""));
    return (*r)["explanation"].value("verdict", "") == "allowed" ? 0 : 5;
  }
  return 0;
}

}  // namespace

namespace {
int run_main(int argc, char** argv) {
  CLI::App app{"surrogatectl: allocate and manage surrogate VMs"};
  app.require_subcommand(1);
  Globals g;
  if (const char* s = std::getenv("SURROGATED_SOCKET")) g.socket = s;
  if (const char* k = std::getenv("SURROGATE_KEY")) g.key_file = k;
  app.add_option("--socket", g.socket, "control socket of surrogated (env SURROGATED_SOCKET)");
  app.add_option("-k,--key", g.key_file, "your private key file (env SURROGATE_KEY)");
  app.add_flag("--json", g.json, "print JSON for scripts");
  if (const char* r = std::getenv("SURROGATE_REMOTE")) g.remote = r;
  if (const char* c = std::getenv("SURROGATE_CERT")) g.cert_file = c;
  if (const char* c = std::getenv("SURROGATE_CACERT")) g.cacert_file = c;
  app.add_option("--remote", g.remote,
                 "use the host's HTTPS API at this URL, e.g. https://host:8443 (env SURROGATE_REMOTE)");
  app.add_option("--cert", g.cert_file, "with --remote: your client certificate for --key (env SURROGATE_CERT)");
  app.add_option("--cacert", g.cacert_file, "with --remote: the CA of the API's certificate (env SURROGATE_CACERT)");

  std::string keygen_file, keygen_type = "ed25519";
  auto* keygen = app.add_subcommand("keygen", "create a client key pair (FILE and FILE.pub)");
  keygen->add_option("file", keygen_file, "where to write the private key")->required();
  keygen->add_option("--type", keygen_type, "ed25519 (default) or p256")->check(CLI::IsMember({"ed25519", "p256"}));

  auto* fingerprint = app.add_subcommand("fingerprint", "print the fingerprint of your key (--key)");

  std::string tpl, lifetime, contact, title;
  auto* allocate = app.add_subcommand("allocate", "allocate a VM owned by your key");
  allocate->add_option("--template", tpl, "VM template (see surrogated.toml)");
  allocate->add_option("--lifetime", lifetime, "how long the VM lives, e.g. 2h (at most the template's maximum)");
  allocate->add_option("--contact", contact, "how the host owner can reach you (shown on abuse lookups)");
  allocate->add_option("--title", title, "what the VM is for");
  std::string client_addr;
  allocate->add_option("--client", client_addr,
                       "your machine's address(es), comma separated: always reachable from the VM");
  bool with_tunnel = false;
  allocate->add_flag("--tunnel", with_tunnel,
                     "a GRE tunnel to your --client address carries what the VM may not reach otherwise");

  std::string vm_name;
  auto* release = app.add_subcommand("release", "release a VM (yours, or any as admin)");
  release->add_option("vm", vm_name, "VM name, e.g. sg12")->required();
  auto* show = app.add_subcommand("show", "show one VM");
  show->add_option("vm", vm_name, "VM name, e.g. sg12")->required();
  bool mine = false;
  auto* list = app.add_subcommand("list", "list VMs (yours with --key; all as admin)");
  list->add_flag("--mine", mine, "as admin, list only the VMs of --key");
  auto* status = app.add_subcommand("status", "is the daemon up, and how full is the host");

  auto* policy = app.add_subcommand("policy", "check, show, reload and explain the trust policy");
  policy->require_subcommand(1);
  std::string policy_file;
  auto* p_check = policy->add_subcommand("check", "validate a policy file (no daemon needed)");
  p_check->add_option("file", policy_file, "trust-policy.toml")->required();
  auto* p_show = policy->add_subcommand("show", "the effective policy after defaults (of FILE, or the daemon's)");
  p_show->add_option("file", policy_file, "a policy file to show instead of the running one");
  auto* p_reload = policy->add_subcommand("reload", "make the daemon load its policy file again (admin)");
  std::string ex_client, ex_vm, ex_to, ex_proto = "tcp";
  bool ex_syn = false;
  auto* p_explain = policy->add_subcommand("explain", "would this traffic be allowed, and which rule decides?");
  p_explain->add_option("--client", ex_client, "client key fingerprint, or a public/private key file");
  p_explain->add_option("--vm", ex_vm, "a running VM (uses its level, addresses, client and holes)");
  p_explain->add_option("--to", ex_to, "destination ADDR or ADDR:PORT ([v6]:PORT)")->required();
  p_explain->add_option("--proto", ex_proto, "tcp, udp or icmp")->check(CLI::IsMember({"tcp", "udp", "icmp"}));
  p_explain->add_flag("--syn-only", ex_syn, "a bare TCP SYN, as TCP traceroute sends");
  p_explain->add_option("--policy", policy_file, "explain against this file instead of the running policy");

  auto* rules = app.add_subcommand("rules", "the nftables rules the daemon installed");
  rules->require_subcommand(1);
  auto* r_show = rules->add_subcommand("show", "print rules as nft text (one VM, or all as admin)");
  r_show->add_option("vm", vm_name, "VM name");

  auto* hole = app.add_subcommand("hole", "destinations opened by hand for one VM (admin)");
  hole->require_subcommand(1);
  std::string hole_to, hole_proto = "any", hole_for = "1h";
  std::int64_t hole_id = 0;
  auto* h_add = hole->add_subcommand("add", "let VM reach a destination until --for ends");
  h_add->add_option("vm", vm_name, "VM name")->required();
  h_add->add_option("to", hole_to, "PREFIX or PREFIX:PORTS, e.g. 203.0.113.0/24:443")->required();
  h_add->add_option("--proto", hole_proto, "tcp, udp, icmp or any")
      ->check(CLI::IsMember({"tcp", "udp", "icmp", "any"}));
  h_add->add_option("--for", hole_for, "how long, e.g. 30m (at most the VM's remaining lifetime)");
  auto* h_remove = hole->add_subcommand("remove", "close a hole now");
  h_remove->add_option("id", hole_id, "hole id (see hole list)")->required();
  auto* h_list = hole->add_subcommand("list", "open holes (of one VM, or all as admin)");
  h_list->add_option("vm", vm_name, "VM name");

  sg::ctl::LogCommands* log_cmds = sg::ctl::add_log_commands(app);
  sg::ctl::TunnelCommands* tunnel_cmds = sg::ctl::add_tunnel_commands(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  int rc = 0;
  if (auto r = sg::ctl::run_log_commands(log_cmds, g)) return *r;
  if (auto r = sg::ctl::run_tunnel_commands(tunnel_cmds, g)) return *r;
  if (keygen->parsed()) {
    auto kp =
        sg::certs::KeyPair::generate(keygen_type == "p256" ? sg::certs::KeyType::p256 : sg::certs::KeyType::ed25519);
    if (!kp) return fail(kp.error().describe());
    if (auto st = kp->save(keygen_file); !st) return fail(st.error().describe(), 2);
    if (g.json) {
      std::cout << nlohmann::json{{"key", keygen_file},
                                  {"public", keygen_file + ".pub"},
                                  {"fingerprint", kp->public_key().fingerprint()}}
                       .dump(2)
                << "\n";
    } else {
      std::cout << "wrote " << keygen_file << " (private, keep it safe) and " << keygen_file << ".pub\n"
                << "fingerprint " << kp->public_key().fingerprint() << "\n";
    }
    return 0;
  }
  if (fingerprint->parsed()) {
    auto key = load_key(g, true, rc);
    if (!key) return rc;
    std::cout << key->public_key().fingerprint() << "\n";
    return 0;
  }
  if (allocate->parsed()) {
    auto key = load_key(g, true, rc);
    if (!key) return rc;
    nlohmann::json args = nlohmann::json::object();
    if (!tpl.empty()) args["template"] = tpl;
    if (!lifetime.empty()) {
      if (auto d = sg::parse_duration(lifetime); !d) return fail("--lifetime: " + d.error().message, 2);
      args["lifetime"] = lifetime;
    }
    if (!contact.empty()) args["contact"] = contact;
    if (!title.empty()) args["title"] = title;
    if (!client_addr.empty()) args["client"] = client_addr;
    if (with_tunnel) args["tunnel"] = true;
    auto r = call(g, "allocate", args, &*key, rc);
    if (!r) return rc;
    if (g.json) {
      std::cout << r->dump(2) << "\n";
    } else {
      std::cout << "allocated " << r->value("name", "") << "\n";
      print_vm(*r);
    }
    return 0;
  }
  if (release->parsed() || show->parsed()) {
    auto key = load_key(g, false, rc);
    if (rc != 0) return rc;
    auto r = call(g, release->parsed() ? "release" : "show", {{"vm", vm_name}}, key ? &*key : nullptr, rc);
    if (!r) return rc;
    if (g.json) {
      std::cout << r->dump(2) << "\n";
    } else if (release->parsed()) {
      std::cout << "released " << vm_name << " (" << r->value("reason", "") << ")\n";
    } else {
      print_vm(*r);
    }
    return 0;
  }
  if (list->parsed()) {
    auto key = load_key(g, false, rc);
    if (rc != 0) return rc;
    auto r = call(g, "list", {{"mine", mine}}, key ? &*key : nullptr, rc);
    if (!r) return rc;
    if (g.json) {
      std::cout << r->dump(2) << "\n";
      return 0;
    }
    if (r->empty()) {
      std::cout << "no VMs\n";
      return 0;
    }
    std::cout << std::left << std::setw(8) << "VM" << std::setw(22) << "OWNER" << std::setw(14) << "TRUST"
              << std::setw(17) << "IPV4" << std::setw(24) << "IPV6" << std::setw(10) << "EXPIRES"
              << "TITLE\n";
    for (const auto& v : *r) {
      std::cout << std::setw(8) << v.value("name", "") << std::setw(22) << short_fp(v.value("owner", ""))
                << std::setw(14) << v.value("trust_level", "") << std::setw(17) << v.value("ipv4", "") << std::setw(24)
                << v.value("ipv6", "") << std::setw(10) << ("in " + sg::format_duration(v.value("remaining_s", 0)))
                << v.value("title", "") << "\n";
    }
    return 0;
  }
  if (policy->parsed())
    return run_policy(g, p_check, p_show, p_reload, p_explain, policy_file,
                      ExplainArgs{ex_client, ex_vm, ex_to, ex_proto, ex_syn});
  if (rules->parsed()) {
    auto key = load_key(g, false, rc);
    if (rc != 0) return rc;
    nlohmann::json args = nlohmann::json::object();
    if (!vm_name.empty()) args["vm"] = vm_name;
    auto r = call(g, "rules-show", args, key ? &*key : nullptr, rc);
    if (!r) return rc;
    std::cout << (g.json ? r->dump(2) + "\n" : r->value("text", ""));
    return 0;
  }
  if (hole->parsed()) {
    auto key = load_key(g, false, rc);
    if (rc != 0) return rc;
    const sg::certs::KeyPair* k = key ? &*key : nullptr;
    std::optional<nlohmann::json> r;
    if (h_add->parsed()) {
      r = call(g, "hole-add", {{"vm", vm_name}, {"to", hole_to}, {"proto", hole_proto}, {"for", hole_for}}, k, rc);
    } else if (h_remove->parsed()) {
      r = call(g, "hole-remove", {{"id", hole_id}}, k, rc);
    } else {
      nlohmann::json args = nlohmann::json::object();
      if (!vm_name.empty()) args["vm"] = vm_name;
      r = call(g, "hole-list", args, k, rc);
    }
    if (!r) return rc;
    if (g.json || h_list->parsed() == false) {
      std::cout << r->dump(2) << "\n";
      return 0;
    }
    if (r->empty()) std::cout << "no open holes\n";
    for (const auto& h : *r) {
      std::cout << h.value("id", 0) << "  " << h.value("vm", "") << "  " << h.value("to", "") << "  proto "
                << h.value("protocol", 0) << "  ports " << h.value("ports", "") << "  until " << h.value("expires", "")
                << "  (" << h.value("origin", "") << ")\n";
    }
    return 0;
  }
  if (status->parsed()) {
    auto r = call(g, "status", nlohmann::json::object(), nullptr, rc);
    if (!r) return rc;
    if (g.json) {
      std::cout << r->dump(2) << "\n";
    } else {
      std::cout << "surrogated " << r->value("version", "") << " up " << sg::format_duration(r->value("uptime_s", 0))
                << ", libvirt " << r->value("libvirt", "") << "\n"
                << r->value("vms", 0) << " VMs running, " << r->value("slots_free", 0) << " of " << r->value("slots", 0)
                << " slots free\n";
      if (r->contains("tunnel_endpoint")) {
        std::cout << "tunnel endpoint: " << r->value("tunnel_endpoint", "") << ", " << r->value("tunnels", 0)
                  << " tunnels up\n";
      }
    }
    return 0;
  }
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  return sg::guarded_main("surrogatectl", [&] { return run_main(argc, argv); });
}
