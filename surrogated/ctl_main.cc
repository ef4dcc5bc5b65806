// surrogatectl: command-line client of surrogated.
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>

#include "certs/identity.h"
#include "common/timeutil.h"
#include "surrogated/ctl_client.h"

namespace {

struct Globals {
  std::string socket = "/run/surrogated/control.sock";
  std::string key_file;
  bool json = false;
};

int fail(const std::string& message, int code = 1) {
  std::cerr << "surrogatectl: " << message << "\n";
  return code;
}

// Loads the client's key when --key (or SURROGATE_KEY) names one.
std::optional<sg::certs::KeyPair> load_key(const Globals& g, bool required, int& rc) {
  rc = 0;
  if (g.key_file.empty()) {
    if (required) {
      rc = fail("this command needs your key: pass --key FILE (create one with 'surrogatectl keygen FILE')", 2);
    }
    return std::nullopt;
  }
  auto k = sg::certs::KeyPair::load_pem_file(g.key_file);
  if (!k) {
    rc = fail(k.error().describe(), 2);
    return std::nullopt;
  }
  return std::move(*k);
}

// Calls the daemon; prints the error and returns nullopt on failure.
std::optional<nlohmann::json> call(const Globals& g, const std::string& op, const nlohmann::json& args,
                                   const sg::certs::KeyPair* key, int& rc) {
  auto resp = sg::call_daemon(g.socket, op, args, key);
  if (!resp) {
    rc = fail(resp.error().describe(), 3);
    return std::nullopt;
  }
  if (!(*resp).value("ok", false)) {
    std::string code = (*resp).value("code", "error");
    rc = fail((*resp).value("error", "unknown error") + " [" + code + "]", code == "not_found" ? 4 : 1);
    return std::nullopt;
  }
  rc = 0;
  return (*resp)["result"];
}

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
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"surrogatectl: allocate and manage surrogate VMs"};
  app.require_subcommand(1);
  Globals g;
  if (const char* s = std::getenv("SURROGATED_SOCKET")) g.socket = s;
  if (const char* k = std::getenv("SURROGATE_KEY")) g.key_file = k;
  app.add_option("--socket", g.socket, "control socket of surrogated (env SURROGATED_SOCKET)");
  app.add_option("-k,--key", g.key_file, "your private key file (env SURROGATE_KEY)");
  app.add_flag("--json", g.json, "print JSON for scripts");

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

  std::string vm_name;
  auto* release = app.add_subcommand("release", "release a VM (yours, or any as admin)");
  release->add_option("vm", vm_name, "VM name, e.g. sg12")->required();
  auto* show = app.add_subcommand("show", "show one VM");
  show->add_option("vm", vm_name, "VM name, e.g. sg12")->required();
  bool mine = false;
  auto* list = app.add_subcommand("list", "list VMs (yours with --key; all as admin)");
  list->add_flag("--mine", mine, "as admin, list only the VMs of --key");
  auto* status = app.add_subcommand("status", "is the daemon up, and how full is the host");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  int rc = 0;
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
    }
    return 0;
  }
  return 0;
}
