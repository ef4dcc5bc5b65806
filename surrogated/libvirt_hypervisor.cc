#include "surrogated/libvirt_hypervisor.h"

#include <libvirt/virterror.h>

#include <chrono>

#include "common/log.h"

namespace sg {
namespace {

// libvirt prints every error to stderr unless told otherwise; errors are
// reported through Result instead.
void ignore_libvirt_error(void* /*unused*/, virErrorPtr /*unused*/) {}

std::string last_libvirt_error() {
  const char* m = virGetLastErrorMessage();
  return m != nullptr ? m : "unknown libvirt error";
}

// Milliseconds since `since`, for the log lines that separate libvirt's and
// QEMU's share of an allocation from the daemon's (docs/performance.md).
long long ms_since(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - since).count();
}

}  // namespace

Result<std::unique_ptr<LibvirtHypervisor>> LibvirtHypervisor::connect(const std::string& uri) {
  virSetErrorFunc(nullptr, ignore_libvirt_error);
  std::unique_ptr<LibvirtHypervisor> hv(new LibvirtHypervisor(uri));
  if (auto st = hv->ensure_connected(); !st) return st.error();
  return hv;
}

Status LibvirtHypervisor::ensure_connected() {
  if (conn_ && virConnectIsAlive(conn_.get()) == 1) return {};
  if (conn_) log::warning("libvirt connection to " + uri_ + " was lost; reconnecting");
  conn_.reset(virConnectOpen(uri_.c_str()));
  if (!conn_) {
    return make_error("cannot connect to libvirt at " + uri_ + ": " + last_libvirt_error() +
                      " (is libvirtd running? check [libvirt] uri in surrogated.toml)");
  }
  return {};
}

Status LibvirtHypervisor::reconnect_if_dead() {
  // A connection whose libvirtd went away fails its next call and only then
  // reports itself dead: reconnect so the caller can try once more.
  if (conn_ && virConnectIsAlive(conn_.get()) == 1) return make_error("connection is alive");
  return ensure_connected();
}

Status LibvirtHypervisor::start(const DomainSpec& spec) {
  auto t0 = std::chrono::steady_clock::now();
  if (auto st = ensure_connected(); !st) return st;
  std::string xml = domain_xml(spec, hypervisor_type_for_uri(uri_));
  virt::Domain dom(virDomainDefineXML(conn_.get(), xml.c_str()));
  if (!dom && reconnect_if_dead()) dom.reset(virDomainDefineXML(conn_.get(), xml.c_str()));
  if (!dom) return make_error("libvirt refused to define " + spec.domain + ": " + last_libvirt_error());
  if (virDomainCreate(dom.get()) != 0) {
    std::string why = last_libvirt_error();
    virDomainUndefine(dom.get());
    return make_error("libvirt could not start " + spec.domain + ": " + why);
  }
  log::info("libvirt: defined and started " + spec.domain + " in " + std::to_string(ms_since(t0)) + " ms");
  return {};
}

Status LibvirtHypervisor::destroy(const std::string& domain) {
  auto t0 = std::chrono::steady_clock::now();
  if (auto st = ensure_connected(); !st) return st;
  virt::Domain dom(virDomainLookupByName(conn_.get(), domain.c_str()));
  if (!dom && reconnect_if_dead()) dom.reset(virDomainLookupByName(conn_.get(), domain.c_str()));
  if (!dom) {
    const virError* e = virGetLastError();
    if (e != nullptr && e->code == VIR_ERR_NO_DOMAIN) return {};
    return make_error("cannot look up domain " + domain + ": " + last_libvirt_error());
  }
  if (virDomainIsActive(dom.get()) == 1 && virDomainDestroy(dom.get()) != 0) {
    // It may have stopped by itself between the two calls.
    if (virDomainIsActive(dom.get()) == 1) {
      return make_error("libvirt could not stop " + domain + ": " + last_libvirt_error());
    }
  }
  if (virDomainIsPersistent(dom.get()) == 1 && virDomainUndefine(dom.get()) != 0) {
    return make_error("libvirt could not undefine " + domain + ": " + last_libvirt_error());
  }
  log::info("libvirt: destroyed and undefined " + domain + " in " + std::to_string(ms_since(t0)) + " ms");
  return {};
}

Result<std::vector<DomainInfo>> LibvirtHypervisor::list() {
  if (auto st = ensure_connected(); !st) return st.error();
  virDomainPtr* doms = nullptr;
  int n = virConnectListAllDomains(conn_.get(), &doms, 0);
  if (n < 0 && reconnect_if_dead()) n = virConnectListAllDomains(conn_.get(), &doms, 0);
  if (n < 0) return make_error("cannot list libvirt domains: " + last_libvirt_error());
  std::vector<DomainInfo> out;
  for (int i = 0; i < n; ++i) {
    virt::Domain d(doms[i]);
    const char* name = virDomainGetName(d.get());
    out.push_back(DomainInfo{name != nullptr ? name : "", virDomainIsActive(d.get()) == 1});
  }
  free(doms);  // NOLINT(cppcoreguidelines-no-malloc): allocated by libvirt with malloc
  return out;
}

}  // namespace sg
