// Authcerts on the host: the PKI the owner trusts, the host's own CA for
// virtual nodes, and the path from a submitted authcert to a hole in the
// kernel. A rejected authcert never changes the ruleset.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "certs/authcert.h"
#include "certs/host_ca.h"
#include "certs/pki.h"
#include "surrogated/config.h"
#include "surrogated/enforcer.h"
#include "surrogated/event_source.h"
#include "surrogated/state_store.h"
#include "surrogated/vm_manager.h"

namespace sg {

// An authcert whose holes were closed because it no longer verifies (its
// signer's certificate revoked, a trust anchor removed...).
struct ClosedAuthcert {
  std::string id;
  std::string vm;
  std::string reason;
  std::size_t holes = 0;
};

struct SubmittedAuthcert {
  certs::VerifiedAuthcert cert;
  std::vector<HoleRecord> holes;
};

class AuthcertService final : public VmObserver, public EventSource {
 public:
  static Result<std::unique_ptr<AuthcertService>> open(const DaemonConfig& cfg, StateStore& store, Enforcer& enforcer);

  // Verifies `bytes` for `vm` (its owner's key must be the authcert's user)
  // and opens its holes in one transaction. Errors start with the reject
  // reason ("revoked: ..."), see certs::reject_reason_of().
  Result<SubmittedAuthcert> submit(const VmRecord& vm, std::string_view bytes, std::int64_t now);
  // Reads the trust anchors and CRL files again (SIGHUP, `surrogatectl
  // policy reload`); on error the previous set stays in force. Then every
  // authcert in force is verified again and the holes of those that no
  // longer verify are closed.
  Result<std::vector<ClosedAuthcert>> reload(std::int64_t now);
  // Decisions the daemon records in its audit table (actor, action, subject, details).
  using Audit = std::function<void(const std::string&, const std::string&, const std::string&, const nlohmann::json&)>;
  void set_audit(Audit audit) { audit_ = std::move(audit); }
  // Closes every hole of the authcert and refuses it from now on.
  Result<std::vector<HoleRecord>> revoke(const std::string& id, std::int64_t now);
  // A node certificate for the VM from the host CA, never outliving its lease.
  Result<certs::IssuedCert> issue_vm_cert(const VmRecord& vm, const std::vector<IpAddress>& addresses,
                                          const std::optional<std::string>& public_key_pem, std::int64_t now);
  Result<std::string> crl_pem(std::int64_t now) const { return host_ca_->crl_pem(now); }
  [[nodiscard]] const std::string& host_ca_pem() const { return host_ca_->cert_pem(); }

  // A released VM's certificates are revoked and its holes recorded closed
  // (the enforcer removes its chains and sets with them).
  void released(const VmRecord& vm, const VmAddresses& addr) override;

  [[nodiscard]] int event_fd() const override { return -1; }  // timer only
  void on_event_ready() override {}
  void on_tick() override;

  [[nodiscard]] std::uint64_t accepted() const { return accepted_; }
  [[nodiscard]] const std::map<std::string, std::uint64_t>& rejected() const { return rejected_; }
  [[nodiscard]] const certs::PkiStore& pki() const { return *pki_; }

 private:
  AuthcertService(const DaemonConfig& cfg, StateStore& store, Enforcer& enforcer, certs::HostCa ca)
      : cfg_(cfg), store_(store), enforcer_(enforcer), host_ca_(std::make_unique<certs::HostCa>(std::move(ca))) {}
  // Rebuilds the PKI store: the owner's CA and CRL files plus the host CA and
  // its current CRL. On error the previous store stays in force.
  Status reload_pki(std::int64_t now);
  // After every PKI reload: authcerts in force that no longer verify lose their holes.
  std::vector<ClosedAuthcert> reverify(std::int64_t now);
  Error reject(const Error& e);

  const DaemonConfig& cfg_;
  StateStore& store_;
  Enforcer& enforcer_;
  std::unique_ptr<certs::HostCa> host_ca_;
  std::unique_ptr<certs::PkiStore> pki_;
  std::int64_t last_crl_publish_ = 0;
  std::uint64_t accepted_ = 0;
  std::map<std::string, std::uint64_t> rejected_;
  Audit audit_;
};

// The holes one verified authcert opens for one VM: one per protocol and
// port range, closing at the earlier of the authcert's end and the VM's.
std::vector<HoleRecord> holes_for(const certs::VerifiedAuthcert& cert, const VmRecord& vm, std::int64_t now);

}  // namespace sg
