#include "certs/host_ca.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "certs/identity.h"
#include "common/raii/fd.h"
#include "common/timeutil.h"

namespace sg::certs {
namespace {

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

Result<std::string> read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_sys_error("cannot read " + path + " (check its permissions)");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Write to a temporary file, fsync, rename: a crash leaves the old file or the new one, never half of one.
Status write_atomic(const std::string& path, const std::string& content, mode_t mode) {
  std::string tmp = path + ".tmp";
  ::unlink(tmp.c_str());
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (!fd.valid()) return make_sys_error("cannot create " + tmp + " (check that the directory is writable)");
  std::size_t done = 0;
  while (done < content.size()) {
    ssize_t n = ::write(fd.get(), content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return make_sys_error("cannot write " + tmp + " (is the disk full?)");
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return make_sys_error("cannot flush " + tmp);
  fd.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) return make_sys_error("cannot rename " + tmp + " to " + path);
  return {};
}

std::string normalize_serial(std::string_view serial) {
  std::string s(serial);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  if (s.rfind("0x", 0) == 0) s = s.substr(2);
  auto nz = s.find_first_not_of('0');
  return nz == std::string::npos ? (s.empty() ? s : "0") : s.substr(nz);
}

std::string pool_text(const std::vector<Prefix>& pool) {
  std::string out;
  for (const auto& p : pool) out += (out.empty() ? "" : ", ") + p.to_string();
  return out;
}

// The ledger files, one record per line; a line `parse` cannot read is
// reported as damaged with its file and line number. A missing file is empty.
template <class Record, class Parse>
Result<std::vector<Record>> load_lines(const std::string& path, Parse parse) {
  std::vector<Record> out;
  if (!exists(path)) return out;
  auto text = read_text(path);
  if (!text) return text.error();
  std::istringstream in(*text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    std::istringstream ls(line);
    Record r;
    if (!parse(ls, r)) return make_error(path + ":" + std::to_string(n) + ": damaged line");
    out.push_back(std::move(r));
  }
  return out;
}

// issued.txt: "<serial> <not_after> <vm name>".
Result<std::vector<IssuedRecord>> load_issued(const std::string& path) {
  return load_lines<IssuedRecord>(path, [](std::istringstream& ls, IssuedRecord& r) {
    if (!(ls >> r.serial >> r.not_after)) return false;
    std::getline(ls >> std::ws, r.vm_name);
    return true;
  });
}

// revoked.txt: "<serial> <revoked_at>".
Result<std::vector<RevokedEntry>> load_revoked(const std::string& path) {
  return load_lines<RevokedEntry>(path, [](std::istringstream& ls, RevokedEntry& r) {
    return static_cast<bool>(ls >> r.serial_hex >> r.revoked_at);
  });
}

}  // namespace

Result<HostCa> HostCa::create_or_load(const std::string& dir, const std::vector<Prefix>& pool, std::int64_t now,
                                      const HostCaOptions& options) {
  if (pool.empty()) return make_error("the host CA needs at least one pool prefix to constrain its certificates to");
  HostCa ca;
  ca.dir_ = dir;
  ca.options_ = options;
  ca.pool_ = pool;
  std::sort(ca.pool_.begin(), ca.pool_.end());
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return make_sys_error("cannot create the host CA directory " + dir);
  }
  const std::string key_path = dir + "/ca.key";
  const std::string cert_path = dir + "/ca.pem";
  bool have_key = exists(key_path);
  bool have_cert = exists(cert_path);
  if (have_key != have_cert) {
    return make_error("the host CA in " + dir + " is incomplete (" +
                      (have_key ? "ca.key without ca.pem" : "ca.pem without ca.key") +
                      "); remove both to make a new CA (VM certificates it issued stop being valid)");
  }
  if (have_key) {
    auto key_text = read_text(key_path);
    if (!key_text) return with_context("host CA", key_text.error());
    auto key = private_key_from_pem(*key_text, key_path);
    if (!key) return key.error();
    auto cert_text = read_text(cert_path);
    if (!cert_text) return with_context("host CA", cert_text.error());
    auto cert = cert_from_pem(*cert_text, cert_path);
    if (!cert) return cert.error();
    if (X509_check_private_key(cert->get(), key->get()) != 1) {
      ERR_clear_error();
      return make_error(key_path + " does not belong to " + cert_path +
                        "; restore the matching pair or remove both to make a new CA");
    }
    auto permitted = permitted_ip_subtrees(cert->get());
    std::sort(permitted.begin(), permitted.end());
    if (permitted != ca.pool_) {
      return make_error("the host CA in " + dir + " was made for the pool [" + pool_text(permitted) +
                        "] but the configuration now says [" + pool_text(ca.pool_) + "]; remove " + key_path + " and " +
                        cert_path + " to make a CA for the new pool (VM certificates of the old one stop being valid)");
    }
    if (cert_not_after(cert->get()) <= now) {
      return make_error("the host CA in " + dir + " expired at " + format_utc(cert_not_after(cert->get())) +
                        "; remove " + key_path + " and " + cert_path + " to make a new one");
    }
    ca.key_ = std::move(*key);
    ca.cert_ = std::move(*cert);
  } else {
    ossl::PKey key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    if (!key) return make_error("cannot generate the host CA key: " + openssl_error());
    CertSpec spec;
    spec.common_name = options.common_name;
    spec.not_before = now - options.backdate_seconds;
    spec.not_after = now + options.ca_validity_seconds;
    spec.extensions = {{NID_basic_constraints, "critical,CA:TRUE,pathlen:0"},
                       {NID_key_usage, "critical,keyCertSign,cRLSign"},
                       {NID_name_constraints, name_constraints_config(ca.pool_)}};
    auto cert = build_cert(spec, key.get(), nullptr, key.get());
    if (!cert) return with_context("making the host CA certificate", cert.error());
    if (auto st = write_atomic(key_path, private_key_to_pem(key.get()), 0600); !st) return st.error();
    if (auto st = write_atomic(cert_path, cert_to_pem(cert->get()), 0644); !st) return st.error();
    ca.key_ = std::move(key);
    ca.cert_ = std::move(*cert);
  }
  ca.cert_pem_ = cert_to_pem(ca.cert_.get());
  auto issued = load_issued(dir + "/issued.txt");
  if (!issued) return with_context("host CA", issued.error());
  ca.issued_ = std::move(*issued);
  auto revoked = load_revoked(dir + "/revoked.txt");
  if (!revoked) return with_context("host CA", revoked.error());
  ca.revoked_ = std::move(*revoked);
  if (auto st = ca.publish_crl(now); !st) return st.error();
  return ca;
}

Status HostCa::save_lists() const {
  std::string issued;
  for (const auto& r : issued_) issued += r.serial + " " + std::to_string(r.not_after) + " " + r.vm_name + "\n";
  if (auto st = write_atomic(dir_ + "/issued.txt", issued, 0644); !st) return st;
  std::string revoked;
  for (const auto& r : revoked_) revoked += r.serial_hex + " " + std::to_string(r.revoked_at) + "\n";
  return write_atomic(dir_ + "/revoked.txt", revoked, 0644);
}

Result<IssuedCert> HostCa::issue_vm_cert(const VmCertRequest& request, std::int64_t now) {
  const std::string what = "cannot issue a certificate for VM '" + request.vm_name + "'";
  if (request.vm_name.empty() || request.vm_name.size() > 64 ||
      request.vm_name.find_first_of("\n\r\t ") != std::string::npos) {
    return make_error(what + ": the VM name must be 1 to 64 characters without spaces");
  }
  if (request.addresses.empty()) return make_error(what + ": it has no address to put in the certificate");
  for (const auto& a : request.addresses) {
    bool inside = std::any_of(pool_.begin(), pool_.end(), [&](const Prefix& p) { return p.contains(a); });
    if (!inside) {
      return make_error(what + ": address " + a.to_string() + " is outside the host CA's pool [" + pool_text(pool_) +
                        "]; the host vouches only for its own VM addresses");
    }
  }
  std::int64_t not_after = std::min(request.lease_end, request.not_after.value_or(request.lease_end));
  not_after = std::min(not_after, cert_not_after(cert_.get()));
  if (not_after <= now) {
    return make_error(what + ": its lease (or the requested end) is already over at " + format_utc(not_after));
  }
  ossl::PKey subject_key;
  IssuedCert out;
  if (request.public_key_pem) {
    auto pub = PublicKey::from_pem(*request.public_key_pem);
    if (!pub) return with_context(what, pub.error());
    EVP_PKEY_up_ref(pub->get());
    subject_key.reset(pub->get());
  } else {
    subject_key.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    if (!subject_key) return make_error(what + ": key generation failed: " + openssl_error());
    out.key_pem = private_key_to_pem(subject_key.get());
  }
  CertSpec spec;
  spec.common_name = request.vm_name;
  // Random 127-bit serials, checked against every serial this CA issued, so none is ever reused.
  std::set<std::string> used;
  for (const auto& r : issued_) used.insert(r.serial);
  do {
    spec.serial_hex = random_serial_hex();
  } while (used.count(normalize_serial(spec.serial_hex)) != 0);
  spec.not_before = std::max(now - options_.backdate_seconds, cert_not_before(cert_.get()));
  spec.not_after = not_after;
  spec.extensions = {{NID_basic_constraints, "critical,CA:FALSE"},
                     {NID_key_usage, "critical,digitalSignature"},
                     {NID_subject_alt_name, san_config(request.addresses)}};
  auto cert = build_cert(spec, subject_key.get(), cert_.get(), key_.get());
  if (!cert) return with_context(what, cert.error());
  out.cert_pem = cert_to_pem(cert->get());
  out.serial = serial_hex(cert->get());
  out.fingerprint = cert_fingerprint(cert->get());
  out.not_before = cert_not_before(cert->get());
  out.not_after = cert_not_after(cert->get());
  issued_.push_back(IssuedRecord{out.serial, out.not_after, request.vm_name});
  if (auto st = save_lists(); !st) {
    issued_.pop_back();
    return with_context(what, st.error());
  }
  return out;
}

Status HostCa::revoke(std::string_view serial_text, std::int64_t now) {
  std::string serial = normalize_serial(serial_text);
  if (serial.empty() || serial.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return make_error("'" + std::string(serial_text) + "' is not a certificate serial (hex digits)");
  }
  bool known = std::any_of(issued_.begin(), issued_.end(), [&](const auto& r) { return r.serial == serial; });
  if (!known) {
    return make_error("the host CA never issued a certificate with serial " + serial +
                      "; list issued certificates to find the right one");
  }
  bool already = std::any_of(revoked_.begin(), revoked_.end(), [&](const auto& r) { return r.serial_hex == serial; });
  if (!already) {
    revoked_.push_back(RevokedEntry{serial, now});
    if (auto st = save_lists(); !st) {
      revoked_.pop_back();
      return st;
    }
  }
  return publish_crl(now);
}

Result<std::string> HostCa::crl_pem(std::int64_t now) const {
  // The CRL number only has to grow; the clock does that without another state file.
  auto crl = build_crl(cert_.get(), key_.get(), revoked_, now, now + options_.crl_validity_seconds,
                       static_cast<std::uint64_t>(std::max<std::int64_t>(now, 1)));
  if (!crl) return with_context("host CA CRL", crl.error());
  return crl_to_pem(crl->get());
}

Status HostCa::publish_crl(std::int64_t now) {
  auto pem = crl_pem(now);
  if (!pem) return pem.error();
  return write_atomic(crl_path(), *pem, 0644);
}

}  // namespace sg::certs
