// Keeps the kernel's nftables ruleset equal to what the trust policy says
// for the running VMs and their holes. Follows the VM life cycle (rules
// before the guest starts, removed after it is gone), reinstalls the whole
// table atomically at start and on policy reload, and repairs it at once when
// someone else deletes or flushes it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "netpolicy/compile.h"
#include "netpolicy/conntrack_flush.h"
#include "netpolicy/nft_backend.h"
#include "netpolicy/nft_monitor.h"
#include "surrogated/address_pool.h"
#include "surrogated/event_source.h"
#include "surrogated/metrics.h"
#include "surrogated/state_store.h"
#include "surrogated/vm_manager.h"
#include "trust/policy.h"

namespace sg {

class Enforcer final : public VmObserver, public EventSource {
 public:
  // Opens netlink in the daemon's network namespace.
  static Result<std::unique_ptr<Enforcer>> open(StateStore& store, const AddressPool& pool,
                                                netpolicy::CompileOptions options);

  // Replaces the whole ruleset in one transaction with what `policy` says
  // for every active VM and open hole in the state store.
  Status install_all(std::shared_ptr<const trust::Policy> policy);

  Status prepare(const VmRecord& vm, const VmAddresses& addr) override;
  void released(const VmRecord& vm, const VmAddresses& addr) override;

  Status add_hole(const VmRecord& vm, const HoleRecord& hole);
  // Several holes of one VM in one transaction (an authcert's protocols and ports).
  Status add_holes(const VmRecord& vm, const std::vector<HoleRecord>& holes);
  // Takes out `old` and puts in `fresh` in one transaction (an authcert
  // renewed for the same grant: no moment without the hole, and the kernel
  // timeout becomes the new one's).
  Status replace_holes(const VmRecord& vm, const std::vector<HoleRecord>& old, const std::vector<HoleRecord>& fresh);
  Status remove_hole(const VmRecord& vm, const HoleRecord& hole);
  // Closes one hole for good: out of the kernel (unless it expired there
  // already; `vm` is null when the VM is gone), recorded removed in the
  // store with `reason`, and the VM's traffic classes refreshed. When the
  // kernel refuses, nothing is recorded and the error is returned.
  Status close_hole(const VmRecord* vm, const HoleRecord& hole, std::int64_t now, const std::string& reason);
  // Traffic shaping's part of a hole change (the shaper's refresh_holes):
  // called before a hole's element goes in, so the tc class it names
  // exists first, and again after one is removed.
  using HoleShaping = std::function<Status(const VmRecord&)>;
  void set_hole_shaping(HoleShaping f) { hole_shaping_ = std::move(f); }
  // After holes of `vm` were recorded closed: their traffic classes go now
  // rather than on the shaper's next slow tick.
  void holes_closed(const VmRecord& vm);
  Status update_block_list(std::shared_ptr<const trust::Policy> policy);

  // nft text of one VM's rules, or of the whole ruleset when vm is empty.
  [[nodiscard]] Result<std::string> rules_text(const std::string& vm_name) const;

  [[nodiscard]] int event_fd() const override { return monitor_.fd(); }
  // Reads nftables events; reinstalls at once when our tables were touched.
  void on_event_ready() override;
  [[nodiscard]] std::uint64_t repairs() const { return repairs_; }
  // How long each netlink transaction took to apply (for /metrics).
  [[nodiscard]] const LatencyHistogram& apply_latency() const { return apply_latency_; }

  // Ends the flows `s` selects (netpolicy/conntrack_flush.h): what is still
  // allowed carries on, what is not any more stops. Failures are logged:
  // the rules are already what they should be.
  void end_flows(const netpolicy::FlowSelector& s, const std::string& why);
  [[nodiscard]] std::uint64_t flows_ended() const { return flows_ended_; }
  // After the guardrails changed from `before` (null: unknown, as at start)
  // to `now`: every VM's flows to what they drop now, and did not before,
  // end. An established flow's short path does not look at the block list
  // (docs/enforcement.md), so a block takes hold of the flows it names here.
  void end_flows_now_forbidden(const trust::Guardrails* before, const trust::Guardrails& now, const std::string& why);

  [[nodiscard]] static netpolicy::VmNet vm_net(const VmRecord& vm, const VmAddresses& addr);
  [[nodiscard]] static std::optional<netpolicy::Hole> hole_of(const HoleRecord& h);

 private:
  Enforcer(StateStore& store, const AddressPool& pool, netpolicy::CompileOptions options, netpolicy::NftBackend backend,
           netpolicy::NftMonitor monitor, netpolicy::ConntrackFlusher flusher)
      : store_(store),
        pool_(pool),
        opt_(std::move(options)),
        backend_(std::move(backend)),
        monitor_(std::move(monitor)),
        flusher_(std::move(flusher)) {}
  [[nodiscard]] std::vector<netpolicy::Hole> holes_of(std::int64_t vm_id) const;

  StateStore& store_;
  const AddressPool& pool_;
  netpolicy::CompileOptions opt_;
  netpolicy::NftBackend backend_;
  netpolicy::NftMonitor monitor_;
  netpolicy::ConntrackFlusher flusher_;
  std::uint64_t flows_ended_ = 0;
  std::shared_ptr<const trust::Policy> policy_;
  std::map<std::string, netpolicy::VmNet> installed_;
  std::uint64_t repairs_ = 0;
  LatencyHistogram apply_latency_;
  HoleShaping hole_shaping_;
  // backend_.apply(), timed into apply_latency_.
  Status apply(const netpolicy::Plan& plan);
  // Counts and logs what an end_flows call of the flusher did; `which`
  // names the flows ("of VM 7").
  void count_ended(const Result<std::size_t>& ended, const std::string& which, const std::string& why);
};

}  // namespace sg
