#include "surrogated/audit_log.h"

#include <openssl/evp.h>

#include "common/sqlite_util.h"
#include "common/timeutil.h"

namespace sg {

namespace {

const std::string kGenesisHash(64, '0');

using sql::db_error;
using sql::exec;

sql::Stmt prepare(sqlite3* db, const char* sql) {
  sqlite3_stmt* raw = nullptr;
  sqlite3_prepare_v2(db, sql, -1, &raw, nullptr);
  return sql::Stmt(raw);
}

void bind_text(sqlite3_stmt* s, int i, const std::string& v) {
  sqlite3_bind_text(s, i, v.c_str(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
}

std::string column_text(sqlite3_stmt* s, int col) {
  const auto* p = sqlite3_column_text(s, col);
  return p == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(p));
}

// Compact, sorted keys (nlohmann's objects are ordered maps), invalid UTF-8
// replaced rather than thrown: the same bytes every time for the same value.
std::string canonical(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

AuditEntry read_entry(sqlite3_stmt* s) {
  AuditEntry e;
  e.seq = sqlite3_column_int64(s, 0);
  e.time_ms = sqlite3_column_int64(s, 1);
  e.actor = column_text(s, 2);
  e.action = column_text(s, 3);
  e.subject = column_text(s, 4);
  e.detail = column_text(s, 5);
  e.prev_hash = column_text(s, 6);
  e.hash = column_text(s, 7);
  return e;
}

// Rolls back unless committed, so every early return leaves no transaction open.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) { ok_ = exec(db, "BEGIN IMMEDIATE").ok(); }
  ~Transaction() {
    if (ok_ && !done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  [[nodiscard]] bool ok() const { return ok_; }
  Status commit() {
    done_ = true;
    auto st = exec(db_, "COMMIT");
    if (!st) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return st;
  }

 private:
  sqlite3* db_;
  bool ok_ = false;
  bool done_ = false;
};

}  // namespace

std::string audit_row_hash(const AuditEntry& e) {
  const std::string data =
      e.prev_hash + "\n" + canonical(nlohmann::json::array({e.seq, e.time_ms, e.actor, e.action, e.subject, e.detail}));
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) return "";
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 0x0f]);
  }
  return out;
}

void to_json(nlohmann::json& j, const AuditEntry& e) {
  auto detail = nlohmann::json::parse(e.detail, nullptr, false);
  j = nlohmann::json{{"seq", e.seq},
                     {"time_ms", e.time_ms},
                     {"time", format_utc(e.time_ms / 1000)},
                     {"actor", e.actor},
                     {"action", e.action},
                     {"subject", e.subject},
                     {"detail", detail.is_discarded() ? nlohmann::json(e.detail) : detail},
                     {"prev_hash", e.prev_hash},
                     {"hash", e.hash}};
}

void to_json(nlohmann::json& j, const VerifyReport& r) {
  j = nlohmann::json{
      {"ok", r.ok}, {"rows_checked", r.rows_checked}, {"head_hash", r.head_hash}, {"message", r.message}};
  j["first_bad_seq"] = r.first_bad_seq ? nlohmann::json(*r.first_bad_seq) : nlohmann::json(nullptr);
}

Result<AuditLog> AuditLog::open(const std::string& path) {
  sqlite3* raw = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  sql::Db db(raw);
  if (rc != SQLITE_OK) {
    return make_error("cannot open audit log " + path + ": " + (raw ? sqlite3_errmsg(raw) : "out of memory") +
                      " (check that its directory exists and is writable)");
  }
  sqlite3_busy_timeout(db.get(), 5000);
  const char* schema =
      "PRAGMA journal_mode=WAL;"
      "PRAGMA synchronous=FULL;"
      "CREATE TABLE IF NOT EXISTS audit ("
      "  seq INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,"
      "  subject TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);"
      "CREATE INDEX IF NOT EXISTS audit_time ON audit(time_ms);"
      "CREATE TABLE IF NOT EXISTS audit_head ("
      "  id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);"
      "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
      "  BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;"
      "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
      "  BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;";
  if (auto st = exec(db.get(), schema); !st) return with_context("initialising the audit log in " + path, st.error());
  return AuditLog(std::move(db));
}

