#include "surrogated/flow_log.h"

#include <time.h>

#include <algorithm>
#include <array>
#include <nlohmann/json.hpp>
#include <set>

#include "common/log.h"
#include "common/sqlite_util.h"
#include "common/timeutil.h"

namespace sg {

namespace {

constexpr int kSchemaVersion = 1;
constexpr int kDeleteChunk = 2000;

std::int64_t wall_ms() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

using sql::db_error;
using sql::exec;

// Errors of the database as a whole (space, I/O, locks): the batch is kept
// and retried. Anything else is the fault of the one record being written.
bool is_transient(int rc) {
  switch (rc & 0xff) {
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_NOMEM:
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_PROTOCOL: return true;
    default: return false;
  }
}

using Blob16 = std::array<std::uint8_t, 16>;

// IPv4 in v4-mapped form, so one BLOB ordering covers both families.
Blob16 to_blob(const IpAddress& a) {
  if (a.family == Family::v6) return a.bytes;
  Blob16 b{};
  b[10] = 0xff;
  b[11] = 0xff;
  std::copy_n(a.bytes.begin(), 4, b.begin() + 12);
  return b;
}

IpAddress from_blob(const void* data, int size, Family family) {
  IpAddress a;
  a.family = family;
  if (data == nullptr || size != 16) return a;
  const auto* p = static_cast<const std::uint8_t*>(data);
  if (family == Family::v4) {
    std::copy_n(p + 12, 4, a.bytes.begin());
  } else {
    std::copy_n(p, 16, a.bytes.begin());
  }
  return a;
}

// [first, last] address of a prefix, as BLOBs.
std::pair<Blob16, Blob16> prefix_range(const Prefix& p) {
  Blob16 lo = to_blob(p.address);
  Blob16 hi = lo;
  const int bits = (p.family() == Family::v4 ? 96 : 0) + p.length;
  for (int i = bits; i < 128; ++i) hi[i / 8] |= static_cast<std::uint8_t>(0x80 >> (i % 8));
  return {lo, hi};
}

int family_number(Family f) { return f == Family::v4 ? 4 : 6; }
Family family_from_number(std::int64_t n) { return n == 6 ? Family::v6 : Family::v4; }

using sql::Statement;

IpAddress address(const Statement& s, int col, Family family) { return from_blob(s.blob(col), s.bytes(col), family); }

Result<std::int64_t> pragma_int(sqlite3* db, const char* name) {
  Statement s(db, std::string("PRAGMA ") + name);
  if (!s.ok() || s.step() != SQLITE_ROW) return db_error(db, std::string("reading PRAGMA ") + name);
  return s.integer(0);
}

// A WHERE clause built from optional filters, with its parameters in order.
class Filter {
 public:
  using Value = std::variant<std::int64_t, std::string, Blob16>;
  void add(std::string clause, std::vector<Value> values = {}) {
    clauses_.push_back(std::move(clause));
    for (auto& v : values) values_.push_back(std::move(v));
  }
  [[nodiscard]] std::string where() const {
    if (clauses_.empty()) return "";
    std::string out = " WHERE ";
    for (std::size_t i = 0; i < clauses_.size(); ++i) out += (i ? " AND " : "") + clauses_[i];
    return out;
  }
  // Binds every parameter; returns the next free index.
  int bind(Statement& s) const {
    int i = 1;
    for (const auto& v : values_) std::visit([&](const auto& x) { s.bind(i++, x); }, v);
    return i;
  }
  void add_prefix(const char* column, const Prefix& p) {
    auto [lo, hi] = prefix_range(p);
    add(std::string("family = ? AND ") + column + " BETWEEN ? AND ?",
        {std::int64_t{family_number(p.family())}, lo, hi});
  }

