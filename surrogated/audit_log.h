// The audit log: who did what to which VM, prefix or policy, in an
// append-only, hash-chained table, checked by `surrogatectl audit verify`.
//
// Storage. The table `audit` lives in the flow log's database file (one file
// to back up and to keep on the log partition) but is opened through its own
// connection with synchronous=FULL: an audit row is committed, alone, before
// append() returns, whatever the flow log's batching is doing. Retention
// never touches it.
//
// Chain. Each row stores prev_hash (the previous row's hash; 64 zeros for
// the first) and hash = SHA-256(prev_hash || "\n" || canonical row), where
// the canonical row is the compact JSON array
// [seq, time_ms, actor, action, subject, detail] and detail is the compact
// JSON text of the details with sorted keys, stored exactly as hashed. A row
// changed in place no longer matches its hash; a row removed from the middle
// breaks the next row's link or leaves a hole in seq. A row removed from the
// end would leave a valid shorter chain, so the head (last seq and hash) is
// also kept in the table audit_head, updated in the same transaction as each
// append; verify() compares the chain's end with it.
//
// Limits. Anyone who can write the file can rewrite the whole chain and the
// head consistently; the chain proves integrity only against edits that did
// not recompute it. append() returns the new head hash so the daemon can also
// log it (journald, a remote syslog) as an anchor outside the file. SQL
// triggers refuse UPDATE and DELETE on the table to stop accidents, not
// attackers.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/raii/sqlite.h"
#include "common/result.h"

namespace sg {

struct AuditEntry {
  std::int64_t seq = 0;  // 1, 2, 3, ... without holes
  std::int64_t time_ms = 0;
  std::string actor;    // "uid 0", "client sha256:..."
  std::string action;   // "allocate", "release", "stop", "authcert-accepted", "policy-reload", "block", ...
  std::string subject;  // "sg7", "203.0.113.0/24", ...
  std::string detail;   // compact JSON text
  std::string prev_hash;
  std::string hash;  // lowercase hex SHA-256
};

struct VerifyReport {
  bool ok = true;
  std::int64_t rows_checked = 0;
  std::optional<std::int64_t> first_bad_seq;  // the first row that fails, when one does
  std::string head_hash;                      // hash of the last row (the chain's end as found)
  std::string message;                        // "12 rows, chain intact" or what is wrong, for people
};

void to_json(nlohmann::json& j, const AuditEntry& e);
void to_json(nlohmann::json& j, const VerifyReport& r);

// SHA-256 of the row's canonical form chained to prev_hash (see the header comment).
std::string audit_row_hash(const AuditEntry& e);

class AuditLog {
 public:
  // Opens (and creates) the audit table in the database at `path`; normally
  // the flow log's file.
  static Result<AuditLog> open(const std::string& path);

  // Appends one row at time_ms and returns it with its seq and hash.
  Result<AuditEntry> append(const std::string& actor, const std::string& action, const std::string& subject,
                            const nlohmann::json& detail, std::int64_t time_ms);
  // Rows with time_ms >= since_ms in seq order.
  Result<std::vector<AuditEntry>> list(std::int64_t since_ms, int limit = 1000) const;
  // Walks the whole chain. The Result fails only when the database cannot be
  // read; a broken chain is a report with ok = false.
  Result<VerifyReport> verify() const;

  [[nodiscard]] sqlite3* handle() const { return db_.get(); }

 private:
  explicit AuditLog(sql::Db db) : db_(std::move(db)) {}
  sql::Db db_;
};

}  // namespace sg
