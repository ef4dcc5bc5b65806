// The host's own CA for virtual nodes: the host vouches for its VMs'
// addresses so one VM (a node) can sign authcerts that let another client's
// surrogates reach it. Its certificate's nameConstraints permit only the
// host's address pool, so even a stolen CA key cannot vouch for anyone
// else's address in a verifier that trusts it; VM certificates are
// short-lived (never beyond the VM's lease) and revoked in a CRL.
//
// State in `dir` (0700): ca.key (0600), ca.pem, issued.txt, revoked.txt,
// crl.pem (rewritten by revoke and publish_crl). Not thread-safe: the daemon
// serialises calls.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "certs/x509.h"
#include "common/net.h"
#include "common/raii/openssl.h"
#include "common/result.h"

namespace sg::certs {

struct HostCaOptions {
  std::string common_name = "surrogated host CA";
  std::int64_t ca_validity_seconds = 10LL * 365 * 86400;
  // nextUpdate - thisUpdate of every CRL; publish a new one well before (the
  // verifier rejects chains whose CRL is stale when CRLs are required).
  std::int64_t crl_validity_seconds = 2 * 86400;
  // notBefore of VM certificates is set this far back, for verifiers whose clocks lag.
  std::int64_t backdate_seconds = 300;
};

struct VmCertRequest {
  std::string vm_name;                        // the certificate's CN
  std::vector<IpAddress> addresses;           // iPAddress SANs; all must be in the pool
  std::optional<std::string> public_key_pem;  // unset: a P-256 key pair is made and returned
  std::int64_t lease_end = 0;                 // the certificate never outlives the lease
  std::optional<std::int64_t> not_after;      // requested end, capped at lease_end
};

struct IssuedCert {
  std::string cert_pem;
  std::string key_pem;  // the generated private key; empty when the request brought a public key
  std::string serial;   // lowercase hex
  std::string fingerprint;
  std::int64_t not_before = 0;
  std::int64_t not_after = 0;
};

struct IssuedRecord {
  std::string serial;
  std::int64_t not_after = 0;
  std::string vm_name;
};

class HostCa {
 public:
  // Loads the CA in `dir`, or creates it (P-256 key, self-signed, CA:TRUE
  // pathlen:0, keyCertSign+cRLSign, nameConstraints = pool). A CA made for a
  // different pool, an expired one, or half a CA (key without cert) is an
  // error that says how to start over.
  static Result<HostCa> create_or_load(const std::string& dir, const std::vector<Prefix>& pool, std::int64_t now,
                                       const HostCaOptions& options = {});

  Result<IssuedCert> issue_vm_cert(const VmCertRequest& request, std::int64_t now);
  // Idempotent; persists the revocation and rewrites crl.pem.
  Status revoke(std::string_view serial, std::int64_t now);
  // A freshly signed CRL: thisUpdate = now, nextUpdate = now + crl_validity_seconds.
  [[nodiscard]] Result<std::string> crl_pem(std::int64_t now) const;
  // Writes crl_pem(now) to dir/crl.pem (call it periodically, before nextUpdate).
  Status publish_crl(std::int64_t now);

  [[nodiscard]] const std::string& cert_pem() const { return cert_pem_; }
  [[nodiscard]] std::string fingerprint() const { return cert_fingerprint(cert_.get()); }
  [[nodiscard]] std::int64_t not_after() const { return cert_not_after(cert_.get()); }
  [[nodiscard]] const std::vector<Prefix>& pool() const { return pool_; }
  [[nodiscard]] const std::string& dir() const { return dir_; }
  [[nodiscard]] std::string crl_path() const { return dir_ + "/crl.pem"; }
  [[nodiscard]] std::string cert_path() const { return dir_ + "/ca.pem"; }
  [[nodiscard]] const std::vector<IssuedRecord>& issued() const { return issued_; }
  [[nodiscard]] const std::vector<RevokedEntry>& revoked() const { return revoked_; }

 private:
  HostCa() = default;
  Status save_lists() const;

  std::string dir_;
  HostCaOptions options_;
  std::vector<Prefix> pool_;
  ossl::PKey key_;
  ossl::X509Ptr cert_;
  std::string cert_pem_;
  std::vector<IssuedRecord> issued_;
  std::vector<RevokedEntry> revoked_;
};

}  // namespace sg::certs
