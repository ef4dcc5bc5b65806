// The seam between the VM manager and the hypervisor. The real one is
// libvirt (test:///default, qemu:///system, xen:///system).
#pragma once

#include <string>
#include <vector>

#include "common/result.h"
#include "surrogated/address_pool.h"
#include "surrogated/config.h"

namespace sg {

struct DomainSpec {
  std::string domain;   // libvirt domain name
  std::string vm_name;  // "sg<id>", the tap name
  std::int64_t vm_id = 0;
  std::string owner_fp;
  VmTemplate tpl;
  VmAddresses addresses;
};

struct DomainInfo {
  std::string name;
  bool active = false;
};

class Hypervisor {
 public:
  virtual ~Hypervisor() = default;
  // Defines and starts the domain; on failure nothing is left defined.
  virtual Status start(const DomainSpec& spec) = 0;
  // Stops and undefines the domain; an already absent domain is success.
  virtual Status destroy(const std::string& domain) = 0;
  virtual Result<std::vector<DomainInfo>> list() = 0;
  [[nodiscard]] virtual std::string describe() const = 0;
};

// Domain XML for a hypervisor type ("test", "qemu", "kvm", "xen"). Pure.
std::string domain_xml(const DomainSpec& spec, const std::string& hv_type);
// The domain type to use for a libvirt URI.
std::string hypervisor_type_for_uri(const std::string& uri);

}  // namespace sg
