// surrogatectl tunnel up / down / status (ask the daemon), and the client's
// end: tunnel client (sets it up and runs in the foreground until Ctrl-C)
// and tunnel client-config (prints the same as ip/nft commands).
#include "surrogated/ctl_tunnel_cmds.h"

#include <signal.h>

#include <iostream>
#include <sstream>

#include "tunnel/client.h"

namespace sg::ctl {

struct TunnelCommands {
  CLI::App* tunnel = nullptr;
  CLI::App *up = nullptr, *down = nullptr, *status = nullptr, *client = nullptr, *client_config = nullptr;
  std::string vm, remote, host, local, uplink, mode = "auto", vm_address, gre_key, dev;
  bool no_key = false;
  int mtu = 0;
};

namespace {

void print_tunnel(const nlohmann::json& t) {
  std::cout << t.value("vm", "") << "  " << t.value("device", "") << "  " << t.value("local", "") << " -> "
            << t.value("remote", "") << "  key " << (t["key"].is_null() ? std::string("none") : t["key"].dump())
            << "  mtu " << t.value("mtu", 0) << "  " << t.value("endpoint", "") << "\n";
  if (t.contains("stats")) {
    const auto& s = t["stats"];
    std::cout << "    into the tunnel " << s.value("tx_packets", 0) << " packets / " << s.value("tx_bytes", 0)
              << " bytes, out of it " << s.value("rx_packets", 0) << " / " << s.value("rx_bytes", 0) << ", refused "
              << s.value("rx_dropped", 0) << "\n";
  }
}

// Fills a ClientSetup from the flags, asking the daemon (tunnel-status, signed
// with --key) for what the flags leave out.
std::optional<tunnel::ClientSetup> client_setup(const TunnelCommands& c, const Globals& g, int& rc) {
  tunnel::ClientSetup s;
  s.vm = c.vm;
  s.uplink = c.uplink;
  s.device = c.dev;
  s.mtu = c.mtu;
  if (!c.local.empty()) {
    auto l = IpAddress::parse(c.local);
    if (!l) {
      rc = fail("--local: " + l.error().message, 2);
      return std::nullopt;
    }
    s.local = *l;
  }
  nlohmann::json info;
  if (c.vm_address.empty()) {
    auto key = load_key(g, false, rc);
    if (rc != 0) return std::nullopt;
    auto r = call(g, "tunnel-status", {{"vm", c.vm}}, key ? &*key : nullptr, rc);
    if (!r) return std::nullopt;
    info = (*r)["tunnels"].at(0);
    for (const char* k : {"vm_ipv4", "vm_ipv6"}) {
      if (auto a = IpAddress::parse(info.value(k, ""))) s.vm_addresses.push_back(*a);
    }
    if (!info["key"].is_null()) s.key = info["key"].get<std::uint32_t>();
    if (s.mtu == 0) s.mtu = info.value("mtu", 0);
  } else {
    std::stringstream ss(c.vm_address);
    std::string item;
    while (std::getline(ss, item, ',')) {
      auto a = IpAddress::parse(item);
      if (!a) {
        rc = fail("--vm-address: " + a.error().message, 2);
        return std::nullopt;
      }
      s.vm_addresses.push_back(*a);
    }
  }
  if (!c.gre_key.empty()) {
    if (c.gre_key == "none") {
      s.key.reset();
    } else {
      try {
        s.key = static_cast<std::uint32_t>(std::stoul(c.gre_key));
      } catch (const std::exception&) {
        rc = fail("--gre-key: give a number or 'none'", 2);
        return std::nullopt;
      }
    }
  }
  std::string host = !c.host.empty() ? c.host : info.value("host", "");
  auto h = IpAddress::parse(host);
  if (!h) {
    rc = fail("--host: the host's address is needed (" + h.error().message + ")", 2);
    return std::nullopt;
  }
  s.host = *h;
  if (s.local && s.local->family != s.host.family) {
    rc = fail("--local and --host must be of the same family", 2);
    return std::nullopt;
  }
  return s;
}

int run_client(const TunnelCommands& c, const Globals& g) {
  int rc = 0;
  auto s = client_setup(c, g, rc);
  if (!s) return rc;
  tunnel::EndpointKind kind = tunnel::EndpointKind::userspace;
  std::string why = "asked for";
  if (c.mode == "kernel") {
    kind = tunnel::EndpointKind::kernel;
  } else if (c.mode == "auto") {
    auto p = tunnel::probe_kernel_gre();
    kind = p.kind;
    why = p.reason;
  }
  // Signals are taken with sigwait: blocked before the endpoint's thread
  // starts, so that thread never sees them.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  auto t = tunnel::ClientTunnel::open(*s, kind);
  if (!t) return fail("tunnel client: " + t.error().describe() + " (nothing was left behind)", 1);
  const auto& cfg = (*t)->endpoint().config();
  std::cout << "tunnel " << cfg.device << " up for " << s->vm << ": " << tunnel::to_string(kind) << " endpoint (" << why
            << "), " << (cfg.local ? cfg.local->to_string() : std::string("*")) << " -> " << cfg.remote.to_string()
            << ", key " << (cfg.key ? std::to_string(*cfg.key) : std::string("none")) << ", mtu "
            << tunnel::effective_mtu(cfg) << "; masquerading the VM's traffic"
            << (s->uplink.empty() ? std::string() : " out of " + s->uplink) << "\n"
            << "Ctrl-C (or SIGTERM) tears it down." << std::endl;
  int sig = 0;
  sigwait(&mask, &sig);
  t->reset();
  std::cout << "tunnel " << cfg.device << " removed" << std::endl;
  return 0;
}

}  // namespace

TunnelCommands* add_tunnel_commands(CLI::App& app) {
  static TunnelCommands c;
  c.tunnel = app.add_subcommand("tunnel", "GRE tunnel from an untrusted VM back to your machine");
  c.tunnel->require_subcommand(1);
  c.up = c.tunnel->add_subcommand("up", "route what VM may not reach otherwise through your machine");
  c.up->add_option("vm", c.vm, "VM name")->required();
  c.up->add_option("--remote", c.remote, "your tunnel end (default: the VM's registered client address)");
  c.up->add_flag("--no-key", c.no_key, "plain GRE header without key (one such tunnel per client address)");
  c.down = c.tunnel->add_subcommand("down", "remove the VM's tunnel");
  c.down->add_option("vm", c.vm, "VM name")->required();
  c.status = c.tunnel->add_subcommand("status", "tunnels (of one VM, yours, or all as admin)");
  c.status->add_option("vm", c.vm, "VM name");
  for (auto* sub : {&c.client, &c.client_config}) {
    bool run = sub == &c.client;
    *sub = c.tunnel->add_subcommand(run ? "client" : "client-config",
                                    run ? "set up your end of the tunnel here and run it (foreground)"
                                        : "print your end of the tunnel as ip and nft commands (kernel GRE)");
    (*sub)->add_option("--vm", c.vm, "VM name")->required();
    (*sub)->add_option("--host", c.host, "the host's address (default: as the daemon reports it)");
    (*sub)->add_option("--local", c.local, "this machine's address towards the host");
    (*sub)->add_option("--uplink", c.uplink, "masquerade only out of this interface");
    (*sub)->add_option("--vm-address", c.vm_address, "the VM's addresses, comma separated (default: ask the daemon)");
    (*sub)->add_option("--gre-key", c.gre_key, "GRE key, or 'none' (default: ask the daemon)");
    (*sub)->add_option("--mtu", c.mtu, "inner MTU (default: the host's, or 1500 less the GRE overhead)");
    (*sub)->add_option("--dev", c.dev, "interface name (default sgc-VM)");
  }
  c.client->add_option("--mode", c.mode, "auto (probe the kernel), kernel or userspace")
      ->check(CLI::IsMember({"auto", "kernel", "userspace"}));
  return &c;
}

std::optional<int> run_tunnel_commands(TunnelCommands* c, const Globals& g) {
  if (!c->tunnel->parsed()) return std::nullopt;
  if (c->client->parsed()) return run_client(*c, g);
  int rc = 0;
  if (c->client_config->parsed()) {
    auto s = client_setup(*c, g, rc);
    if (!s) return rc;
    std::cout << tunnel::client_commands(*s);
    return 0;
  }
  auto key = load_key(g, false, rc);
  if (rc != 0) return rc;
  const certs::KeyPair* k = key ? &*key : nullptr;
  std::optional<nlohmann::json> r;
  if (c->up->parsed()) {
    nlohmann::json args = {{"vm", c->vm}, {"no_key", c->no_key}};
    if (!c->remote.empty()) args["remote"] = c->remote;
    r = call(g, "tunnel-up", args, k, rc);
    if (!r) return rc;
    if (g.json) {
      std::cout << r->dump(2) << "\n";
      return 0;
    }
    std::cout << "tunnel up: ";
    print_tunnel(*r);
    std::cout << "now run on your machine: surrogatectl tunnel client --vm " << c->vm << " --host "
              << r->value("local", "") << "\n";
    return 0;
  }
  if (c->down->parsed()) {
    r = call(g, "tunnel-down", {{"vm", c->vm}}, k, rc);
    if (!r) return rc;
    std::cout << (g.json ? r->dump(2) : "tunnel of " + c->vm + " removed") << "\n";
    return 0;
  }
  nlohmann::json args = nlohmann::json::object();
  if (!c->vm.empty()) args["vm"] = c->vm;
  r = call(g, "tunnel-status", args, k, rc);
  if (!r) return rc;
  if (g.json) {
    std::cout << r->dump(2) << "\n";
    return 0;
  }
  std::cout << "tunnel endpoint: " << r->value("endpoint", "") << "\n";
  if ((*r)["tunnels"].empty()) std::cout << "no tunnels\n";
  for (const auto& t : (*r)["tunnels"]) print_tunnel(t);
  return 0;
}

}  // namespace sg::ctl
