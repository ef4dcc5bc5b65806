// The flow log: every flow and every drop of every VM, in SQLite, so the
// host owner can answer an abuse complaint ("who sent traffic to
// 203.0.113.7 at 14:02?") long after the VM is gone.
//
// Storage. Its own database file (not the state store: it grows, it is
// pruned, and losing its last second must never cost VM state), in WAL mode
// with synchronous=NORMAL: a commit is durable once the WAL is synced at the
// next checkpoint, and a power cut can lose at most the last commits, never
// corrupt the file. The audit table (audit_log.h) lives in the same file.
//
// Batching. record_*() only queue in memory. maybe_flush(now_ms), called from
// the daemon's loop, commits the queue in one transaction when it holds
// batch_records records or batch_interval_ms has passed since the last
// commit. A crash loses at most one batch; flush() (also run by the
// destructor) loses nothing.
//
// Write failures (disk full, I/O error) never throw or stop the caller: the
// batch stays queued and is retried on the next maybe_flush(); records beyond
// max_backlog are dropped and counted, and the first commit that works again
// writes a gap row "disk full: N records lost" (source "flowlog"). A record
// the database refuses on its own (a constraint error, which should not
// happen) is skipped and counted the same way, so one bad record cannot
// block the log.
//
// Context. A conntrack event only carries the VM id (the ct mark). The caller
// passes what the daemon knows about that VM at the time (FlowContext) with
// each record: it is copied into the row, so the log still names the client,
// trust level and authcert after the VM is released or the policy changed.
//
// Drops are rate limited per (VM, reason) pair, in one-second windows of the
// packet's time: the first drops_per_second drops of a pair in a window are
// stored as rows of kind "packet"; the rest are only counted. When the window
// is over (the pair's next drop falls in a later second, maybe_flush() sees a
// later now_ms, or flush() runs), one row of kind "summary" is written for
// the pair with suppressed = how many drops were counted but not stored, and
// the addresses of the last of them as a sample. So the total number of drops
// of a pair in any period is: rows of kind "packet" + sum(suppressed).
//
// Addresses are stored as 16-byte BLOBs, IPv4 in its v4-mapped form
// (::ffff:a.b.c.d), next to a family column. BLOBs compare like memcmp, so a
// prefix is the range [network, broadcast] and a prefix query is one
// BETWEEN on an index.
//
// Times are unix milliseconds (UTC) throughout; query bounds are inclusive.
// Not thread-safe: one thread (the daemon loop) owns a FlowLog.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "common/net.h"
#include "common/raii/sqlite.h"
#include "common/result.h"
#include "netpolicy/conntrack_listener.h"
#include "netpolicy/nflog_listener.h"

