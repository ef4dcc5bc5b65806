// The daemon's GRE tunnels (docs/tunnel.md): one per untrusted VM whose
// client asked for it, from the host to the client's registered address.
// Everything the VM may not reach otherwise is marked in prerouting, routed
// by `ip rule fwmark` into the tunnel device, still under every guardrail of
// the VM's egress chain, and comes back the same way.
//
// Order of construction (tunnel up): state row, endpoint (device), routes,
// then the nftables chain that starts marking. Teardown runs in reverse, and
// any failure on the way up undoes what was built, so nothing is left half.
// The state store is the truth: a restart rebuilds every recorded tunnel
// (the kernel's rules already follow it through CompileOptions::tunnel_of)
// and removes stray policy rules.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "netpolicy/compile.h"
#include "netpolicy/nft_backend.h"
#include "surrogated/address_pool.h"
#include "surrogated/state_store.h"
#include "surrogated/vm_manager.h"
#include "trust/policy.h"
#include "tunnel/endpoint.h"
#include "tunnel/routing.h"

namespace sg {

// Priority of the daemon's `ip rule`s (before "main", 32766), and the base of
// the per-VM routing tables (table = base + VM id).
inline constexpr std::uint32_t kTunnelRulePriority = 5300;
inline constexpr std::uint32_t kTunnelTableBase = 0x53000000U;

struct TunnelRequest {
  std::string remote;   // empty: the VM's one registered client host address
  bool no_key = false;  // plain RFC 2784 header (only one such tunnel per client address)
};

class Tunnels final : public VmObserver {
 public:
  using PolicySource = std::function<std::shared_ptr<const trust::Policy>()>;

  // Probes the kernel for GRE and loads the recorded tunnels (their rules
  // are then part of every compile); restore() builds their devices.
  static Result<std::unique_ptr<Tunnels>> open(StateStore& store, const AddressPool& pool,
                                               netpolicy::CompileOptions nft, PolicySource policy);
  ~Tunnels() override;

  // For CompileOptions::tunnel_of.
  [[nodiscard]] std::optional<netpolicy::TunnelNet> tunnel_of(const std::string& vm_name) const;

  // Rebuilds every recorded tunnel after a (re)start; a tunnel that cannot
  // be rebuilt is torn down and forgotten, with an error in the log.
  void restore();

  Result<TunnelRecord> up(const VmRecord& vm, const TunnelRequest& req);
  Status down(const VmRecord& vm, const std::string& why);
  // Runs after a tunnel went down (its rules, routes and device gone).
  void set_on_down(std::function<void(const VmRecord&)> f) { on_down_ = std::move(f); }
  [[nodiscard]] bool has(std::int64_t vm_id) const { return live_.count(vm_id) != 0; }

  void released(const VmRecord& vm, const VmAddresses& addr) override;

  [[nodiscard]] tunnel::EndpointKind endpoint_kind() const { return probe_.kind; }
  // "userspace (kernel has no ip_gre)"
  [[nodiscard]] std::string endpoint_text() const;
  [[nodiscard]] nlohmann::json to_json(const TunnelRecord& t) const;
  [[nodiscard]] std::optional<TunnelRecord> record_of(std::int64_t vm_id) const;
  [[nodiscard]] std::vector<TunnelRecord> records() const;

 private:
  struct Live {
    TunnelRecord record;
    std::unique_ptr<tunnel::Endpoint> endpoint;  // null until built
    bool routed = false;
  };
  Tunnels(StateStore& store, const AddressPool& pool, netpolicy::CompileOptions nft, PolicySource policy,
          netpolicy::NftBackend backend, tunnel::Probe probe)
      : store_(store),
        pool_(pool),
        nft_(std::move(nft)),
        policy_(std::move(policy)),
        backend_(std::move(backend)),
        probe_(std::move(probe)) {}

  [[nodiscard]] tunnel::PolicyRoute route_of(const TunnelRecord& t, const VmAddresses& addr) const;
  [[nodiscard]] tunnel::TunnelConfig config_of(const TunnelRecord& t, const VmAddresses& addr) const;
  // Endpoint and routes of a recorded tunnel.
  Status build(Live& l, const VmAddresses& addr);
  // Undoes whatever of build() exists; best effort, logs what fails.
  void unbuild(Live& l, const VmAddresses& addr);
  // After the last tunnel went down: its prerouting hook goes too.
  void prerouting_off(const netpolicy::Compiler& compiler);

  StateStore& store_;
  const AddressPool& pool_;
  netpolicy::CompileOptions nft_;
  PolicySource policy_;
  std::function<void(const VmRecord&)> on_down_;
  netpolicy::NftBackend backend_;
  tunnel::Probe probe_;
  std::map<std::int64_t, Live> live_;  // by VM id
};

}  // namespace sg