Result<AuditEntry> AuditLog::append(const std::string& actor, const std::string& action, const std::string& subject,
                                    const nlohmann::json& detail, std::int64_t time_ms) {
  sqlite3* db = db_.get();
  Transaction tx(db);
  if (!tx.ok()) return db_error(db, "audit log: starting a transaction (is the disk full or the file locked?)");
  AuditEntry e;
  e.prev_hash = kGenesisHash;
  // Continue from the recorded head, not from the last row: were the last
  // row deleted, a new row chained to the one before would hide it.
  auto head = prepare(db, "SELECT seq, hash FROM audit_head WHERE id = 1");
  if (!head) return db_error(db, "audit log: reading the chain head");
  const int hrc = sqlite3_step(head.get());
  if (hrc == SQLITE_ROW) {
    e.seq = sqlite3_column_int64(head.get(), 0) + 1;
    e.prev_hash = column_text(head.get(), 1);
  } else if (hrc == SQLITE_DONE) {
    e.seq = 1;
  } else {
    return db_error(db, "audit log: reading the chain head");
  }
  e.time_ms = time_ms;
  e.actor = actor;
  e.action = action;
  e.subject = subject;
  e.detail = canonical(detail);
  e.hash = audit_row_hash(e);
  if (e.hash.empty())
    return make_error("audit log: SHA-256 is unavailable in this OpenSSL build; check its FIPS setup");

  auto ins = prepare(db,
                     "INSERT INTO audit (seq, time_ms, actor, action, subject, detail, prev_hash, hash) "
                     "VALUES (?,?,?,?,?,?,?,?)");
  if (!ins) return db_error(db, "audit log: preparing the insert");
  sqlite3_bind_int64(ins.get(), 1, e.seq);
  sqlite3_bind_int64(ins.get(), 2, e.time_ms);
  bind_text(ins.get(), 3, e.actor);
  bind_text(ins.get(), 4, e.action);
  bind_text(ins.get(), 5, e.subject);
  bind_text(ins.get(), 6, e.detail);
  bind_text(ins.get(), 7, e.prev_hash);
  bind_text(ins.get(), 8, e.hash);
  if (sqlite3_step(ins.get()) != SQLITE_DONE) {
    return db_error(db, "audit log: writing row " + std::to_string(e.seq) + " (free disk space and retry)");
  }
  auto put_head = prepare(db, "INSERT OR REPLACE INTO audit_head (id, seq, hash) VALUES (1, ?, ?)");
  if (!put_head) return db_error(db, "audit log: preparing the head update");
  sqlite3_bind_int64(put_head.get(), 1, e.seq);
  bind_text(put_head.get(), 2, e.hash);
  if (sqlite3_step(put_head.get()) != SQLITE_DONE) return db_error(db, "audit log: updating the chain head");
  if (auto st = tx.commit(); !st) return with_context("audit log: committing row " + std::to_string(e.seq), st.error());
  return e;
}

Result<std::vector<AuditEntry>> AuditLog::list(std::int64_t since_ms, int limit) const {
  auto s = prepare(db_.get(),
                   "SELECT seq, time_ms, actor, action, subject, detail, prev_hash, hash FROM audit "
                   "WHERE time_ms >= ? ORDER BY seq LIMIT ?");
  if (!s) return db_error(db_.get(), "audit log: preparing the listing");
  sqlite3_bind_int64(s.get(), 1, since_ms);
  sqlite3_bind_int64(s.get(), 2, limit);
  std::vector<AuditEntry> out;
  int rc = 0;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) out.push_back(read_entry(s.get()));
  if (rc != SQLITE_DONE) return db_error(db_.get(), "audit log: reading rows");
  return out;
}

Result<VerifyReport> AuditLog::verify() const {
  sqlite3* db = db_.get();
  // One read transaction: the rows and the head are seen as of one moment.
  if (auto st = exec(db, "BEGIN"); !st) return with_context("audit log: starting verification", st.error());
  struct EndRead {
    sqlite3* db;
    ~EndRead() { sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr); }  // read-only: nothing to lose
  } end_read{db};

  VerifyReport report;
  auto fail = [&](std::int64_t seq, std::string message) {
    report.ok = false;
    report.first_bad_seq = seq;
    report.message = std::move(message);
    return report;
  };
  auto s = prepare(db, "SELECT seq, time_ms, actor, action, subject, detail, prev_hash, hash FROM audit ORDER BY seq");
  if (!s) return db_error(db, "audit log: preparing verification");
  std::int64_t expected = 1;
  std::string prev = kGenesisHash;
  int rc = 0;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
    const AuditEntry e = read_entry(s.get());
    const std::string n = std::to_string(e.seq);
    if (e.seq != expected) {
      return fail(expected, "row " + std::to_string(expected) + " was removed: the chain jumps from row " +
                                std::to_string(expected - 1) + " to row " + n);
    }
    if (e.prev_hash != prev) {
      return fail(e.seq, e.seq == 1 ? "row 1 was modified: it does not start the chain"
                                    : "row " + n + " does not follow row " + std::to_string(e.seq - 1) + ": row " +
                                          std::to_string(e.seq - 1) + " was modified (its hash recomputed) or row " +
                                          n + " was");
    }
    if (audit_row_hash(e) != e.hash) {
      return fail(e.seq, "row " + n + " was modified: its content no longer matches its hash");
    }
    prev = e.hash;
    report.head_hash = e.hash;
    ++report.rows_checked;
    ++expected;
  }
  if (rc != SQLITE_DONE) return db_error(db, "audit log: reading rows for verification");
  const std::int64_t last = expected - 1;

  auto head = prepare(db, "SELECT seq, hash FROM audit_head WHERE id = 1");
  if (!head) return db_error(db, "audit log: reading the chain head");
  rc = sqlite3_step(head.get());
  if (rc == SQLITE_DONE) {
    if (last == 0) {
      report.message = "the audit log is empty";
      return report;
    }
    return fail(last, "the chain head record is missing: it was deleted, and rows after row " + std::to_string(last) +
                          " may have been removed with it");
  }
  if (rc != SQLITE_ROW) return db_error(db, "audit log: reading the chain head");
  const std::int64_t head_seq = sqlite3_column_int64(head.get(), 0);
  const std::string head_hash = column_text(head.get(), 1);
  if (head_seq > last) {
    return fail(last + 1, "row " + std::to_string(last + 1) + (head_seq > last + 1 ? " and later rows" : "") +
                              " were removed from the end: the chain head says the log has " +
                              std::to_string(head_seq) + " rows, the table has " + std::to_string(last));
  }
  if (head_seq < last) {
    return fail(head_seq + 1, "rows after " + std::to_string(head_seq) +
                                  " were added behind the daemon's back, or the chain head was modified");
  }
  if (head_hash != report.head_hash) {
    return fail(last, "row " + std::to_string(last) +
                          " does not match the chain head: it was replaced or the head "
                          "was modified");
  }
  report.message = std::to_string(last) + " rows, chain intact up to the recorded head";
  return report;
}

}  // namespace sg
