// Traffic shaping per VM and per flow class (docs/shaping.md). Keeps an HTB
// tree on every egress device and on every VM's tap equal to what the trust
// policy says: classes follow the VM life cycle, rates follow the policy,
// the owner's ceiling and the VM's daily quota. nftables picks the class
// (`meta priority set`, see netpolicy/compile.cc).
//
// Once a second (on_tick) it reads each VM's quota object, throttles a VM
// that used 80% of its day so the rest lasts until midnight UTC, resets the
// quotas when the UTC day changes, samples class counters for the current
// rates, and repairs a qdisc someone removed.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "netpolicy/nft_backend.h"
#include "netpolicy/tc_backend.h"
#include "netpolicy/tc_plan.h"
#include "surrogated/event_source.h"
#include "surrogated/state_store.h"
#include "surrogated/vm_manager.h"
#include "trust/policy.h"

namespace sg {

class Shaper final : public VmObserver, public EventSource {
 public:
  struct Options {
    // Empty: every interface with a route except the VMs' taps, probed by open().
    std::vector<std::string> egress_devices;
    std::string iface_prefix = "sg";
    std::uint32_t tc_major = netpolicy::kTcMajorDefault;
    std::string nft_table = "surrogated";  // where the quota objects live
  };
  using PolicySource = std::function<std::shared_ptr<const trust::Policy>()>;
  using Clock = std::function<std::int64_t()>;

  // Opens rtnetlink and netfilter sockets in the daemon's namespace and
  // settles the egress devices.
  static Result<std::unique_ptr<Shaper>> open(StateStore& store, Options options, PolicySource policy,
                                              Clock clock = nullptr);

  // Reconciles the kernel with the state store: our HTB on every egress
  // device and tap, every active VM's classes with current rates, and no
  // class of a VM that is gone.
  Status install_all();

  Status prepare(const VmRecord& vm, const VmAddresses& addr) override;
  Status started(const VmRecord& vm, const VmAddresses& addr) override;
  void released(const VmRecord& vm, const VmAddresses& addr) override;

  // Follows the VM's open holes: a class for each rated authcert (created
  // before its hole's element names it, see Enforcer::set_hole_shaping),
  // none left for authcerts whose holes are all gone.
  Status refresh_holes(const VmRecord& vm);

  // No descriptor: only the tick.
  [[nodiscard]] int event_fd() const override { return -1; }
  void on_event_ready() override {}
  void on_tick() override;

  // For `surrogatectl show VM`: caps, current rates, quota, throttle.
  [[nodiscard]] nlohmann::json status_json(const std::string& vm_name) const;
  // For `surrogatectl rules show`: the classes, as `tc class show` lines.
  [[nodiscard]] std::string classes_text(const std::string& vm_name) const;
  [[nodiscard]] const std::vector<std::string>& egress_devices() const { return opt_.egress_devices; }

 private:
  struct Rates {  // bits per second, per flow class
    std::uint64_t client = 0, nodes = 0, other = 0;
    [[nodiscard]] std::uint64_t total() const { return client + nodes + other; }
  };
  struct VmState {
    VmRecord record;
    netpolicy::VmShaping shaping;
    std::uint64_t quota_bytes = 0;
    std::uint64_t quota_used = 0;
    bool tap_shaped = false;
    Rates egress_rate, ingress_rate;
  };

  Shaper(StateStore& store, Options options, PolicySource policy, Clock clock, netpolicy::TcBackend tc,
         netpolicy::NftBackend nft)
      : store_(store),
        opt_(std::move(options)),
        policy_source_(std::move(policy)),
        clock_(std::move(clock)),
        tc_(std::move(tc)),
        nft_(std::move(nft)) {}

  [[nodiscard]] std::int64_t now() const;
  [[nodiscard]] netpolicy::VmShaping shaping_of(const VmRecord& vm) const;
  [[nodiscard]] std::optional<std::uint64_t> ceiling() const;
  Status put_egress(const VmState& s);
  Status put_tap(VmState& s);
  void remove_egress(std::int64_t vm_id, const std::vector<netpolicy::VmShaping::HoleClass>& holes);
  void poll_quotas();
  void sample_rates();
  Status reset_quotas();

  StateStore& store_;
  Options opt_;
  PolicySource policy_source_;
  Clock clock_;
  netpolicy::TcBackend tc_;
  netpolicy::NftBackend nft_;
  std::shared_ptr<const trust::Policy> policy_;  // the one the classes follow
  std::map<std::string, VmState> vms_;           // by VM name
  std::int64_t day_ = 0;
  std::int64_t ticks_ = 0;
  // Class counters at the last sample: (device, handle) -> bytes.
  std::map<std::pair<std::string, std::uint32_t>, std::uint64_t> last_bytes_;
  std::int64_t last_sample_ms_ = 0;
};

}  // namespace sg