namespace sg {

// What the daemon knows about a VM when one of its flows or drops is recorded.
struct FlowContext {
  std::string vm_name;                     // "sg7"
  std::string client_fp;                   // the owning client's key fingerprint ("sha256:...")
  std::string trust_level;                 // "trusted", "semi-trusted", "untrusted"
  std::optional<std::string> authcert_id;  // the authcert that allowed this destination, if one did
  std::string client_contact;              // as given at allocation
  std::string path = "direct";             // "direct", "tunnel" or "client": where the rules sent the flow
};

struct FlowRecord {
  std::int64_t id = 0;
  std::int64_t vm_id = 0;
  std::string vm_name;
  std::string client_fp;
  std::string trust_level;
  std::optional<std::string> authcert_id;
  std::string client_contact;
  std::string path;
  Family family = Family::v4;
  int proto = 0;
  IpAddress src;
  IpAddress dst;
  std::optional<int> sport;  // absent for protocols without ports
  std::optional<int> dport;
  std::optional<int> icmp_type;
  std::optional<int> icmp_code;
  std::int64_t start_ms = 0;
  std::optional<std::int64_t> end_ms;  // absent while the flow is open
  std::int64_t orig_packets = 0;       // VM -> destination
  std::int64_t orig_bytes = 0;
  std::int64_t reply_packets = 0;  // destination -> VM
  std::int64_t reply_bytes = 0;
  std::int64_t ct_id = 0;
  bool syn_probe = false;
  // "new": the row began with the flow's NEW event; "end": only its DESTROY was
  // seen (start from the kernel timestamp, or the end time if there was none);
  // "resync": first seen open in a table dump after events were lost.
  std::string origin;
  bool end_lost = false;  // the DESTROY event was lost: end_ms is when a resync found the flow gone
};

struct DropRecord {
  std::int64_t id = 0;
  std::int64_t time_ms = 0;
  std::int64_t vm_id = 0;  // 0 when unknown
  std::string vm_name;     // "" when unknown
  std::string client_fp;
  std::string reason;
  std::string kind = "packet";  // "packet" or "summary" (see the header comment)
  std::int64_t suppressed = 0;  // summary rows: drops of this pair counted but not stored
  std::optional<Family> family;
  int proto = 0;
  std::optional<IpAddress> src;
  std::optional<IpAddress> dst;
  std::optional<int> sport;
  std::optional<int> dport;
  std::optional<int> icmp_type;
  std::optional<int> icmp_code;
  std::int64_t length = 0;
  std::string indev;
};

struct GapRecord {
  std::int64_t id = 0;
  std::int64_t time_ms = 0;
  std::string source;     // "conntrack", "nflog", "flowlog"
  std::int64_t lost = 0;  // records known lost; 0 when unknown
  std::string detail;     // "ENOBUFS on conntrack socket, resynced 12 open flows"
};

struct FlowQuery {
  std::optional<std::string> vm;  // VM name
  std::optional<std::string> client_fp;
  std::optional<Prefix> to;              // destination address or prefix
  std::optional<int> port;               // destination port
  std::optional<std::int64_t> since_ms;  // flows still open at or after this time
  std::optional<std::int64_t> until_ms;  // flows started at or before this time
  int limit = 1000;
};

struct DropQuery {
  std::optional<std::string> vm;
  std::optional<std::string> reason;
  std::optional<Prefix> to;
  std::optional<std::int64_t> since_ms;
  std::optional<std::int64_t> until_ms;
  int limit = 1000;
};

enum class TopBy : std::uint8_t { bytes, flows };

struct TopQuery {
  TopBy by = TopBy::bytes;
  std::optional<std::int64_t> since_ms;
  std::optional<std::int64_t> until_ms;
  int limit = 20;
};

// One (VM, client) pair's total over the flows that started in the period.
struct TopRow {
  std::int64_t vm_id = 0;
  std::string vm_name;
  std::string client_fp;
  std::int64_t flows = 0;
  std::int64_t bytes_out = 0;  // VM -> world
  std::int64_t bytes_in = 0;
  std::int64_t packets = 0;  // both directions
};

struct RetentionReport {
  std::int64_t flows_deleted = 0;
  std::int64_t drops_deleted = 0;
  std::int64_t gaps_deleted = 0;
  std::int64_t bytes_in_use = 0;  // (page_count - freelist_count) * page_size after pruning
};

struct FlowLogStats {
  std::size_t queued = 0;              // records waiting for the next commit
  std::uint64_t lost_unreported = 0;   // lost records whose gap row is not written yet
  std::uint64_t lost_total = 0;        // since open
  std::uint64_t suppressed_total = 0;  // drops counted into summary rows since open
  std::uint64_t failed_commits = 0;
  std::string last_error;  // of the last failed commit, "" after a good one
};

void to_json(nlohmann::json& j, const FlowRecord& r);
void to_json(nlohmann::json& j, const DropRecord& r);
void to_json(nlohmann::json& j, const GapRecord& r);
void to_json(nlohmann::json& j, const TopRow& r);
void to_json(nlohmann::json& j, const RetentionReport& r);

class FlowLog {
 public:
  struct Options {
    std::size_t batch_records = 1000;
    std::int64_t batch_interval_ms = 1000;
    std::size_t max_backlog = 100'000;  // queued records kept while commits fail
    int drops_per_second = 10;          // stored drop rows per (VM, reason) per second
  };

  static Result<FlowLog> open(const std::string& path, const Options& options);
  static Result<FlowLog> open(const std::string& path) { return open(path, Options{}); }
  FlowLog(FlowLog&&) noexcept;
  FlowLog& operator=(FlowLog&&) noexcept;
  FlowLog(const FlowLog&) = delete;
  FlowLog& operator=(const FlowLog&) = delete;
  // Commits what is queued; a failure is logged, never thrown.
  ~FlowLog();

