// The project's one SQLite statement wrapper and error helpers, shared by the
// state store, the flow log and the audit log.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "common/raii/sqlite.h"
#include "common/result.h"

namespace sg::sql {

// "<what>: <SQLite's message>".
inline Error db_error(sqlite3* db, const std::string& what) { return make_error(what + ": " + sqlite3_errmsg(db)); }

// Runs one or more statements without results (schema, pragmas, BEGIN/COMMIT).
inline Status exec(sqlite3* db, const std::string& sql) {
  char* msg = nullptr;
  if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &msg) != SQLITE_OK) {
    std::string m = msg != nullptr ? msg : sqlite3_errmsg(db);
    sqlite3_free(msg);
    return make_error(m);
  }
  return {};
}

// A prepared statement: bind by 1-based index, step, read columns by
// 0-based index. A failed prepare shows in ok(); every later call is then a
// harmless no-op on a null statement that step() reports as an error.
class Statement {
 public:
  Statement(sqlite3* db, const std::string& sql) : db_(db) {
    sqlite3_stmt* raw = nullptr;
    rc_ = sqlite3_prepare_v2(db, sql.c_str(), -1, &raw, nullptr);
    stmt_.reset(raw);
  }
  [[nodiscard]] bool ok() const { return rc_ == SQLITE_OK; }
  [[nodiscard]] int prepare_rc() const { return rc_; }
  [[nodiscard]] sqlite3* db() const { return db_; }

  Statement& bind(int i, std::int64_t v) {
    sqlite3_bind_int64(stmt_.get(), i, v);
    return *this;
  }
  Statement& bind(int i, const std::string& v) {
    sqlite3_bind_text(stmt_.get(), i, v.c_str(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Statement& bind_blob(int i, std::string_view v) {
    sqlite3_bind_blob(stmt_.get(), i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  template <std::size_t N>
  Statement& bind(int i, const std::array<std::uint8_t, N>& v) {
    sqlite3_bind_blob(stmt_.get(), i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  // NULL when empty.
  template <class T>
  Statement& bind(int i, const std::optional<T>& v) {
    if (v) return bind(i, static_cast<std::conditional_t<std::is_integral_v<T>, std::int64_t, T>>(*v));
    sqlite3_bind_null(stmt_.get(), i);
    return *this;
  }

  int step() { return sqlite3_step(stmt_.get()); }
  void reset() {
    sqlite3_reset(stmt_.get());
    sqlite3_clear_bindings(stmt_.get());
  }

  [[nodiscard]] bool is_null(int col) const { return sqlite3_column_type(stmt_.get(), col) == SQLITE_NULL; }
  [[nodiscard]] std::int64_t integer(int col) const { return sqlite3_column_int64(stmt_.get(), col); }
  [[nodiscard]] std::optional<int> opt_int(int col) const {
    if (is_null(col)) return std::nullopt;
    return static_cast<int>(integer(col));
  }
  [[nodiscard]] std::string text(int col) const {
    const auto* p = sqlite3_column_text(stmt_.get(), col);
    return p == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(p));
  }
  [[nodiscard]] const void* blob(int col) const { return sqlite3_column_blob(stmt_.get(), col); }
  [[nodiscard]] int bytes(int col) const { return sqlite3_column_bytes(stmt_.get(), col); }
  [[nodiscard]] std::string blob_string(int col) const {
    const auto* p = static_cast<const char*>(blob(col));
    return p == nullptr ? std::string() : std::string(p, static_cast<std::size_t>(bytes(col)));
  }

 private:
  sqlite3* db_;
  Stmt stmt_;
  int rc_;
};

}  // namespace sg::sql
