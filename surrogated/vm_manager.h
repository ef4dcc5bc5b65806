// Allocates, releases, expires and reconciles VMs. Owns the order of
// operations: state first, then everything that must exist before the
// guest can send a packet (VmObserver::prepare), then the domain.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "certs/identity.h"
#include "surrogated/address_pool.h"
#include "surrogated/config.h"
#include "surrogated/hypervisor.h"
#include "surrogated/state_store.h"

namespace sg {

// Something that must follow the VM life cycle: firewall rules, shaping,
// a simulated guest network. prepare() runs before the domain starts and
// may veto the allocation; started() after; released() after the domain is
// gone (best effort, must not fail).
class VmObserver {
 public:
  virtual ~VmObserver() = default;
  virtual Status prepare(const VmRecord& /*vm*/, const VmAddresses& /*addr*/) { return {}; }
  virtual Status started(const VmRecord& /*vm*/, const VmAddresses& /*addr*/) { return {}; }
  virtual void released(const VmRecord& /*vm*/, const VmAddresses& /*addr*/) {}
};

struct Classification {
  std::string level = "untrusted";
  std::string policy_version = "builtin";
  std::string rule = "default";
  bool refused = false;  // owner allows only listed clients and this one is not
};
using Classifier = std::function<Classification(const certs::PublicKey&)>;

struct AllocateRequest {
  std::string owner_fp;
  std::string owner_key_pem;
  std::string template_name;  // empty: the default template
  std::optional<std::int64_t> lifetime_s;
  std::string contact;
  std::string title;
  std::string client_addrs;
};

struct ReconcileReport {
  std::vector<std::string> adopted;   // ours, running as recorded
  std::vector<std::string> released;  // recorded but the domain vanished
  std::vector<std::string> unknown;   // domains we do not know: reported, untouched
};

// The per-VM values a template's cmdline may name (cmdline_placeholders()).
std::map<std::string, std::string> cmdline_values(const VmRecord& vm, const VmAddresses& addr);

class VmManager {
 public:
  VmManager(const DaemonConfig& cfg, StateStore& store, Hypervisor& hv);

  void add_observer(VmObserver* o) { observers_.push_back(o); }
  void set_classifier(Classifier c) { classifier_ = std::move(c); }

  // Error codes for the caller: the message is for people.
  Result<VmRecord> allocate(const AllocateRequest& req, const Classification& cls);
  Status release(const VmRecord& vm, const std::string& reason);
  // Releases every VM whose lifetime ended; returns their names.
  std::vector<std::string> expire(std::int64_t now);
  Result<ReconcileReport> reconcile();

  [[nodiscard]] const AddressPool& pool() const { return pool_; }
  [[nodiscard]] VmAddresses addresses_of(const VmRecord& vm) const { return pool_.addresses(vm.slot); }

 private:
  const DaemonConfig& cfg_;
  StateStore& store_;
  Hypervisor& hv_;
  AddressPool pool_;
  std::vector<VmObserver*> observers_;
  Classifier classifier_;
};

}  // namespace sg
