// surrogatectl: authcerts, the host's PKI, the flow log and the complaint
// lookup, the block list and the audit trail.
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "certs/authcert.h"
#include "certs/pki.h"
#include "common/timeutil.h"
#include "surrogated/ctl_common.h"

namespace sg::ctl {

struct LogCommands {
  CLI::App* authcert = nullptr;
  CLI::App *a_sign = nullptr, *a_verify = nullptr, *a_submit = nullptr, *a_list = nullptr, *a_revoke = nullptr;
  std::string node_key, node_cert, user_key, to, proto = "any", valid_for = "1d", not_before, out_file, file, vm, id;
  std::vector<std::string> chain, ca_files, crl_files;
  std::uint64_t rate_kbit = 0;

  CLI::App* pki = nullptr;
  CLI::App *p_crl = nullptr, *p_ca = nullptr, *p_anchors = nullptr, *p_vm_cert = nullptr;
  std::string public_key_file;

  CLI::App *flows = nullptr, *who_sent = nullptr, *drops = nullptr, *top = nullptr;
  std::string client, reason, since, until, at, by = "bytes";
  int port = 0, limit = 0;

  CLI::App *block = nullptr, *unblock = nullptr, *blocks = nullptr;
  std::string prefix;

  CLI::App* audit = nullptr;
  CLI::App *au_list = nullptr, *au_verify = nullptr;
};

namespace {

std::optional<std::string> read_file(const std::string& path, int& rc) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    rc = fail("cannot read " + path + " (check the path and its permissions)", 2);
    return std::nullopt;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A fingerprint, or the fingerprint of a public or private key file.
std::optional<std::string> user_fingerprint(const std::string& arg, int& rc) {
  if (arg.rfind("sha256:", 0) == 0) return arg;
  auto text = read_file(arg, rc);
  if (!text) return std::nullopt;
  if (auto pub = certs::PublicKey::from_pem(*text)) return pub->fingerprint();
  if (auto kp = certs::KeyPair::from_pem(*text, arg)) return kp->public_key().fingerprint();
  rc = fail("--user-key: " + arg + " is neither a fingerprint (sha256:...) nor a key file", 2);
  return std::nullopt;
}

std::string proto_name(int p) {
  switch (p) {
    case 1: return "icmp";
    case 6: return "tcp";
    case 17: return "udp";
    case 47: return "gre";
    case 58: return "icmp6";
    default: return std::to_string(p);
  }
}

std::string ms_time(const nlohmann::json& v) {
  if (!v.is_number()) return "-";
  return format_utc(v.get<std::int64_t>() / 1000);
}

void print_flows(const nlohmann::json& rows) {
  if (rows.empty()) {
    std::cout << "no flows\n";
    return;
  }
  std::cout << std::left << std::setw(21) << "START" << std::setw(7) << "VM" << std::setw(6) << "PROTO" << std::setw(42)
            << "SOURCE -> DESTINATION" << std::setw(12) << "BYTES OUT" << std::setw(12) << "BYTES IN" << std::setw(8)
            << "PATH"
            << "CLIENT\n";
  for (const auto& f : rows) {
    std::string src = f.value("src", "");
    std::string dst = f.value("dst", "");
    if (f.contains("dport") && f["dport"].is_number()) dst += ":" + std::to_string(f["dport"].get<int>());
    std::cout << std::setw(21) << ms_time(f["start_ms"]) << std::setw(7) << f.value("vm", "") << std::setw(6)
              << proto_name(f.value("proto", 0)) << std::setw(42) << (src + " -> " + dst) << std::setw(12)
              << f.value("orig_bytes", 0) << std::setw(12) << f.value("reply_bytes", 0) << std::setw(8)
              << f.value("path", "") << f.value("client_fp", "").substr(0, 19) << "\n";
  }
}

}  // namespace

LogCommands* add_log_commands(CLI::App& app) {
  static LogCommands commands;  // one set of subcommands per process
  auto* c = &commands;
  c->authcert = app.add_subcommand("authcert", "authcerts: a node's signed consent to be reached by your VMs");
  c->authcert->require_subcommand(1);
  c->a_sign = c->authcert->add_subcommand("sign", "sign an authcert (for node owners; no daemon needed)");
  c->a_sign->add_option("--node-key", c->node_key, "the node's private key (PEM, P-256)")->required();
  c->a_sign->add_option("--node-cert", c->node_cert, "the node's certificate (iPAddress SAN covering --to)")
      ->required();
  c->a_sign->add_option("--chain", c->chain, "intermediate CA certificates to embed");
  c->a_sign->add_option("--user-key", c->user_key, "the client's public key file, or its fingerprint")->required();
  c->a_sign->add_option("--to", c->to, "ADDR[/LEN][:PORTS] the node grants, e.g. 203.0.113.18:8080")->required();
  c->a_sign->add_option("--proto", c->proto, "any, or a list of tcp, udp, icmp");
  c->a_sign->add_option("--rate", c->rate_kbit, "rate the node asks for, kbit/s");
  c->a_sign->add_option("--valid-for", c->valid_for, "how long, e.g. 7d");
  c->a_sign->add_option("--not-before", c->not_before, "start (default now), e.g. 2026-11-26T14:00:00Z");
  c->a_sign->add_option("-o,--output", c->out_file, "write here instead of stdout");
  c->a_verify = c->authcert->add_subcommand("verify", "check an authcert against CA files (no daemon needed)");
  c->a_verify->add_option("file", c->file, "authcert (PEM or DER)")->required();
  c->a_verify->add_option("--ca", c->ca_files, "trusted CA file(s)")->required();
  c->a_verify->add_option("--crl", c->crl_files, "CRL file(s)");
  c->a_verify->add_option("--user-key", c->user_key, "expected client key file or fingerprint");
  c->a_submit = c->authcert->add_subcommand("submit", "submit an authcert for one of your VMs: opens its hole");
  c->a_submit->add_option("vm", c->vm, "VM name")->required();
  c->a_submit->add_option("file", c->file, "authcert file")->required();
  c->a_list = c->authcert->add_subcommand("list", "authcerts in force (of one VM, or yours, or all as admin)");
  c->a_list->add_option("vm", c->vm, "VM name");
  c->a_revoke = c->authcert->add_subcommand("revoke", "close an authcert's holes now and refuse it from now on");
  c->a_revoke->add_option("id", c->id, "authcert id")->required();

  c->pki = app.add_subcommand("pki", "the host's PKI: its CA for virtual nodes, its CRL, the trust anchors");
  c->pki->require_subcommand(1);
  c->p_crl = c->pki->add_subcommand("crl", "print the host CA's current CRL (PEM)");
  c->p_ca = c->pki->add_subcommand("ca", "print the host CA's certificate (PEM)");
  c->p_anchors = c->pki->add_subcommand("anchors", "the CAs trusted for authcerts");
  c->p_vm_cert = c->pki->add_subcommand("vm-cert", "a node certificate for your VM (never outlives its lease)");
  c->p_vm_cert->add_option("vm", c->vm, "VM name")->required();
  c->p_vm_cert->add_option("--public-key", c->public_key_file, "certify this key (default: a new key is made)");
  c->p_vm_cert->add_option("-o,--output", c->out_file, "file prefix: writes PREFIX.pem (and PREFIX.key)");

  auto window = [c](CLI::App* a) {
    a->add_option("--since", c->since, "from (2026-11-26T14:00:00Z, unix seconds, or 30m ago)");
    a->add_option("--until", c->until, "to");
    a->add_option("--limit", c->limit, "at most this many rows");
  };
  c->flows = app.add_subcommand("flows", "flows from the flow log (yours; all as admin)");
  c->flows->add_option("--vm", c->vm, "VM name");
  c->flows->add_option("--client", c->client, "client key fingerprint");
  c->flows->add_option("--to", c->to, "destination address or prefix");
  c->flows->add_option("--port", c->port, "destination port");
  window(c->flows);
  c->who_sent = app.add_subcommand("who-sent", "the complaint lookup: which VM and client sent to ADDR, and when");
  c->who_sent->add_option("address", c->to, "the address or prefix named in the complaint")->required();
  c->who_sent->add_option("--at", c->at, "around this time (5 minutes either side)");
  window(c->who_sent);
  c->drops = app.add_subcommand("drops", "dropped packets, with the reason");
  c->drops->add_option("--vm", c->vm, "VM name");
  c->drops->add_option("--reason", c->reason, "e.g. reserved, spoof-ip, closed-port");
  c->drops->add_option("--to", c->to, "destination address or prefix");
  window(c->drops);
  c->top = app.add_subcommand("top", "the VMs that sent the most (admin)");
  c->top->add_option("--by", c->by, "bytes or flows")->check(CLI::IsMember({"bytes", "flows"}));
  window(c->top);

  c->block = app.add_subcommand("block", "block a destination prefix for every VM at once (admin)");
  c->block->add_option("prefix", c->prefix, "e.g. 203.0.113.7 or 203.0.113.0/24")->required();
  c->block->add_option("--reason", c->reason, "why, e.g. the complaint's reference")->required();
  c->unblock = app.add_subcommand("unblock", "remove a prefix from the runtime block list (admin)");
  c->unblock->add_option("prefix", c->prefix, "as given to block")->required();
  c->blocks = app.add_subcommand("blocks", "the runtime block list (admin)");

  c->audit = app.add_subcommand("audit", "the audit trail of every admin and client action (admin)");
  c->audit->require_subcommand(1);
  c->au_list = c->audit->add_subcommand("list", "audit rows");
  c->au_list->add_option("--since", c->since, "from");
  c->au_list->add_option("--limit", c->limit, "at most this many rows");
  c->au_verify = c->audit->add_subcommand("verify", "check the hash chain: silent edits are detected");
  return c;
}

std::optional<int> run_log_commands(LogCommands* c, const Globals& g) {
  int rc = 0;
  auto keyed = [&](const std::string& op, const nlohmann::json& args) -> std::optional<nlohmann::json> {
    auto key = load_key(g, false, rc);
    if (rc != 0) return std::nullopt;
    return call(g, op, args, key ? &*key : nullptr, rc);
  };
  auto window_args = [&](nlohmann::json& args) {
    if (!c->since.empty()) args["since"] = c->since;
    if (!c->until.empty()) args["until"] = c->until;
    if (c->limit > 0) args["limit"] = c->limit;
  };

  if (c->a_sign->parsed()) {
    auto key = read_file(c->node_key, rc);
    auto cert = key ? read_file(c->node_cert, rc) : std::nullopt;
    if (!cert) return rc;
    std::vector<std::string> chain;
    for (const auto& f : c->chain) {
      auto pem = read_file(f, rc);
      if (!pem) return rc;
      chain.push_back(*pem);
    }
    auto fp = user_fingerprint(c->user_key, rc);
    if (!fp) return rc;
    certs::AuthcertContent content;
    content.id = certs::new_authcert_id();
    content.user_fingerprint = *fp;
    // ADDR[/LEN][:PORTS], IPv6 in brackets.
    std::string dest = c->to, ports;
    if (!dest.empty() && dest.front() == '[') {
      auto close = dest.find(']');
      if (close == std::string::npos) return fail("--to: missing ']' in " + c->to, 2);
      if (close + 1 < dest.size() && dest[close + 1] == ':') ports = dest.substr(close + 2);
      dest = dest.substr(1, close - 1);
    } else if (std::count(dest.begin(), dest.end(), ':') == 1) {
      ports = dest.substr(dest.find(':') + 1);
      dest = dest.substr(0, dest.find(':'));
    }
    auto prefix = Prefix::parse(dest);
    if (!prefix) return fail("--to: " + prefix.error().message, 2);
    content.destination = *prefix;
    auto protos = certs::parse_protocols(c->proto);
    if (!protos) return fail("--proto: " + protos.error().message, 2);
    content.protocols = *protos;
    if (!ports.empty()) {
      auto pr = certs::parse_port_ranges(ports);
      if (!pr) return fail("--to ports: " + pr.error().message, 2);
      content.ports = *pr;
      if (c->proto == "any") content.protocols = {certs::Protocol::tcp, certs::Protocol::udp};
    }
    if (c->rate_kbit > 0) content.rate_kbit = c->rate_kbit;
    std::int64_t now = now_unix();
    content.not_before = now;
    if (!c->not_before.empty()) {
      auto t = parse_utc(c->not_before);
      if (!t) return fail("--not-before: " + t.error().message, 2);
      content.not_before = *t;
    }
    auto d = parse_duration(c->valid_for);
    if (!d || *d <= 0)
      return fail("--valid-for: " + (d ? std::string("must be longer than zero") : d.error().message), 2);
    content.not_after = content.not_before + *d;
    auto signed_pem = certs::sign_authcert(content, *key, *cert, chain);
    if (!signed_pem) return fail(signed_pem.error().describe());
    if (c->out_file.empty()) {
      std::cout << *signed_pem;
    } else {
      std::ofstream(c->out_file) << *signed_pem;
      std::cerr << "wrote authcert " << content.id << " to " << c->out_file << "\n";
    }
    return 0;
  }
  if (c->a_verify->parsed()) {
    auto bytes = read_file(c->file, rc);
    if (!bytes) return rc;
    certs::PkiConfig pc;
    pc.ca_files = c->ca_files;
    pc.crl_files = c->crl_files;
    pc.crl_mode = certs::CrlMode::when_present;
    auto pki = certs::PkiStore::load(pc);
    if (!pki) return fail(pki.error().describe(), 2);
    certs::VerifyOptions opt;
    if (!c->user_key.empty()) {
      auto fp = user_fingerprint(c->user_key, rc);
      if (!fp) return rc;
      opt.expected_user_fingerprint = *fp;
    }
    auto v = certs::verify_authcert(*bytes, *pki, now_unix(), opt);
    if (!v) return fail("authcert NOT valid: " + v.error().message, 5);
    const auto& ct = v->content;
    std::cout << "authcert " << ct.id << " is valid\n"
              << "  for client  " << ct.user_fingerprint << "\n"
              << "  grants      " << ct.destination.to_string() << " " << certs::format_protocols(ct.protocols) << " "
              << certs::format_port_ranges(ct.ports) << "\n"
              << "  valid       " << format_utc(ct.not_before) << " .. " << format_utc(v->effective_not_after) << "\n"
              << "  signed by   " << v->signer_subject << "\n";
    return 0;
  }
  if (c->a_submit->parsed()) {
    auto bytes = read_file(c->file, rc);
    if (!bytes) return rc;
    auto r = keyed("authcert-submit", {{"vm", c->vm}, {"authcert", *bytes}});
    if (!r) return rc;
    if (g.json) {
      std::cout << r->dump(2) << "\n";
    } else {
      std::cout << "authcert " << r->value("id", "") << " accepted: " << c->vm << " may reach "
                << r->value("destination", "") << " (" << r->value("protocols", "") << " " << r->value("ports", "")
                << ") until " << r->value("expires", "") << "\n  signed by " << r->value("signer", "") << "\n";
    }
    return 0;
  }
  if (c->a_list->parsed()) {
    nlohmann::json args = nlohmann::json::object();
    if (!c->vm.empty()) args["vm"] = c->vm;
    auto r = keyed("authcert-list", args);
    if (!r) return rc;
    if (g.json) {
      std::cout << r->dump(2) << "\n";
    } else if (r->empty()) {
      std::cout << "no authcerts in force\n";
    } else {
      for (const auto& a : *r) {
        std::cout << a.value("id", "") << "  " << a.value("vm", "") << "  " << a.value("destination", "") << "  until "
                  << a.value("expires", "") << "  (" << a["holes"].size() << " hole(s))\n";
      }
    }
    return 0;
  }
  if (c->a_revoke->parsed()) {
    auto r = keyed("authcert-revoke", {{"id", c->id}});
    if (!r) return rc;
    std::cout << (g.json ? r->dump(2)
                         : "authcert " + c->id + " revoked; " + std::to_string(r->value("holes_closed", 0)) +
                               " hole(s) closed")
              << "\n";
    return 0;
  }
  if (c->pki->parsed()) {
    nlohmann::json args;
    if (c->p_crl->parsed()) args = {{"what", "crl"}};
    if (c->p_ca->parsed()) args = {{"what", "ca"}};
    if (c->p_anchors->parsed()) args = {{"what", "anchors"}};
    if (c->p_vm_cert->parsed()) {
      args = {{"what", "vm-cert"}, {"vm", c->vm}};
      if (!c->public_key_file.empty()) {
        auto pem = read_file(c->public_key_file, rc);
        if (!pem) return rc;
        args["public_key"] = *pem;
      }
    }
    auto r = keyed("pki", args);
    if (!r) return rc;
    if (g.json) {
      std::cout << r->dump(2) << "\n";
    } else if (c->p_anchors->parsed()) {
      for (const auto& a : (*r)["anchors"]) {
        std::cout << a.value("subject", "") << "  until " << a.value("not_after", "") << "  (" << a.value("origin", "")
                  << ")\n";
      }
      std::cout << (*r)["crls"] << " CRL(s) loaded\n";
    } else if (c->p_vm_cert->parsed()) {
      if (c->out_file.empty()) {
        std::cout << r->value("cert", "") << r->value("key", "");
      } else {
        std::ofstream(c->out_file + ".pem") << r->value("cert", "");
        if (!r->value("key", "").empty()) {
          std::ofstream(c->out_file + ".key") << r->value("key", "");
        }
        std::cerr << "wrote " << c->out_file << ".pem (valid until " << r->value("not_after", "") << ")\n";
      }
    } else {
      std::cout << r->value("pem", "");
    }
    return 0;
  }
  if (c->flows->parsed() || c->drops->parsed()) {
    nlohmann::json args = nlohmann::json::object();
    if (!c->vm.empty()) args["vm"] = c->vm;
    if (!c->to.empty()) args["to"] = c->to;
    window_args(args);
    if (c->flows->parsed()) {
      if (!c->client.empty()) args["client"] = c->client;
      if (c->port > 0) args["port"] = c->port;
    } else if (!c->reason.empty()) {
      args["reason"] = c->reason;
    }
    auto r = keyed(c->flows->parsed() ? "flows" : "drops", args);
    if (!r) return rc;
    if (g.json) {
      std::cout << r->dump(2) << "\n";
    } else if (c->flows->parsed()) {
      print_flows(*r);
    } else {
      if (r->empty()) std::cout << "no drops\n";
      for (const auto& d : *r) {
        std::cout << ms_time(d["time_ms"]) << "  " << std::left << std::setw(6) << d.value("vm", "?") << std::setw(13)
                  << d.value("reason", "") << d.value("src", "") << " -> " << d.value("dst", "");
        if (d.value("suppressed", 0) > 0) std::cout << "  (+" << d.value("suppressed", 0) << " more)";
        std::cout << "\n";
      }
    }
    return 0;
  }
  if (c->who_sent->parsed()) {
    nlohmann::json args = {{"to", c->to}};
    if (!c->at.empty()) args["at"] = c->at;
    window_args(args);
    auto r = keyed("who-sent", args);
    if (!r) return rc;
    if (g.json) {
      std::cout << r->dump(2) << "\n";
      return 0;
    }
    std::cout << "traffic to " << r->value("to", "") << " between " << r->value("since", "") << " and "
              << r->value("until", "") << ":\n";
    if ((*r)["vms"].empty()) std::cout << "  nobody: no VM of this host sent to it in that time\n";
    for (const auto& v : (*r)["vms"]) {
      std::cout << "  " << v.value("vm", "") << " (" << v.value("trust_level", "") << ")  client "
                << v.value("client", "") << "\n    contact " << v.value("contact", "-") << ", " << v.value("flows", 0)
                << " flow(s), " << v.value("bytes_out", 0) << " bytes sent";
      if (!v["authcerts"].empty()) std::cout << ", allowed by authcert " << v["authcerts"].dump();
      std::cout << "\n";
    }
    print_flows((*r)["flows"]);
    return 0;
  }
  if (c->top->parsed()) {
    nlohmann::json args = {{"by", c->by}};
    window_args(args);
    auto r = keyed("top", args);
    if (!r) return rc;
    if (g.json) {
      std::cout << r->dump(2) << "\n";
      return 0;
    }
    std::cout << std::left << std::setw(8) << "VM" << std::setw(22) << "CLIENT" << std::setw(10) << "FLOWS"
              << std::setw(14) << "BYTES OUT"
              << "BYTES IN\n";
    for (const auto& t : *r) {
      std::cout << std::setw(8) << t.value("vm", "") << std::setw(22) << t.value("client_fp", "").substr(0, 19)
                << std::setw(10) << t.value("flows", 0) << std::setw(14) << t.value("bytes_out", 0)
                << t.value("bytes_in", 0) << "\n";
    }
    return 0;
  }
  if (c->block->parsed() || c->unblock->parsed()) {
    nlohmann::json args = {{"prefix", c->prefix}};
    if (!c->reason.empty()) args["reason"] = c->reason;
    auto r = keyed(c->block->parsed() ? "block" : "unblock", args);
    if (!r) return rc;
    std::cout << (g.json ? r->dump(2)
                         : (c->block->parsed() ? "blocked " : "unblocked ") + r->value("prefix", "") + " for every VM")
              << "\n";
    return 0;
  }
  if (c->blocks->parsed()) {
    auto r = keyed("blocks", nlohmann::json::object());
    if (!r) return rc;
    if (g.json) {
      std::cout << r->dump(2) << "\n";
    } else if (r->empty()) {
      std::cout << "the runtime block list is empty (the policy file may block more)\n";
    } else {
      for (const auto& b : *r) std::cout << b.value("prefix", "") << "  " << b.value("reason", "") << "\n";
    }
    return 0;
  }
  if (c->audit->parsed()) {
    nlohmann::json args = {{"what", c->au_verify->parsed() ? "verify" : "list"}};
    window_args(args);
    auto r = keyed("audit", args);
    if (!r) return rc;
    if (g.json) {
      std::cout << r->dump(2) << "\n";
    } else if (c->au_verify->parsed()) {
      std::cout << r->value("message", "") << "\n";
      return r->value("ok", false) ? 0 : 6;
    } else {
      for (const auto& e : *r) {
        std::cout << e.value("seq", 0) << "  " << ms_time(e["time_ms"]) << "  " << std::left << std::setw(26)
                  << e.value("actor", "").substr(0, 25) << std::setw(18) << e.value("action", "")
                  << e.value("subject", "") << "\n";
      }
    }
    return 0;
  }
  return std::nullopt;
}

}  // namespace sg::ctl
