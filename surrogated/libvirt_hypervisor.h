// Hypervisor backed by the libvirt C API. Reconnects when the connection
// drops (libvirtd restarted): before a call when the connection is known to
// be dead, or once after a call that failed because it just died.
#pragma once

#include <string>

#include "common/raii/libvirt.h"
#include "surrogated/hypervisor.h"

namespace sg {

class LibvirtHypervisor final : public Hypervisor {
 public:
  static Result<std::unique_ptr<LibvirtHypervisor>> connect(const std::string& uri);

  Status start(const DomainSpec& spec) override;
  Status destroy(const std::string& domain) override;
  Result<std::vector<DomainInfo>> list() override;
  [[nodiscard]] std::string describe() const override { return uri_; }

 private:
  explicit LibvirtHypervisor(std::string uri) : uri_(std::move(uri)) {}
  Status ensure_connected();
  // Success only when the connection was dead and is open again.
  Status reconnect_if_dead();
  std::string uri_;
  virt::Connect conn_;
};

}  // namespace sg