 private:
  std::vector<std::string> clauses_;
  std::vector<Value> values_;
};

constexpr const char* kSchema =
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS flows ("
    "  id INTEGER PRIMARY KEY,"
    "  vm_id INTEGER NOT NULL, vm_name TEXT NOT NULL,"
    "  client_fp TEXT NOT NULL, trust_level TEXT NOT NULL, authcert_id TEXT, client_contact TEXT NOT NULL,"
    "  path TEXT NOT NULL,"
    "  family INTEGER NOT NULL, proto INTEGER NOT NULL, src BLOB NOT NULL, dst BLOB NOT NULL,"
    "  sport INTEGER, dport INTEGER, icmp_type INTEGER, icmp_code INTEGER,"
    "  start_ms INTEGER NOT NULL, end_ms INTEGER,"
    "  orig_packets INTEGER NOT NULL, orig_bytes INTEGER NOT NULL,"
    "  reply_packets INTEGER NOT NULL, reply_bytes INTEGER NOT NULL,"
    "  ct_id INTEGER NOT NULL, syn_probe INTEGER NOT NULL, origin TEXT NOT NULL,"
    "  end_lost INTEGER NOT NULL DEFAULT 0, start_exact INTEGER NOT NULL DEFAULT 0);"
    // who_sent / flows --to: a destination range, then the time.
    "CREATE INDEX IF NOT EXISTS flows_dst ON flows(dst, start_ms);"
    "CREATE INDEX IF NOT EXISTS flows_start ON flows(start_ms);"
    "CREATE INDEX IF NOT EXISTS flows_vm ON flows(vm_name, start_ms);"
    "CREATE INDEX IF NOT EXISTS flows_client ON flows(client_fp, start_ms);"
    // Matching a DESTROY event to its row.
    "CREATE INDEX IF NOT EXISTS flows_ct ON flows(ct_id, vm_id);"
    "CREATE TABLE IF NOT EXISTS drops ("
    "  id INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL,"
    "  vm_id INTEGER NOT NULL, vm_name TEXT NOT NULL, client_fp TEXT NOT NULL, reason TEXT NOT NULL,"
    "  kind TEXT NOT NULL, suppressed INTEGER NOT NULL,"
    "  family INTEGER, proto INTEGER NOT NULL, src BLOB, dst BLOB,"
    "  sport INTEGER, dport INTEGER, icmp_type INTEGER, icmp_code INTEGER,"
    "  length INTEGER NOT NULL, indev TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS drops_time ON drops(time_ms);"
    "CREATE INDEX IF NOT EXISTS drops_vm ON drops(vm_name, time_ms);"
    "CREATE INDEX IF NOT EXISTS drops_dst ON drops(dst, time_ms);"
    "CREATE TABLE IF NOT EXISTS gaps ("
    "  id INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, source TEXT NOT NULL,"
    "  lost INTEGER NOT NULL, detail TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS gaps_time ON gaps(time_ms);";

constexpr const char* kFlowColumns =
    "id, vm_id, vm_name, client_fp, trust_level, authcert_id, client_contact, path, family, proto, src, dst, "
    "sport, dport, icmp_type, icmp_code, start_ms, end_ms, orig_packets, orig_bytes, reply_packets, reply_bytes, "
    "ct_id, syn_probe, origin, end_lost";

FlowRecord read_flow(const Statement& s) {
  FlowRecord r;
  r.id = s.integer(0);
  r.vm_id = s.integer(1);
  r.vm_name = s.text(2);
  r.client_fp = s.text(3);
  r.trust_level = s.text(4);
  if (!s.is_null(5)) r.authcert_id = s.text(5);
  r.client_contact = s.text(6);
  r.path = s.text(7);
  r.family = family_from_number(s.integer(8));
  r.proto = static_cast<int>(s.integer(9));
  r.src = address(s, 10, r.family);
  r.dst = address(s, 11, r.family);
  r.sport = s.opt_int(12);
  r.dport = s.opt_int(13);
  r.icmp_type = s.opt_int(14);
  r.icmp_code = s.opt_int(15);
  r.start_ms = s.integer(16);
  if (!s.is_null(17)) r.end_ms = s.integer(17);
  r.orig_packets = s.integer(18);
  r.orig_bytes = s.integer(19);
  r.reply_packets = s.integer(20);
  r.reply_bytes = s.integer(21);
  r.ct_id = s.integer(22);
  r.syn_probe = s.integer(23) != 0;
  r.origin = s.text(24);
  r.end_lost = s.integer(25) != 0;
  return r;
}

constexpr const char* kDropColumns =
    "id, time_ms, vm_id, vm_name, client_fp, reason, kind, suppressed, family, proto, src, dst, sport, dport, "
    "icmp_type, icmp_code, length, indev";

DropRecord read_drop(const Statement& s) {
  DropRecord r;
  r.id = s.integer(0);
  r.time_ms = s.integer(1);
  r.vm_id = s.integer(2);
  r.vm_name = s.text(3);
  r.client_fp = s.text(4);
  r.reason = s.text(5);
  r.kind = s.text(6);
  r.suppressed = s.integer(7);
  if (!s.is_null(8)) {
    r.family = family_from_number(s.integer(8));
    if (!s.is_null(10)) r.src = address(s, 10, *r.family);
    if (!s.is_null(11)) r.dst = address(s, 11, *r.family);
  }
  r.proto = static_cast<int>(s.integer(9));
  r.sport = s.opt_int(12);
  r.dport = s.opt_int(13);
  r.icmp_type = s.opt_int(14);
  r.icmp_code = s.opt_int(15);
  r.length = s.integer(16);
  r.indev = s.text(17);
  return r;
}

// A flow row from an event and its context; times from the kernel timestamps when present.
FlowRecord flow_row(const netpolicy::FlowEvent& ev, const FlowContext& ctx, std::string origin) {
  FlowRecord r;
  r.vm_id = ev.vm_id;
  r.vm_name = ctx.vm_name.empty() ? "sg" + std::to_string(ev.vm_id) : ctx.vm_name;
  r.client_fp = ctx.client_fp;
  r.trust_level = ctx.trust_level;
  r.authcert_id = ctx.authcert_id;
  r.client_contact = ctx.client_contact;
  r.path = ctx.path;
  r.family = ev.family;
  r.proto = ev.proto;
  r.src = ev.src;
  r.dst = ev.dst;
  if (ev.has_ports) {
    r.sport = ev.sport;
    r.dport = ev.dport;
  }
  if (ev.has_icmp) {
    r.icmp_type = ev.icmp_type;
    r.icmp_code = ev.icmp_code;
  }
  r.start_ms = (ev.start_ns != 0 ? ev.start_ns : ev.observed_ns) / 1'000'000;
  r.orig_packets = static_cast<std::int64_t>(ev.orig_packets);
  r.orig_bytes = static_cast<std::int64_t>(ev.orig_bytes);
  r.reply_packets = static_cast<std::int64_t>(ev.reply_packets);
  r.reply_bytes = static_cast<std::int64_t>(ev.reply_bytes);
  r.ct_id = ev.ct_id;
  r.syn_probe = ev.syn_probe;
  r.origin = std::move(origin);
  return r;
}

std::string iso_ms(std::int64_t ms) { return format_utc(ms / 1000); }

template <class T>
void put_opt(nlohmann::json& j, const char* key, const std::optional<T>& v) {
  j[key] = v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

}  // namespace

// --- JSON ----------------------------------------------------------------

void to_json(nlohmann::json& j, const FlowRecord& r) {
  j = nlohmann::json{{"id", r.id},
                     {"vm_id", r.vm_id},
                     {"vm", r.vm_name},
                     {"client_fp", r.client_fp},
                     {"trust_level", r.trust_level},
                     {"client_contact", r.client_contact},
                     {"path", r.path},
                     {"family", family_number(r.family)},
                     {"proto", r.proto},
                     {"src", r.src.to_string()},
                     {"dst", r.dst.to_string()},
                     {"start_ms", r.start_ms},
                     {"start", iso_ms(r.start_ms)},
                     {"orig_packets", r.orig_packets},
                     {"orig_bytes", r.orig_bytes},
                     {"reply_packets", r.reply_packets},
                     {"reply_bytes", r.reply_bytes},
                     {"ct_id", r.ct_id},
                     {"syn_probe", r.syn_probe},
                     {"origin", r.origin},
                     {"end_lost", r.end_lost}};
  put_opt(j, "authcert_id", r.authcert_id);
  put_opt(j, "sport", r.sport);
  put_opt(j, "dport", r.dport);
  put_opt(j, "icmp_type", r.icmp_type);
  put_opt(j, "icmp_code", r.icmp_code);
  put_opt(j, "end_ms", r.end_ms);
  j["end"] = r.end_ms ? nlohmann::json(iso_ms(*r.end_ms)) : nlohmann::json(nullptr);
}

void to_json(nlohmann::json& j, const DropRecord& r) {
  j = nlohmann::json{{"id", r.id},         {"time_ms", r.time_ms}, {"time", iso_ms(r.time_ms)},
                     {"vm_id", r.vm_id},   {"vm", r.vm_name},      {"client_fp", r.client_fp},
                     {"reason", r.reason}, {"kind", r.kind},       {"suppressed", r.suppressed},
                     {"proto", r.proto},   {"length", r.length},   {"indev", r.indev}};
  j["family"] = r.family ? nlohmann::json(family_number(*r.family)) : nlohmann::json(nullptr);
  j["src"] = r.src ? nlohmann::json(r.src->to_string()) : nlohmann::json(nullptr);
  j["dst"] = r.dst ? nlohmann::json(r.dst->to_string()) : nlohmann::json(nullptr);
  put_opt(j, "sport", r.sport);
  put_opt(j, "dport", r.dport);
  put_opt(j, "icmp_type", r.icmp_type);
  put_opt(j, "icmp_code", r.icmp_code);
}

void to_json(nlohmann::json& j, const GapRecord& r) {
  j = nlohmann::json{{"id", r.id},         {"time_ms", r.time_ms}, {"time", iso_ms(r.time_ms)},
                     {"source", r.source}, {"lost", r.lost},       {"detail", r.detail}};
}

void to_json(nlohmann::json& j, const TopRow& r) {
  j = nlohmann::json{{"vm_id", r.vm_id},    {"vm", r.vm_name},          {"client_fp", r.client_fp},
                     {"flows", r.flows},    {"bytes_out", r.bytes_out}, {"bytes_in", r.bytes_in},
                     {"packets", r.packets}};
}

void to_json(nlohmann::json& j, const RetentionReport& r) {
  j = nlohmann::json{{"flows_deleted", r.flows_deleted},
                     {"drops_deleted", r.drops_deleted},
                     {"gaps_deleted", r.gaps_deleted},
                     {"bytes_in_use", r.bytes_in_use}};
}

// --- lifecycle ------------------------------------------------------------

Result<FlowLog> FlowLog::open(const std::string& path, const Options& options) {
  sqlite3* raw = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  sql::Db db(raw);
  if (rc != SQLITE_OK) {
    return make_error("cannot open flow log " + path + ": " + (raw ? sqlite3_errmsg(raw) : "out of memory") +
                      " (check that its directory exists and is writable)");
  }
  // Short: the audit log's connection holds the write lock only for one row.
  sqlite3_busy_timeout(db.get(), 2000);
  if (auto st = exec(db.get(), "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY;"); !st) {
    return with_context("initialising flow log " + path, st.error());
  }
  if (auto st = exec(db.get(), kSchema); !st)
    return with_context("creating the flow log schema in " + path, st.error());
  Statement get(db.get(), "SELECT value FROM meta WHERE key='flowlog_schema'");
  if (get.step() == SQLITE_ROW) {
    if (get.text(0) != std::to_string(kSchemaVersion)) {
      return make_error("flow log " + path + " has schema " + get.text(0) + ", this daemon knows " +
                        std::to_string(kSchemaVersion) + "; upgrade surrogated or move the file away");
    }
  } else {
    Statement put(db.get(), "INSERT INTO meta(key, value) VALUES('flowlog_schema', ?)");
    put.bind(1, std::to_string(kSchemaVersion));
    if (put.step() != SQLITE_DONE) return db_error(db.get(), "writing the flow log schema version to " + path);
  }
  FlowLog log(std::move(db), options);
  log.last_commit_ms_ = wall_ms();
  return log;
}

FlowLog::FlowLog(FlowLog&&) noexcept = default;
FlowLog& FlowLog::operator=(FlowLog&&) noexcept = default;

FlowLog::~FlowLog() {
  if (!db_) return;
  try {
    if (auto st = flush(); !st) {
      log::error("flow log: " + std::to_string(queue_.size()) +
                 " records could not be written at shutdown and are lost: " + st.error().describe());
    }
  } catch (const std::exception& e) {  // out of memory while writing: nothing more to do at shutdown
    log::error(std::string("flow log: records lost at shutdown: ") + e.what());
  }
}

// --- recording ------------------------------------------------------------

void FlowLog::enqueue(Op op) {
  if (queue_.size() >= options_.max_backlog) {
    // Writing has been failing for a while: keep memory bounded, count the loss.
    if (lost_unreported_ == 0) first_loss_ms_ = wall_ms();
    ++lost_unreported_;
    ++lost_total_;
    return;
  }
  queue_.push_back(std::move(op));
}

void FlowLog::record_flow_start(const netpolicy::FlowEvent& ev, const FlowContext& ctx) {
  enqueue(FlowOp{flow_row(ev, ctx, "new"), ev.start_ns != 0});
}

void FlowLog::record_flow_end(const netpolicy::FlowEvent& ev, const FlowContext& ctx) {
  FlowEndOp op{{flow_row(ev, ctx, "end"), ev.start_ns != 0}};
  op.row.end_ms = (ev.stop_ns != 0 ? ev.stop_ns : ev.observed_ns) / 1'000'000;
  if (ev.start_ns == 0) op.row.start_ms = *op.row.end_ms;  // unknown start: the end is the best bound we have
  enqueue(std::move(op));
}

void FlowLog::record_drop(const netpolicy::DropEvent& ev, const std::optional<FlowContext>& ctx) {
  DropRecord r;
  r.time_ms = ev.time_ns / 1'000'000;
  r.vm_id = ev.vm_id;
  r.vm_name = ctx && !ctx->vm_name.empty() ? ctx->vm_name : ev.vm;
  r.client_fp = ctx ? ctx->client_fp : "";
  r.reason = ev.reason;
  if (ev.has_addresses) {
    r.family = ev.family;
    r.src = ev.src;
    r.dst = ev.dst;
  }
  r.proto = ev.proto;
  if (ev.has_ports) {
    r.sport = ev.sport;
    r.dport = ev.dport;
  }
  if (ev.has_icmp) {
    r.icmp_type = ev.icmp_type;
    r.icmp_code = ev.icmp_code;
  }
  r.length = ev.length;
  r.indev = ev.indev;

  const std::int64_t second = r.time_ms / 1000;
  auto& w = drop_windows_[{r.vm_name, r.reason}];
  if (w.second != second) {
    if (w.suppressed > 0) {
      w.sample.kind = "summary";
      w.sample.suppressed = w.suppressed;
      enqueue(std::move(w.sample));
    }
    w = DropWindow{second, 0, 0, {}};
  }
  if (w.stored < options_.drops_per_second) {
    ++w.stored;
    enqueue(std::move(r));
  } else {
    ++w.suppressed;
    ++suppressed_total_;
    w.sample = std::move(r);
  }
}

void FlowLog::close_drop_windows(std::optional<std::int64_t> before_second) {
  for (auto it = drop_windows_.begin(); it != drop_windows_.end();) {
    auto& w = it->second;
    const bool over = !before_second || w.second < *before_second;
    if (over && w.suppressed > 0) {
      w.sample.kind = "summary";
      w.sample.suppressed = w.suppressed;
      enqueue(std::move(w.sample));
      w.suppressed = 0;
      w.sample = {};
    }
    // A window long over holds nothing worth keeping: forget idle pairs.
    if (before_second && w.second < *before_second - 60) {
      it = drop_windows_.erase(it);
    } else {
      ++it;
    }
  }
}

void FlowLog::record_gap(std::string source, std::string detail, std::int64_t lost, std::int64_t time_ms) {
  GapRecord g;
  g.time_ms = time_ms;
  g.source = std::move(source);
  g.detail = std::move(detail);
  g.lost = lost;
  enqueue(std::move(g));
}

void FlowLog::record_resync(const std::string& cause,
                            const std::vector<std::pair<netpolicy::FlowEvent, FlowContext>>& open_flows,
                            std::int64_t now_ms) {
  ResyncOp op;
  op.cause = cause;
  op.time_ms = now_ms;
  op.open_rows.reserve(open_flows.size());
  for (const auto& [ev, ctx] : open_flows)
    op.open_rows.push_back(FlowOp{flow_row(ev, ctx, "resync"), ev.start_ns != 0});
  enqueue(std::move(op));
}

// --- committing -----------------------------------------------------------

Status FlowLog::maybe_flush(std::int64_t now_ms) {
  close_drop_windows(now_ms / 1000);
  const bool due = queue_.size() >= options_.batch_records ||
                   (now_ms - last_commit_ms_ >= options_.batch_interval_ms && (!queue_.empty() || lost_unreported_));
  if (!due) return {};
  last_commit_ms_ = now_ms;
  return commit();
}

Status FlowLog::flush() {
  close_drop_windows(std::nullopt);
  last_commit_ms_ = wall_ms();
  return commit();
}

namespace {

// The prepared statements of one commit.
struct Writer {
  explicit Writer(sqlite3* db)
      : db(db),
        insert_flow(db,
                    "INSERT INTO flows (vm_id, vm_name, client_fp, trust_level, authcert_id, client_contact, path, "
                    "family, proto, src, dst, sport, dport, icmp_type, icmp_code, start_ms, end_ms, orig_packets, "
                    "orig_bytes, reply_packets, reply_bytes, ct_id, syn_probe, origin, end_lost, start_exact) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"),
        find_open(db,
                  // ct ids are 32-bit hashes that open flows may share: the
                  // tuple tells two such flows apart.
                  "SELECT id FROM flows WHERE ct_id=?1 AND vm_id=?2 AND end_ms IS NULL "
                  "AND (?3=0 OR start_exact=0 OR start_ms=?4) AND proto=?5 AND src=?6 AND dst=?7 "
                  "AND sport IS ?8 AND dport IS ?9 ORDER BY id DESC LIMIT 1"),
        close_flow(db,
                   // NEW events carry no kernel timestamp, DESTROY events do: the
                   // end corrects the start of a row that only had the time it was read.
                   "UPDATE flows SET end_ms=?1, orig_packets=?2, orig_bytes=?3, reply_packets=?4, reply_bytes=?5, "
                   "end_lost=0, start_ms=CASE WHEN ?8=1 THEN ?9 ELSE start_ms END, "
                   "start_exact=MAX(start_exact, ?8) WHERE id = (SELECT id FROM flows WHERE ct_id=?6 AND vm_id=?7 "
                   "AND (end_ms IS NULL OR end_lost=1) AND (?8=0 OR start_exact=0 OR start_ms=?9) "
                   "AND proto=?10 AND src=?11 AND dst=?12 AND sport IS ?13 AND dport IS ?14 "
                   "ORDER BY id DESC LIMIT 1)"),
        insert_drop(db,
                    "INSERT INTO drops (time_ms, vm_id, vm_name, client_fp, reason, kind, suppressed, family, proto, "
                    "src, dst, sport, dport, icmp_type, icmp_code, length, indev) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"),
        insert_gap(db, "INSERT INTO gaps (time_ms, source, lost, detail) VALUES (?,?,?,?)") {}

  [[nodiscard]] bool ok() const {
    return insert_flow.ok() && find_open.ok() && close_flow.ok() && insert_drop.ok() && insert_gap.ok();
  }

  int flow(const FlowRecord& r, bool exact_start) {
    insert_flow.reset();
    insert_flow.bind(1, r.vm_id).bind(2, r.vm_name).bind(3, r.client_fp).bind(4, r.trust_level);
    insert_flow.bind(5, r.authcert_id).bind(6, r.client_contact).bind(7, r.path);
    insert_flow.bind(8, std::int64_t{family_number(r.family)}).bind(9, std::int64_t{r.proto});
    insert_flow.bind(10, to_blob(r.src)).bind(11, to_blob(r.dst)).bind(12, r.sport).bind(13, r.dport);
    insert_flow.bind(14, r.icmp_type).bind(15, r.icmp_code).bind(16, r.start_ms).bind(17, r.end_ms);
    insert_flow.bind(18, r.orig_packets).bind(19, r.orig_bytes).bind(20, r.reply_packets).bind(21, r.reply_bytes);
    insert_flow.bind(22, r.ct_id).bind(23, std::int64_t{r.syn_probe}).bind(24, r.origin);
    insert_flow.bind(25, std::int64_t{r.end_lost}).bind(26, std::int64_t{exact_start});
    return done(insert_flow.step());
  }

  // SQLITE_ROW when an open row of this flow exists.
  int is_open(const FlowRecord& r, bool match_start) {
    find_open.reset();
    find_open.bind(1, r.ct_id).bind(2, r.vm_id).bind(3, std::int64_t{match_start}).bind(4, r.start_ms);
    find_open.bind(5, std::int64_t{r.proto}).bind(6, to_blob(r.src)).bind(7, to_blob(r.dst));
    find_open.bind(8, r.sport).bind(9, r.dport);
    return find_open.step();
  }

  // SQLITE_OK, also when the flow is already recorded open (a resync saw it in the table dump).
  int flow_start(const FlowLog::FlowOp& op, std::int64_t* added = nullptr) {
    const int rc = is_open(op.row, op.exact_start);
    if (rc == SQLITE_ROW) return SQLITE_OK;
    if (rc != SQLITE_DONE) return rc;
    if (added != nullptr) ++*added;
    return flow(op.row, op.exact_start);
  }

  int flow_end(const FlowLog::FlowEndOp& op) {
    close_flow.reset();
    close_flow.bind(1, op.row.end_ms).bind(2, op.row.orig_packets).bind(3, op.row.orig_bytes);
    close_flow.bind(4, op.row.reply_packets).bind(5, op.row.reply_bytes).bind(6, op.row.ct_id);
    close_flow.bind(7, op.row.vm_id).bind(8, std::int64_t{op.exact_start}).bind(9, op.row.start_ms);
    close_flow.bind(10, std::int64_t{op.row.proto}).bind(11, to_blob(op.row.src)).bind(12, to_blob(op.row.dst));
    close_flow.bind(13, op.row.sport).bind(14, op.row.dport);
    const int rc = done(close_flow.step());
    if (rc != SQLITE_OK) return rc;
    if (sqlite3_changes(db) > 0) return SQLITE_OK;
    return flow(op.row, op.exact_start);  // no start seen: a complete row
  }

  int drop(const DropRecord& r) {
    insert_drop.reset();
    insert_drop.bind(1, r.time_ms).bind(2, r.vm_id).bind(3, r.vm_name).bind(4, r.client_fp).bind(5, r.reason);
    insert_drop.bind(6, r.kind).bind(7, r.suppressed);
    if (r.family) {
      insert_drop.bind(8, std::int64_t{family_number(*r.family)});
      insert_drop.bind(10, to_blob(*r.src)).bind(11, to_blob(*r.dst));
    }
    insert_drop.bind(9, std::int64_t{r.proto}).bind(12, r.sport).bind(13, r.dport).bind(14, r.icmp_type);
    insert_drop.bind(15, r.icmp_code).bind(16, r.length).bind(17, r.indev);
    return done(insert_drop.step());
  }

  int gap(const GapRecord& g) {
    insert_gap.reset();
    insert_gap.bind(1, g.time_ms).bind(2, g.source).bind(3, g.lost).bind(4, g.detail);
    return done(insert_gap.step());
  }

  int resync(const FlowLog::ResyncOp& op) {
    std::int64_t added = 0;
    std::set<std::pair<std::int64_t, std::int64_t>> open_now;
    for (const auto& r : op.open_rows) {
      open_now.insert({r.row.ct_id, r.row.vm_id});
      if (const int rc = flow_start(r, &added); rc != SQLITE_OK) return rc;
    }
    // Rows the log holds open but the kernel no longer has: their DESTROY was lost.
    std::vector<std::int64_t> stale;
    {
      Statement s(db, "SELECT id, ct_id, vm_id FROM flows WHERE end_ms IS NULL AND start_ms <= ?");
      s.bind(1, op.time_ms);
      int rc = 0;
      while ((rc = s.step()) == SQLITE_ROW) {
        if (open_now.count({s.integer(1), s.integer(2)}) == 0) stale.push_back(s.integer(0));
      }
      if (rc != SQLITE_DONE) return rc;
    }
    Statement close(db, "UPDATE flows SET end_ms=?, end_lost=1 WHERE id=?");
    for (auto id : stale) {
      close.reset();
      close.bind(1, op.time_ms).bind(2, id);
      if (const int rc = done(close.step()); rc != SQLITE_OK) return rc;
    }
    GapRecord g;
    g.time_ms = op.time_ms;
    g.source = "conntrack";
    g.detail = op.cause + ", resynced " + std::to_string(op.open_rows.size()) + " open flows (" +
               std::to_string(added) + " not logged before); " + std::to_string(stale.size()) +
               " flows ended unseen and were closed at the resync";
    return gap(g);
  }

  static int done(int rc) { return rc == SQLITE_DONE ? SQLITE_OK : rc; }

  sqlite3* db;
  Statement insert_flow, find_open, close_flow, insert_drop, insert_gap;
};

}  // namespace

Status FlowLog::commit() {
  if (!db_ || (queue_.empty() && lost_unreported_ == 0)) return {};
  sqlite3* db = db_.get();
  auto fail = [&](const std::string& what) -> Status {
    const std::string msg = sqlite3_errmsg(db);
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);  // fails harmlessly if nothing is open
    ++failed_commits_;
    last_error_ = what + ": " + msg;
    return make_error("flow log: " + last_error_ + "; " + std::to_string(queue_.size()) +
                      " records kept for the next try (free disk space or run retention; beyond " +
                      std::to_string(options_.max_backlog) + " queued records new ones are dropped and counted)");
  };
  if (auto st = exec(db, "BEGIN IMMEDIATE"); !st) return fail("starting a transaction");
  Writer w(db);
  if (!w.ok()) return fail("preparing statements");

  if (lost_unreported_ > 0) {
    GapRecord g;
    g.time_ms = first_loss_ms_;
    g.source = "flowlog";
    g.lost = static_cast<std::int64_t>(lost_unreported_);
    g.detail = "disk full or write error: " + std::to_string(lost_unreported_) + " records lost" +
               (last_error_.empty() ? std::string() : " (" + last_error_ + ")");
    if (const int rc = w.gap(g); rc != SQLITE_OK) return fail("recording lost records");
  }
  std::uint64_t skipped = 0;
  std::string skip_reason;
  for (const auto& op : queue_) {
    const int rc = std::visit(
        [&](const auto& x) -> int {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, FlowOp>) return w.flow_start(x);
          if constexpr (std::is_same_v<T, FlowEndOp>) return w.flow_end(x);
          if constexpr (std::is_same_v<T, DropRecord>) return w.drop(x);
          if constexpr (std::is_same_v<T, GapRecord>) return w.gap(x);
          if constexpr (std::is_same_v<T, ResyncOp>) return w.resync(x);
        },
        op);
    if (rc == SQLITE_OK) continue;
    if (is_transient(rc)) return fail("writing a batch of " + std::to_string(queue_.size()) + " records");
    ++skipped;  // this record is refused on its own: do not let it block the rest
    skip_reason = sqlite3_errmsg(db);
  }
  if (skipped > 0) {
    GapRecord g;
    g.time_ms = wall_ms();
    g.source = "flowlog";
    g.lost = static_cast<std::int64_t>(skipped);
    g.detail = std::to_string(skipped) + " records refused by the database: " + skip_reason;
    if (const int rc = w.gap(g); rc != SQLITE_OK) return fail("recording refused records");
  }
  if (auto st = exec(db, "COMMIT"); !st) return fail("committing");
  lost_total_ += skipped;
  queue_.clear();
  lost_unreported_ = 0;
  last_error_.clear();
  return {};
}

// --- retention ------------------------------------------------------------

Result<RetentionReport> FlowLog::apply_retention(std::int64_t max_age_seconds, std::int64_t max_bytes,
                                                 std::int64_t now_ms) {
  sqlite3* db = db_.get();
  RetentionReport report;
  // Each chunk is its own short transaction, so the event loop's commits are never held up for long.
  auto delete_chunks = [&](const char* sql, std::int64_t bound, std::int64_t& counter) -> Status {
    Statement s(db, sql);
    if (!s.ok()) return db_error(db, "preparing retention");
    for (;;) {
      s.reset();
      s.bind(1, bound).bind(2, std::int64_t{kDeleteChunk});
      if (s.step() != SQLITE_DONE) return db_error(db, "deleting old flow log rows (is the disk failing?)");
      const int n = sqlite3_changes(db);
      counter += n;
      if (n < kDeleteChunk) return {};
    }
  };
  if (max_age_seconds > 0) {
    const std::int64_t cutoff = now_ms - max_age_seconds * 1000;
    // end_ms >= start_ms, so the start index narrows the scan. Open flows stay.
    if (auto st = delete_chunks("DELETE FROM flows WHERE id IN (SELECT id FROM flows WHERE start_ms < ?1 AND "
                                "end_ms IS NOT NULL AND end_ms < ?1 LIMIT ?2)",
                                cutoff, report.flows_deleted);
        !st) {
      return st.error();
    }
    if (auto st = delete_chunks("DELETE FROM drops WHERE id IN (SELECT id FROM drops WHERE time_ms < ?1 LIMIT ?2)",
                                cutoff, report.drops_deleted);
        !st) {
      return st.error();
    }
    if (auto st = delete_chunks("DELETE FROM gaps WHERE id IN (SELECT id FROM gaps WHERE time_ms < ?1 LIMIT ?2)",
                                cutoff, report.gaps_deleted);
        !st) {
      return st.error();
    }
  }
  auto in_use = [&]() -> Result<std::int64_t> {
    auto pages = pragma_int(db, "page_count");
    auto free_pages = pragma_int(db, "freelist_count");
    auto size = pragma_int(db, "page_size");
    if (!pages || !free_pages || !size) return db_error(db, "measuring the flow log");
    return (*pages - *free_pages) * *size;
  };
  auto used = in_use();
  if (!used) return used.error();
  if (max_bytes > 0) {
    Statement oldest_flow(db, "SELECT MIN(start_ms) FROM flows");
    Statement oldest_drop(db, "SELECT MIN(time_ms) FROM drops");
    Statement del_flows(db, "DELETE FROM flows WHERE id IN (SELECT id FROM flows ORDER BY start_ms LIMIT " +
                                std::to_string(kDeleteChunk) + ")");
    Statement del_drops(db, "DELETE FROM drops WHERE id IN (SELECT id FROM drops ORDER BY time_ms LIMIT " +
                                std::to_string(kDeleteChunk) + ")");
    while (*used > max_bytes) {
      oldest_flow.reset();
      oldest_drop.reset();
      if (oldest_flow.step() != SQLITE_ROW || oldest_drop.step() != SQLITE_ROW) {
        return db_error(db, "finding the oldest flow log rows");
      }
      const bool have_flows = !oldest_flow.is_null(0);
      const bool have_drops = !oldest_drop.is_null(0);
      if (!have_flows && !have_drops) break;  // only the audit table and gaps are left
      const bool flows_first = have_flows && (!have_drops || oldest_flow.integer(0) <= oldest_drop.integer(0));
      Statement& del = flows_first ? del_flows : del_drops;
      del.reset();
      if (del.step() != SQLITE_DONE) return db_error(db, "deleting the oldest flow log rows");
      (flows_first ? report.flows_deleted : report.drops_deleted) += sqlite3_changes(db);
      used = in_use();
      if (!used) return used.error();
    }
  }
  report.bytes_in_use = *used;
  // Let the WAL restart from the beginning so it does not grow beside the freed pages.
  sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
  return report;
}

// --- queries --------------------------------------------------------------

Result<std::vector<FlowRecord>> FlowLog::flows(const FlowQuery& q) const {
  Filter f;
  if (q.vm) f.add("vm_name = ?", {*q.vm});
  if (q.client_fp) f.add("client_fp = ?", {*q.client_fp});
  if (q.to) f.add_prefix("dst", *q.to);
  if (q.port) f.add("dport = ?", {std::int64_t{*q.port}});
  if (q.until_ms) f.add("start_ms <= ?", {*q.until_ms});
  if (q.since_ms) f.add("(end_ms IS NULL OR end_ms >= ?)", {*q.since_ms});
  Statement s(db_.get(),
              std::string("SELECT ") + kFlowColumns + " FROM flows" + f.where() + " ORDER BY start_ms, id LIMIT ?");
  if (!s.ok()) return db_error(db_.get(), "querying flows");
  s.bind(f.bind(s), std::int64_t{q.limit});
  std::vector<FlowRecord> out;
  int rc = 0;
  while ((rc = s.step()) == SQLITE_ROW) out.push_back(read_flow(s));
  if (rc != SQLITE_DONE) return db_error(db_.get(), "querying flows");
  return out;
}

Result<std::vector<FlowRecord>> FlowLog::who_sent(const Prefix& to, std::int64_t since_ms, std::int64_t until_ms,
                                                  int limit) const {
  FlowQuery q;
  q.to = to;
  q.since_ms = since_ms;
  q.until_ms = until_ms;
  q.limit = limit;
  return flows(q);
}

Result<std::vector<DropRecord>> FlowLog::drops(const DropQuery& q) const {
  Filter f;
  if (q.vm) f.add("vm_name = ?", {*q.vm});
  if (q.reason) f.add("reason = ?", {*q.reason});
  if (q.to) f.add_prefix("dst", *q.to);
  if (q.since_ms) f.add("time_ms >= ?", {*q.since_ms});
  if (q.until_ms) f.add("time_ms <= ?", {*q.until_ms});
  Statement s(db_.get(),
              std::string("SELECT ") + kDropColumns + " FROM drops" + f.where() + " ORDER BY time_ms, id LIMIT ?");
  if (!s.ok()) return db_error(db_.get(), "querying drops");
  s.bind(f.bind(s), std::int64_t{q.limit});
  std::vector<DropRecord> out;
  int rc = 0;
  while ((rc = s.step()) == SQLITE_ROW) out.push_back(read_drop(s));
  if (rc != SQLITE_DONE) return db_error(db_.get(), "querying drops");
  return out;
}

Result<std::vector<GapRecord>> FlowLog::gaps(std::optional<std::int64_t> since_ms, int limit) const {
  Statement s(db_.get(),
              "SELECT id, time_ms, source, lost, detail FROM gaps WHERE time_ms >= ? ORDER BY time_ms, id "
              "LIMIT ?");
  s.bind(1, since_ms.value_or(0)).bind(2, std::int64_t{limit});
  std::vector<GapRecord> out;
  int rc = 0;
  while ((rc = s.step()) == SQLITE_ROW) {
    out.push_back(GapRecord{s.integer(0), s.integer(1), s.text(2), s.integer(3), s.text(4)});
  }
  if (rc != SQLITE_DONE) return db_error(db_.get(), "querying gaps");
  return out;
}

Result<std::vector<TopRow>> FlowLog::top(const TopQuery& q) const {
  Filter f;
  if (q.since_ms) f.add("start_ms >= ?", {*q.since_ms});
  if (q.until_ms) f.add("start_ms <= ?", {*q.until_ms});
  const char* order = q.by == TopBy::bytes ? "SUM(orig_bytes + reply_bytes)" : "COUNT(*)";
  Statement s(db_.get(), std::string("SELECT vm_id, vm_name, client_fp, COUNT(*), SUM(orig_bytes), SUM(reply_bytes), "
                                     "SUM(orig_packets + reply_packets) FROM flows") +
                             f.where() + " GROUP BY vm_id, vm_name, client_fp ORDER BY " + order +
                             " DESC, vm_id LIMIT ?");
  if (!s.ok()) return db_error(db_.get(), "querying top talkers");
  s.bind(f.bind(s), std::int64_t{q.limit});
  std::vector<TopRow> out;
  int rc = 0;
  while ((rc = s.step()) == SQLITE_ROW) {
    out.push_back(TopRow{s.integer(0), s.text(1), s.text(2), s.integer(3), s.integer(4), s.integer(5), s.integer(6)});
  }
  if (rc != SQLITE_DONE) return db_error(db_.get(), "querying top talkers");
  return out;
}

FlowLogStats FlowLog::stats() const {
  return FlowLogStats{queue_.size(), lost_unreported_, lost_total_, suppressed_total_, failed_commits_, last_error_};
}

}  // namespace sg