  void record_flow_start(const netpolicy::FlowEvent& ev, const FlowContext& ctx);
  // Closes the open row of this flow (same VM, ct id and, when the kernel gave
  // timestamps, start); when no start was recorded, inserts a complete row.
  void record_flow_end(const netpolicy::FlowEvent& ev, const FlowContext& ctx);
  // ctx is nullopt when the VM is not known (or no longer exists).
  void record_drop(const netpolicy::DropEvent& ev, const std::optional<FlowContext>& ctx);
  void record_gap(std::string source, std::string detail, std::int64_t lost, std::int64_t time_ms);
  // After events were lost: open_flows is ConntrackListener::dump_table() with
  // each flow's context. Records open flows not seen yet (origin "resync"),
  // closes rows still open in the log but gone from the table (end_lost), and
  // writes a gap row "<cause>, resynced N open flows".
  void record_resync(const std::string& cause,
                     const std::vector<std::pair<netpolicy::FlowEvent, FlowContext>>& open_flows, std::int64_t now_ms);

  // Commits if a batch is due at now_ms (unix ms) and writes the summary
  // rows of drop windows that are over. The error says why a commit failed;
  // the records stay queued.
  Status maybe_flush(std::int64_t now_ms);
  // Commits everything now, including the summaries of open drop windows.
  Status flush();

  // Deletes closed flows, drops and gaps older than max_age_seconds (0 = no
  // age limit), then the oldest rows, in chunks, until the live pages take at
  // most max_bytes (0 = no size limit). Freed pages are reused, the file does
  // not shrink. The audit table is never pruned.
  Result<RetentionReport> apply_retention(std::int64_t max_age_seconds, std::int64_t max_bytes, std::int64_t now_ms);

  Result<std::vector<FlowRecord>> flows(const FlowQuery& q) const;
  // Flows to `to` (an address or prefix) that were open at some time in
  // [since_ms, until_ms]; pass the same value twice for "at".
  Result<std::vector<FlowRecord>> who_sent(const Prefix& to, std::int64_t since_ms, std::int64_t until_ms,
                                           int limit = 1000) const;
  Result<std::vector<DropRecord>> drops(const DropQuery& q) const;
  Result<std::vector<GapRecord>> gaps(std::optional<std::int64_t> since_ms, int limit = 1000) const;
  Result<std::vector<TopRow>> top(const TopQuery& q) const;

  [[nodiscard]] FlowLogStats stats() const;
  // The connection, for the audit log's tests and for admin tooling
  // (PRAGMA settings); do not write flow rows through it.
  [[nodiscard]] sqlite3* handle() const { return db_.get(); }

  // Queue entries, applied in order by one commit (public only so the commit's helpers can name them).
  struct FlowOp {
    FlowRecord row;
    bool exact_start = false;  // start_ms is the kernel's timestamp, so it identifies the flow with its ct id
  };
  struct FlowEndOp : FlowOp {};
  struct ResyncOp {
    std::vector<FlowOp> open_rows;
    std::string cause;
    std::int64_t time_ms = 0;
  };
  using Op = std::variant<FlowOp, FlowEndOp, DropRecord, GapRecord, ResyncOp>;

 private:
  FlowLog(sql::Db db, const Options& options) : db_(std::move(db)), options_(options) {}
  void enqueue(Op op);
  void close_drop_windows(std::optional<std::int64_t> before_second);
  Status commit();

  struct DropWindow {
    std::int64_t second = 0;
    int stored = 0;
    std::int64_t suppressed = 0;
    DropRecord sample;  // last suppressed drop
  };

  sql::Db db_;
  Options options_;
  std::deque<Op> queue_;
  std::map<std::pair<std::string, std::string>, DropWindow> drop_windows_;
  std::int64_t last_commit_ms_ = 0;
  std::uint64_t lost_unreported_ = 0;
  std::int64_t first_loss_ms_ = 0;
  std::uint64_t lost_total_ = 0;
  std::uint64_t suppressed_total_ = 0;
  std::uint64_t failed_commits_ = 0;
  std::string last_error_;
};

}  // namespace sg
