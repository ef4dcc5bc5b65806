#include "surrogated/flow_recorder.h"

#include <chrono>
#include <sstream>

#include "common/log.h"
#include "common/timeutil.h"

namespace sg {
namespace {

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// How long cached attribution data is trusted: holes come and go.
constexpr std::int64_t kCacheSeconds = 2;
constexpr std::int64_t kRetentionEverySeconds = 3600;

}  // namespace

class FlowRecorder::ConntrackSource final : public EventSource {
 public:
  explicit ConntrackSource(FlowRecorder& r) : r_(r) {}
  [[nodiscard]] int event_fd() const override { return r_.conntrack_->fd(); }
  void on_event_ready() override { r_.on_conntrack(); }
  void on_tick() override { r_.on_tick(); }

 private:
  FlowRecorder& r_;
};

class FlowRecorder::NflogSource final : public EventSource {
 public:
  explicit NflogSource(FlowRecorder& r) : r_(r) {}
  [[nodiscard]] int event_fd() const override { return r_.nflog_->fd(); }
  void on_event_ready() override { r_.on_nflog(); }

 private:
  FlowRecorder& r_;
};

Result<std::unique_ptr<FlowRecorder>> FlowRecorder::open(const DaemonConfig& cfg, StateStore& store) {
  std::unique_ptr<FlowRecorder> r(new FlowRecorder(cfg, store));
  FlowLog::Options fo;
  fo.batch_interval_ms = cfg.flowlog_batch_ms;
  fo.drops_per_second = cfg.flowlog_drops_per_second;
  auto log = FlowLog::open(cfg.flowlog_path, fo);
  if (!log) return with_context("flow log " + cfg.flowlog_path, log.error());
  r->log_ = std::make_unique<FlowLog>(std::move(*log));
  auto audit = AuditLog::open(cfg.flowlog_path);
  if (!audit) return with_context("audit log " + cfg.flowlog_path, audit.error());
  r->audit_ = std::make_unique<AuditLog>(std::move(*audit));
  netpolicy::ConntrackListener::Options co;
  co.receive_buffer_bytes = cfg.flowlog_netlink_buffer_kb * 1024;
  auto ct = netpolicy::ConntrackListener::open(co);
  if (!ct) return with_context("conntrack events", ct.error());
  r->conntrack_ = std::make_unique<netpolicy::ConntrackListener>(std::move(*ct));
  netpolicy::NflogListener::Options no;
  no.group = static_cast<std::uint16_t>(cfg.nflog_group);
  no.receive_buffer_bytes = cfg.flowlog_netlink_buffer_kb * 1024;
  auto nf = netpolicy::NflogListener::open(no);
  if (!nf) return with_context("nflog group " + std::to_string(cfg.nflog_group), nf.error());
  r->nflog_ = std::make_unique<netpolicy::NflogListener>(std::move(*nf));
  r->conntrack_src_ = std::make_unique<ConntrackSource>(*r);
  r->nflog_src_ = std::make_unique<NflogSource>(*r);
  // Flows already open (the daemon restarted under running VMs) are logged
  // from the table, so none goes unattributed.
  if (auto open_flows = r->conntrack_->dump_table()) {
    std::vector<std::pair<netpolicy::FlowEvent, FlowContext>> with_ctx;
    for (const auto& ev : *open_flows) {
      if (auto ctx = r->context(ev.vm_id, ev.dst, ev.proto, ev.dport)) with_ctx.emplace_back(ev, *ctx);
    }
    if (!with_ctx.empty()) r->log_->record_resync("daemon start", with_ctx, now_ms());
  }
  log::info("flow log: " + cfg.flowlog_path + " (conntrack events and nflog group " + std::to_string(cfg.nflog_group) +
            ")");
  return r;
}

FlowRecorder::~FlowRecorder() {
  if (log_) {
    if (auto st = log_->flush(); !st) log::error("flow log: last batch not written: " + st.error().describe());
  }
}

std::uint64_t FlowRecorder::overruns() const { return conntrack_->overruns() + nflog_->overruns(); }

void FlowRecorder::audit(const std::string& actor, const std::string& action, const std::string& subject,
                         const nlohmann::json& detail) {
  if (auto r = audit_->append(actor, action, subject, detail, now_ms()); !r) {
    log::alert("audit log: cannot record '" + action + " " + subject + "': " + r.error().describe());
  }
}

const FlowRecorder::VmInfo* FlowRecorder::info(std::int64_t vm_id) {
  std::int64_t now = now_unix();
  auto it = cache_.find(vm_id);
  if (it != cache_.end() && now - it->second.loaded <= kCacheSeconds) return &it->second;
  auto vm = store_.find_by_id(vm_id);
  if (!vm || !vm->has_value()) {
    cache_.erase(vm_id);
    return nullptr;
  }
  VmInfo in;
  in.vm = **vm;
  std::stringstream ss(in.vm.client_addrs);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (auto p = Prefix::parse(item)) in.client.push_back(*p);
  }
  if (auto holes = store_.open_holes(now, vm_id)) in.holes = *holes;
  if (auto tunnels = store_.tunnels()) {
    for (const auto& t : *tunnels) in.tunnel = in.tunnel || t.vm_id == vm_id;
  }
  in.loaded = now;
  if (cache_.size() > 4096) cache_.clear();
  return &(cache_[vm_id] = std::move(in));
}

