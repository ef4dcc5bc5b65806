#include "surrogated/authcerts.h"

#include <netinet/in.h>

#include <algorithm>

#include "common/log.h"
#include "common/timeutil.h"
#include "netpolicy/tc_plan.h"

namespace sg {

std::vector<HoleRecord> holes_for(const certs::VerifiedAuthcert& cert, const VmRecord& vm, std::int64_t now) {
  std::vector<HoleRecord> out;
  const auto& c = cert.content;
  auto base = [&] {
    HoleRecord h;
    h.vm_id = vm.id;
    h.vm_name = vm.name;
    h.destination = c.destination.to_string();
    h.expires = std::min(cert.effective_not_after, vm.expires);
    h.origin = "authcert";
    h.authcert_id = c.id;
    h.created = now;
    h.rate_bps = c.rate_kbit ? *c.rate_kbit * 1000 : 0;
    return h;
  };
  for (auto proto : c.protocols) {
    switch (proto) {
      case certs::Protocol::any: {
        HoleRecord h = base();
        h.protocol = 0;
        out.push_back(h);
        break;
      }
      case certs::Protocol::icmp: {
        HoleRecord h = base();
        h.protocol = c.destination.family() == Family::v4 ? int{IPPROTO_ICMP} : int{IPPROTO_ICMPV6};
        out.push_back(h);
        break;
      }
      case certs::Protocol::tcp:
      case certs::Protocol::udp:
        for (const auto& r : c.ports) {
          HoleRecord h = base();
          h.protocol = proto == certs::Protocol::tcp ? IPPROTO_TCP : IPPROTO_UDP;
          h.port_first = r.first;
          h.port_last = r.last;
          out.push_back(h);
        }
        break;
    }
  }
  return out;
}

Result<std::unique_ptr<AuthcertService>> AuthcertService::open(const DaemonConfig& cfg, StateStore& store,
                                                               Enforcer& enforcer) {
  std::vector<Prefix> pool;
  if (cfg.pool_v4) pool.push_back(*cfg.pool_v4);
  if (cfg.pool_v6) pool.push_back(*cfg.pool_v6);
  std::int64_t now = now_unix();
  auto ca = certs::HostCa::create_or_load(cfg.state_dir + "/host-ca", pool, now);
  if (!ca) return with_context("host CA in " + cfg.state_dir + "/host-ca", ca.error());
  std::unique_ptr<AuthcertService> svc(new AuthcertService(cfg, store, enforcer, std::move(*ca)));
  if (auto st = svc->reload_pki(now); !st) return st.error();
  if (auto st = svc->host_ca_->publish_crl(now); !st) return st.error();
  svc->last_crl_publish_ = now;
  if (cfg.pki_ca_files.empty()) {
    log::notice("pki: no [pki] ca_files configured; only the host's own CA (virtual nodes) is trusted for authcerts");
  } else if (cfg.pki_crl_files.empty()) {
    log::warning("pki: no [pki] crl_files configured; revocation of the owner's CAs' certificates is not checked");
  }
  return svc;
}

Status AuthcertService::reload_pki(std::int64_t now) {
  certs::PkiConfig pc;
  pc.ca_files = cfg_.pki_ca_files;
  pc.crl_files = cfg_.pki_crl_files;
  pc.crl_mode = cfg_.pki_crl_mode == "require-all" ? certs::CrlMode::require_all : certs::CrlMode::when_present;
  pc.extra_ca_pems = {host_ca_->cert_pem()};
  auto crl = host_ca_->crl_pem(now);
  if (!crl) return crl.error();
  pc.extra_crl_pems = {*crl};
  auto store = certs::PkiStore::load(pc);
  if (!store) return with_context("pki", store.error());
  pki_ = std::make_unique<certs::PkiStore>(std::move(*store));
  return {};
}

Result<std::vector<ClosedAuthcert>> AuthcertService::reload(std::int64_t now) {
  if (auto st = reload_pki(now); !st) {
    return with_context("the trust anchors or CRLs did not load; the previous ones stay in force", st.error());
  }
  return reverify(now);
}

std::vector<ClosedAuthcert> AuthcertService::reverify(std::int64_t now) {
  std::vector<ClosedAuthcert> closed;
  // Expired, revoked or released ones need no second look.
  if (auto pruned = store_.prune_authcert_bodies(now); !pruned) {
    log::warning("pki: " + pruned.error().describe());
  }
  auto in_force = store_.authcerts_in_force(now);
  if (!in_force) {
    log::error("pki: cannot list the authcerts in force: " + in_force.error().describe());
    return closed;
  }
  for (const auto& a : *in_force) {
    auto vm = store_.find_by_id(a.vm_id);
    if (!vm || !vm->has_value() || (*vm)->state == "released") continue;
    certs::VerifyOptions opt;
    opt.expected_user_fingerprint = (*vm)->owner_fp;
    auto cert = certs::verify_authcert(a.body, *pki_, now, opt);
    if (cert) continue;
    ClosedAuthcert c{a.id, (*vm)->name, cert.error().message, 0};
    auto holes = store_.holes_of_authcert(a.id);
    if (holes) {
      for (const auto& h : *holes) {
        if (h.vm_id != a.vm_id || h.expires <= now) continue;
        if (auto st = enforcer_.close_hole(&**vm, h, now, "authcert no longer verifies: " + c.reason); !st) {
          log::error("pki: closing hole " + std::to_string(h.id) + ": " + st.error().describe());
          continue;
        }
        ++c.holes;
      }
    }
    log::warning("pki: authcert " + a.id + " of " + c.vm + " no longer verifies (" + c.reason + "); closed " +
                 std::to_string(c.holes) + " hole(s)");
    if (audit_) audit_("daemon", "authcert-closed", c.vm, {{"id", c.id}, {"reason", c.reason}, {"holes", c.holes}});
    closed.push_back(std::move(c));
  }
  return closed;
}

Error AuthcertService::reject(const Error& e) {
  auto reason = certs::reject_reason_of(e);
  ++rejected_[reason ? std::string(certs::to_string(*reason)) : "other"];
  return e;
}

Result<SubmittedAuthcert> AuthcertService::submit(const VmRecord& vm, std::string_view bytes, std::int64_t now) {
  certs::VerifyOptions opt;
  opt.expected_user_fingerprint = vm.owner_fp;
  auto cert = certs::verify_authcert(bytes, *pki_, now, opt);
  if (!cert) return reject(cert.error());
  auto revoked = store_.authcert_revoked(cert->id());
  if (!revoked) return revoked.error();
  if (*revoked) {
    return reject(make_error("revoked: authcert " + cert->id() +
                             " was revoked on this host and cannot be used again; ask the node owner for a new one"));
  }
  auto holes = holes_for(*cert, vm, now);
  if (holes.empty() || holes.front().expires <= now) {
    return reject(make_error("expired: the authcert ends before it could be used"));
  }
  if (holes.front().rate_bps > 0) {
    // A rate of its own: one tc class for all of this authcert's holes.
    auto used = store_.used_hole_minors(now);
    if (!used) return used.error();
    std::uint32_t minor = netpolicy::kTcHoleMinorFirst;
    for (std::uint32_t u : *used) {
      if (u == minor) ++minor;
    }
    if (minor > netpolicy::kTcHoleMinorLast) {
      log::warning("shaping: every tc class for rated authcerts is in use; authcert " + cert->id() +
                   " shares the VM's nodes class");
      minor = 0;
    }
    for (auto& h : holes) h.tc_minor = minor;
  }
  // Open holes of this VM with exactly the same grant (an authcert renewed
  // before the old one ends): the new ones take their place, with their
  // expiry and class, in the same transaction.
  std::vector<HoleRecord> superseded;
  auto open = store_.open_holes(now, vm.id);
  if (!open) return open.error();
  for (const auto& o : *open) {
    const bool same = std::any_of(holes.begin(), holes.end(), [&](const HoleRecord& h) {
      return h.destination == o.destination && h.protocol == o.protocol && h.port_first == o.port_first &&
             h.port_last == o.port_last;
    });
    if (same) superseded.push_back(o);
  }
  for (auto& h : holes) {
    if (auto st = store_.insert_hole(h); !st) return st.error();
  }
  if (auto st = enforcer_.replace_holes(vm, superseded, holes); !st) {
    for (const auto& h : holes) (void)store_.remove_hole(h.id, now, "kernel refused: " + st.error().message);
    enforcer_.holes_closed(vm);  // a class made for them goes too
    return with_context("the kernel refused the hole (nothing was opened)", st.error());
  }
  if (!superseded.empty()) {
    for (const auto& o : superseded) (void)store_.remove_hole(o.id, now, "superseded by authcert " + cert->id());
    enforcer_.holes_closed(vm);
    log::info("pki: authcert " + cert->id() + " replaces " + std::to_string(superseded.size()) + " hole(s) of " +
              vm.name + " with the same grant");
  }
  ++accepted_;
  // Kept while its holes are open, for verifying it again on a PKI reload.
  if (auto st = store_.record_authcert_body(cert->id(), vm.id, bytes, now); !st) {
    log::error("pki: authcert " + cert->id() +
               " is open but could not be recorded for re-verification: " + st.error().describe());
  }
  return SubmittedAuthcert{*cert, holes};
}

Result<std::vector<HoleRecord>> AuthcertService::revoke(const std::string& id, std::int64_t now) {
  auto holes = store_.holes_of_authcert(id);
  if (!holes) return holes.error();
  if (auto st = store_.mark_authcert_revoked(id, now); !st) return st.error();
  std::vector<HoleRecord> closed;
  for (const auto& h : *holes) {
    auto vm = store_.find_active(h.vm_name);
    const VmRecord* active = vm && vm->has_value() ? &**vm : nullptr;
    if (auto st = enforcer_.close_hole(active, h, now, "authcert revoked"); !st) return st.error();
    closed.push_back(h);
  }
  return closed;
}

Result<certs::IssuedCert> AuthcertService::issue_vm_cert(const VmRecord& vm, const std::vector<IpAddress>& addresses,
                                                         const std::optional<std::string>& public_key_pem,
                                                         std::int64_t now) {
  certs::VmCertRequest req;
  req.vm_name = vm.name;
  req.addresses = addresses;
  req.public_key_pem = public_key_pem;
  req.lease_end = vm.expires;
  auto issued = host_ca_->issue_vm_cert(req, now);
  if (!issued) return issued.error();
  if (auto st = store_.record_vm_cert(vm.id, issued->serial, issued->not_after); !st) return st.error();
  return issued;
}

void AuthcertService::released(const VmRecord& vm, const VmAddresses& /*addr*/) {
  std::int64_t now = now_unix();
  if (auto holes = store_.open_holes(now, vm.id)) {
    for (const auto& h : *holes) (void)store_.remove_hole(h.id, now, "VM released");
  }
  auto serials = store_.vm_cert_serials(vm.id);
  if (!serials || serials->empty()) return;
  for (const auto& s : *serials) {
    if (auto st = host_ca_->revoke(s, now); !st) {
      log::error("pki: cannot revoke certificate " + s + " of " + vm.name + ": " + st.error().describe());
    }
  }
  if (auto st = reload_pki(now); !st) log::error("pki: " + st.error().describe());
  log::info("pki: revoked " + std::to_string(serials->size()) + " node certificate(s) of " + vm.name);
  // Authcerts that VM signed as a virtual node for other VMs close with it.
  (void)reverify(now);
}

void AuthcertService::on_tick() {
  std::int64_t now = now_unix();
  // The CRL must be renewed before its nextUpdate (two days): daily is ample.
  if (now - last_crl_publish_ < 86400) return;
  last_crl_publish_ = now;
  if (auto st = host_ca_->publish_crl(now); !st) log::error("pki: cannot publish CRL: " + st.error().describe());
  if (auto st = reload(now); !st) log::error("pki: " + st.error().describe());
}

}  // namespace sg
