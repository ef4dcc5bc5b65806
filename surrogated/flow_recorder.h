// Feeds the flow log from the kernel: conntrack NEW/DESTROY events of
// marked flows and nflog drops of the daemon's rules, each attributed to its
// VM, client, trust level, authcert and verdict path. Also owns the audit
// log, which lives in the same database file.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "netpolicy/conntrack_listener.h"
#include "netpolicy/nflog_listener.h"
#include "surrogated/audit_log.h"
#include "surrogated/config.h"
#include "surrogated/event_source.h"
#include "surrogated/flow_log.h"
#include "surrogated/state_store.h"

namespace sg {

class FlowRecorder {
 public:
  static Result<std::unique_ptr<FlowRecorder>> open(const DaemonConfig& cfg, StateStore& store);
  ~FlowRecorder();

  [[nodiscard]] FlowLog& flows() { return *log_; }
  [[nodiscard]] AuditLog& audit() { return *audit_; }
  // Appends to the audit log; a failure is logged loudly, never thrown.
  void audit(const std::string& actor, const std::string& action, const std::string& subject,
             const nlohmann::json& detail);
  EventSource* conntrack_source() { return conntrack_src_.get(); }
  EventSource* nflog_source() { return nflog_src_.get(); }
  // The VM's cached attribution data changed (holes, release): drop it.
  void forget(std::int64_t vm_id) { cache_.erase(vm_id); }

  [[nodiscard]] std::uint64_t flows_logged() const { return flows_logged_; }
  [[nodiscard]] const std::map<std::string, std::uint64_t>& drops_by_reason() const { return drops_by_reason_; }
  [[nodiscard]] std::uint64_t overruns() const;

 private:
  struct VmInfo {
    VmRecord vm;
    std::vector<Prefix> client;
    std::vector<HoleRecord> holes;
    bool tunnel = false;  // a GRE tunnel to its client is up (docs/tunnel.md)
    std::int64_t loaded = 0;
  };
  class ConntrackSource;
  class NflogSource;
  FlowRecorder(const DaemonConfig& cfg, StateStore& store) : cfg_(cfg), store_(store) {}
  const VmInfo* info(std::int64_t vm_id);
  std::optional<FlowContext> context(std::int64_t vm_id, const IpAddress& dst, std::uint8_t proto, std::uint16_t dport);
  void on_conntrack();
  void on_nflog();
  void on_tick();

  const DaemonConfig& cfg_;
  StateStore& store_;
  std::unique_ptr<FlowLog> log_;
  std::unique_ptr<AuditLog> audit_;
  std::unique_ptr<netpolicy::ConntrackListener> conntrack_;
  std::unique_ptr<netpolicy::NflogListener> nflog_;
  std::unique_ptr<EventSource> conntrack_src_;
  std::unique_ptr<EventSource> nflog_src_;
  std::map<std::int64_t, VmInfo> cache_;
  std::int64_t last_retention_ = 0;
  std::uint64_t flows_logged_ = 0;
  std::map<std::string, std::uint64_t> drops_by_reason_;
};

}  // namespace sg