std::optional<FlowContext> FlowRecorder::context(std::int64_t vm_id, const IpAddress& dst, std::uint8_t proto,
                                                 std::uint16_t dport) {
  const VmInfo* in = info(vm_id);
  if (in == nullptr) return std::nullopt;
  FlowContext c;
  c.vm_name = in->vm.name;
  c.client_fp = in->vm.owner_fp;
  c.trust_level = in->vm.trust_level;
  c.client_contact = in->vm.contact;
  c.path = "direct";
  for (const auto& p : in->client) {
    if (p.contains(dst)) c.path = "client";
  }
  bool to_hole = false;
  for (const auto& h : in->holes) {
    auto p = Prefix::parse(h.destination);
    if (!p || !p->contains(dst)) continue;
    if (h.protocol != 0 && h.protocol != proto) continue;
    if ((h.protocol == 6 || h.protocol == 17) && (dport < h.port_first || dport > h.port_last)) continue;
    to_hole = true;
    if (!h.authcert_id.empty()) c.authcert_id = h.authcert_id;
  }
  // An untrusted VM's flow that is neither to its client nor to an
  // authorized node can only have been accepted into its tunnel: the
  // egress chain drops it otherwise (netpolicy/compile.cc).
  if (in->tunnel && c.path == "direct" && !to_hole && in->vm.trust_level == "untrusted") c.path = "tunnel";
  return c;
}

void FlowRecorder::on_conntrack() {
  for (const auto& ev : conntrack_->read_events()) {
    switch (ev.kind) {
      case netpolicy::FlowEvent::Kind::start:
        if (auto ctx = context(ev.vm_id, ev.dst, ev.proto, ev.dport)) {
          log_->record_flow_start(ev, *ctx);
          ++flows_logged_;
        }
        break;
      case netpolicy::FlowEvent::Kind::end:
        if (auto ctx = context(ev.vm_id, ev.dst, ev.proto, ev.dport)) log_->record_flow_end(ev, *ctx);
        break;
      case netpolicy::FlowEvent::Kind::gap: {
        // Events were lost: take the open flows from the table and record
        // the gap, so no flow goes unaccounted silently.
        log::warning("flow log: " + ev.detail + "; resyncing from the conntrack table");
        auto open_flows = conntrack_->dump_table();
        if (!open_flows) {
          log_->record_gap("conntrack", ev.detail + "; resync failed: " + open_flows.error().message, 0, now_ms());
          break;
        }
        std::vector<std::pair<netpolicy::FlowEvent, FlowContext>> with_ctx;
        for (const auto& f : *open_flows) {
          if (auto ctx = context(f.vm_id, f.dst, f.proto, f.dport)) with_ctx.emplace_back(f, *ctx);
        }
        log_->record_resync(ev.detail, with_ctx, now_ms());
        break;
      }
      case netpolicy::FlowEvent::Kind::open: break;
    }
  }
}

void FlowRecorder::on_nflog() {
  for (const auto& ev : nflog_->read_events()) {
    if (ev.kind == netpolicy::DropEvent::Kind::gap) {
      log::warning("flow log: " + ev.detail);
      log_->record_gap("nflog", ev.detail, static_cast<std::int64_t>(ev.lost), now_ms());
      continue;
    }
    ++drops_by_reason_[ev.reason];
    std::optional<FlowContext> ctx;
    if (ev.vm_id > 0) ctx = context(ev.vm_id, ev.dst, ev.proto, ev.dport);
    log_->record_drop(ev, ctx);
  }
}

void FlowRecorder::on_tick() {
  std::int64_t ms = now_ms();
  if (auto st = log_->maybe_flush(ms); !st) log::error("flow log: " + st.error().describe());
  if (ms / 1000 - last_retention_ >= kRetentionEverySeconds) {
    last_retention_ = ms / 1000;
    auto r = log_->apply_retention(cfg_.flowlog_retention_s, cfg_.flowlog_max_bytes, ms);
    if (!r) log::error("flow log retention: " + r.error().describe());
  }
}

}  // namespace sg
