#include "surrogated/state_store.h"

#include <algorithm>

#include "common/sqlite_util.h"

namespace sg {
namespace {

constexpr int kSchemaVersion = 1;

using sql::db_error;
using sql::Statement;

constexpr const char* kVmColumns =
    "id, name, domain, owner_fp, owner_key, template, slot, ipv4, ipv6, mac, created, expires, trust_level, "
    "policy_version, state, released, release_reason, contact, title, client_addrs";

VmRecord read_vm(const Statement& s) {
  VmRecord v;
  v.id = s.integer(0);
  v.name = s.text(1);
  v.domain = s.text(2);
  v.owner_fp = s.text(3);
  v.owner_key_pem = s.text(4);
  v.template_name = s.text(5);
  v.slot = static_cast<int>(s.integer(6));
  v.ipv4 = s.text(7);
  v.ipv6 = s.text(8);
  v.mac = s.text(9);
  v.created = s.integer(10);
  v.expires = s.integer(11);
  v.trust_level = s.text(12);
  v.policy_version = s.text(13);
  v.state = s.text(14);
  v.released = s.integer(15);
  v.release_reason = s.text(16);
  v.contact = s.text(17);
  v.title = s.text(18);
  v.client_addrs = s.text(19);
  return v;
}

}  // namespace

Result<StateStore> StateStore::open(const std::string& path) {
  sqlite3* raw = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  sql::Db db(raw);
  if (rc != SQLITE_OK) {
    return make_error("cannot open state store " + path + ": " + (raw ? sqlite3_errmsg(raw) : "out of memory") +
                      " (check that state_dir exists and is writable)");
  }
  sqlite3_busy_timeout(db.get(), 5000);
  StateStore store(std::move(db));
  const char* schema =
      "PRAGMA journal_mode=WAL;"
      "PRAGMA synchronous=FULL;"
      "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
      "CREATE TABLE IF NOT EXISTS vms ("
      "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
      "  name TEXT NOT NULL, domain TEXT NOT NULL,"
      "  owner_fp TEXT NOT NULL, owner_key TEXT NOT NULL, template TEXT NOT NULL,"
      "  slot INTEGER NOT NULL, ipv4 TEXT NOT NULL, ipv6 TEXT NOT NULL, mac TEXT NOT NULL,"
      "  created INTEGER NOT NULL, expires INTEGER NOT NULL,"
      "  trust_level TEXT NOT NULL, policy_version TEXT NOT NULL,"
      "  state TEXT NOT NULL, released INTEGER NOT NULL DEFAULT 0, release_reason TEXT NOT NULL DEFAULT '',"
      "  contact TEXT NOT NULL DEFAULT '', title TEXT NOT NULL DEFAULT '',"
      "  client_addrs TEXT NOT NULL DEFAULT '');"
      "CREATE TABLE IF NOT EXISTS holes ("
      "  id INTEGER PRIMARY KEY AUTOINCREMENT, vm_id INTEGER NOT NULL, vm_name TEXT NOT NULL,"
      "  destination TEXT NOT NULL, protocol INTEGER NOT NULL, port_first INTEGER NOT NULL,"
      "  port_last INTEGER NOT NULL, expires INTEGER NOT NULL, origin TEXT NOT NULL,"
      "  authcert_id TEXT NOT NULL DEFAULT '', created INTEGER NOT NULL,"
      "  removed INTEGER NOT NULL DEFAULT 0, removed_reason TEXT NOT NULL DEFAULT '',"
      "  rate_bps INTEGER NOT NULL DEFAULT 0, tc_minor INTEGER NOT NULL DEFAULT 0);"
      "CREATE INDEX IF NOT EXISTS holes_vm ON holes(vm_id);"
      "CREATE INDEX IF NOT EXISTS holes_authcert ON holes(authcert_id);"
      "CREATE TABLE IF NOT EXISTS revoked_authcerts (id TEXT PRIMARY KEY, revoked INTEGER NOT NULL);"
      "CREATE TABLE IF NOT EXISTS authcert_bodies (id TEXT NOT NULL, vm_id INTEGER NOT NULL, body BLOB NOT NULL,"
      "  submitted INTEGER NOT NULL, PRIMARY KEY (id, vm_id));"
      "CREATE TABLE IF NOT EXISTS vm_certs (serial TEXT PRIMARY KEY, vm_id INTEGER NOT NULL, not_after INTEGER NOT "
      "NULL);"
      "CREATE TABLE IF NOT EXISTS blocks (prefix TEXT PRIMARY KEY, reason TEXT NOT NULL, created INTEGER NOT NULL);"
      "CREATE TABLE IF NOT EXISTS tunnels (vm_id INTEGER PRIMARY KEY, vm_name TEXT NOT NULL, remote TEXT NOT NULL,"
      "  local TEXT NOT NULL, gre_key INTEGER NOT NULL, device TEXT NOT NULL, mtu INTEGER NOT NULL,"
      "  created INTEGER NOT NULL);"
      "CREATE INDEX IF NOT EXISTS vms_state ON vms(state);"
      "CREATE UNIQUE INDEX IF NOT EXISTS vms_active_slot ON vms(slot) WHERE state != 'released';";
  if (auto st = sql::exec(store.db_.get(), schema); !st)
    return with_context("initialising state store " + path, st.error());
  // Stores made before holes had rates: add the columns (same defaults as a
  // new store), so an upgrade keeps every VM and hole.
  {
    Statement cols(store.db_.get(), "SELECT 1 FROM pragma_table_info('holes') WHERE name='rate_bps'");
    if (cols.step() != SQLITE_ROW) {
      if (auto st = sql::exec(store.db_.get(),
                              "ALTER TABLE holes ADD COLUMN rate_bps INTEGER NOT NULL DEFAULT 0;"
                              "ALTER TABLE holes ADD COLUMN tc_minor INTEGER NOT NULL DEFAULT 0;");
          !st) {
        return with_context("upgrading the holes table of state store " + path, st.error());
      }
    }
  }
  Statement get(store.db_.get(), "SELECT value FROM meta WHERE key='schema'");
  if (get.step() == SQLITE_ROW) {
    if (get.text(0) != std::to_string(kSchemaVersion)) {
      return make_error("state store " + path + " has schema " + get.text(0) + ", this daemon knows " +
                        std::to_string(kSchemaVersion) + "; upgrade surrogated");
    }
  } else {
    Statement put(store.db_.get(), "INSERT INTO meta(key, value) VALUES('schema', ?)");
    put.bind(1, std::to_string(kSchemaVersion));
    if (put.step() != SQLITE_DONE) return db_error(store.db_.get(), "writing schema version");
  }
  return store;
}

Status StateStore::insert(VmRecord& vm) {
  Statement s(db_.get(),
              "INSERT INTO vms (name, domain, owner_fp, owner_key, template, slot, ipv4, ipv6, mac, created, "
              "expires, trust_level, policy_version, state, contact, title, client_addrs) "
              "VALUES ('', '', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  s.bind(1, vm.owner_fp).bind(2, vm.owner_key_pem).bind(3, vm.template_name).bind(4, std::int64_t{vm.slot});
  s.bind(5, vm.ipv4).bind(6, vm.ipv6).bind(7, vm.mac).bind(8, vm.created).bind(9, vm.expires);
  s.bind(10, vm.trust_level).bind(11, vm.policy_version).bind(12, vm.state).bind(13, vm.contact).bind(14, vm.title);
  s.bind(15, vm.client_addrs);
  if (s.step() != SQLITE_DONE) return db_error(db_.get(), "recording new VM");
  vm.id = sqlite3_last_insert_rowid(db_.get());
  vm.name = "sg" + std::to_string(vm.id);
  if (vm.domain.empty()) vm.domain = vm.name;
  return update(vm);
}

Status StateStore::update(const VmRecord& vm) {
  Statement s(db_.get(),
              "UPDATE vms SET name=?, domain=?, trust_level=?, policy_version=?, state=?, expires=? WHERE id=?");
  s.bind(1, vm.name).bind(2, vm.domain).bind(3, vm.trust_level).bind(4, vm.policy_version).bind(5, vm.state);
  s.bind(6, vm.expires).bind(7, vm.id);
  if (s.step() != SQLITE_DONE) return db_error(db_.get(), "updating VM " + vm.name);
  return {};
}

Status StateStore::mark_released(std::int64_t id, std::int64_t when, const std::string& reason) {
  Statement s(db_.get(), "UPDATE vms SET state='released', released=?, release_reason=? WHERE id=?");
  s.bind(1, when).bind(2, reason).bind(3, id);
  if (s.step() != SQLITE_DONE) return db_error(db_.get(), "recording release");
  return {};
}

Result<std::vector<VmRecord>> StateStore::query_vms(const char* where, const std::string& arg) const {
  std::string sql = std::string("SELECT ") + kVmColumns + " FROM vms WHERE " + where + " ORDER BY id";
  Statement s(db_.get(), sql.c_str());
  if (!s.ok()) return db_error(db_.get(), "reading VMs");
  if (!arg.empty()) s.bind(1, arg);
  std::vector<VmRecord> out;
  int rc = 0;
  while ((rc = s.step()) == SQLITE_ROW) out.push_back(read_vm(s));
  if (rc != SQLITE_DONE) return db_error(db_.get(), "reading VMs");
  return out;
}

Result<std::vector<VmRecord>> StateStore::active() const { return query_vms("state != 'released'", ""); }

Status StateStore::update_policy_fields(const VmRecord& vm) { return update(vm); }

Status StateStore::insert_hole(HoleRecord& h) {
  Statement s(db_.get(),
              "INSERT INTO holes (vm_id, vm_name, destination, protocol, port_first, port_last, expires, origin, "
              "authcert_id, created, rate_bps, tc_minor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  s.bind(1, h.vm_id).bind(2, h.vm_name).bind(3, h.destination).bind(4, std::int64_t{h.protocol});
  s.bind(5, std::int64_t{h.port_first}).bind(6, std::int64_t{h.port_last}).bind(7, h.expires).bind(8, h.origin);
  s.bind(9, h.authcert_id).bind(10, h.created).bind(11, static_cast<std::int64_t>(h.rate_bps));
  s.bind(12, std::int64_t{h.tc_minor});
  if (s.step() != SQLITE_DONE) return db_error(db_.get(), "recording hole");
  h.id = sqlite3_last_insert_rowid(db_.get());
  return {};
}

Status StateStore::remove_hole(std::int64_t id, std::int64_t when, const std::string& reason) {
  Statement s(db_.get(), "UPDATE holes SET removed=?, removed_reason=? WHERE id=? AND removed=0");
  s.bind(1, when).bind(2, reason).bind(3, id);
  if (s.step() != SQLITE_DONE) return db_error(db_.get(), "recording hole removal");
  return {};
}

namespace {
constexpr const char* kHoleColumns =
    "id, vm_id, vm_name, destination, protocol, port_first, port_last, expires, origin, authcert_id, created, "
    "rate_bps, tc_minor";

Result<std::vector<HoleRecord>> read_holes(Statement& s) {
  std::vector<HoleRecord> out;
  int rc = 0;
  while ((rc = s.step()) == SQLITE_ROW) {
    HoleRecord h;
    h.id = s.integer(0);
    h.vm_id = s.integer(1);
    h.vm_name = s.text(2);
    h.destination = s.text(3);
    h.protocol = static_cast<int>(s.integer(4));
    h.port_first = static_cast<int>(s.integer(5));
    h.port_last = static_cast<int>(s.integer(6));
    h.expires = s.integer(7);
    h.origin = s.text(8);
    h.authcert_id = s.text(9);
    h.created = s.integer(10);
    h.rate_bps = static_cast<std::uint64_t>(std::max<std::int64_t>(0, s.integer(11)));
    h.tc_minor = static_cast<std::uint32_t>(std::max<std::int64_t>(0, s.integer(12)));
    out.push_back(std::move(h));
  }
  if (rc != SQLITE_DONE) return db_error(s.db(), "reading holes");
  return out;
}

}  // namespace

Result<std::vector<HoleRecord>> StateStore::holes_of_authcert(const std::string& authcert_id) const {
  std::string sql = std::string("SELECT ") + kHoleColumns + " FROM holes WHERE authcert_id=? ORDER BY id DESC";
  Statement s(db_.get(), sql.c_str());
  s.bind(1, authcert_id);
  return read_holes(s);
}

Result<bool> StateStore::authcert_revoked(const std::string& authcert_id) const {
  Statement s(db_.get(), "SELECT 1 FROM revoked_authcerts WHERE id=?");
  s.bind(1, authcert_id);
  return s.step() == SQLITE_ROW;
}

Status StateStore::mark_authcert_revoked(const std::string& authcert_id, std::int64_t when) {
  Statement s(db_.get(), "INSERT OR IGNORE INTO revoked_authcerts(id, revoked) VALUES (?, ?)");
  s.bind(1, authcert_id).bind(2, when);
  if (s.step() != SQLITE_DONE) return db_error(db_.get(), "recording authcert revocation");
  return {};
}

Result<std::optional<VmRecord>> StateStore::find_by_id(std::int64_t id) const {
  auto r = query_vms("id = ?1", std::to_string(id));
  if (!r) return r.error();
  if (r->empty()) return std::optional<VmRecord>();
  return std::optional<VmRecord>(r->front());
}

Status StateStore::record_vm_cert(std::int64_t vm_id, const std::string& serial, std::int64_t not_after) {
  Statement s(db_.get(), "INSERT OR REPLACE INTO vm_certs(serial, vm_id, not_after) VALUES (?, ?, ?)");
  s.bind(1, serial).bind(2, vm_id).bind(3, not_after);
  if (s.step() != SQLITE_DONE) return db_error(db_.get(), "recording VM certificate");
  return {};
}

Result<std::vector<std::string>> StateStore::vm_cert_serials(std::int64_t vm_id) const {
  Statement s(db_.get(), "SELECT serial FROM vm_certs WHERE vm_id=?");
  s.bind(1, vm_id);
  std::vector<std::string> out;
  int rc = 0;
  while ((rc = s.step()) == SQLITE_ROW) out.push_back(s.text(0));
  if (rc != SQLITE_DONE) return db_error(db_.get(), "reading VM certificates");
  return out;
}

Status StateStore::add_block(const std::string& prefix, const std::string& reason, std::int64_t when) {
  Statement s(db_.get(), "INSERT OR REPLACE INTO blocks(prefix, reason, created) VALUES (?, ?, ?)");
  s.bind(1, prefix).bind(2, reason).bind(3, when);
  if (s.step() != SQLITE_DONE) return db_error(db_.get(), "recording block");
  return {};
}

Result<bool> StateStore::remove_block(const std::string& prefix, std::int64_t /*when*/) {
  Statement s(db_.get(), "DELETE FROM blocks WHERE prefix=?");
  s.bind(1, prefix);
  if (s.step() != SQLITE_DONE) return db_error(db_.get(), "removing block");
  return sqlite3_changes(db_.get()) > 0;
}

Result<std::vector<std::pair<std::string, std::string>>> StateStore::blocks() const {
  Statement s(db_.get(), "SELECT prefix, reason FROM blocks ORDER BY created");
  std::vector<std::pair<std::string, std::string>> out;
  int rc = 0;
  while ((rc = s.step()) == SQLITE_ROW) out.emplace_back(s.text(0), s.text(1));
  if (rc != SQLITE_DONE) return db_error(db_.get(), "reading blocks");
  return out;
}

Result<std::vector<HoleRecord>> StateStore::open_holes(std::int64_t now, std::int64_t vm_id) const {
  std::string sql = std::string("SELECT ") + kHoleColumns +
                    " FROM holes WHERE removed=0 AND expires>? AND (?=0 OR vm_id=?) ORDER BY id";
  Statement s(db_.get(), sql.c_str());
  s.bind(1, now).bind(2, vm_id).bind(3, vm_id);
  return read_holes(s);
}

Status StateStore::record_authcert_body(const std::string& id, std::int64_t vm_id, std::string_view body,
                                        std::int64_t now) {
  Statement s(db_.get(), "INSERT OR REPLACE INTO authcert_bodies (id, vm_id, body, submitted) VALUES (?, ?, ?, ?)");
  s.bind(1, id).bind(2, vm_id).bind_blob(3, body).bind(4, now);
  if (s.step() != SQLITE_DONE) return db_error(db_.get(), "recording authcert " + id);
  return {};
}

Result<std::vector<AuthcertInForce>> StateStore::authcerts_in_force(std::int64_t now) const {
  Statement s(db_.get(),
              "SELECT b.id, b.vm_id, b.body FROM authcert_bodies b WHERE EXISTS (SELECT 1 FROM holes h WHERE "
              "h.authcert_id=b.id AND h.vm_id=b.vm_id AND h.removed=0 AND h.expires>?) ORDER BY b.submitted");
  s.bind(1, now);
  std::vector<AuthcertInForce> out;
  int rc = 0;
  while ((rc = s.step()) == SQLITE_ROW) out.push_back({s.text(0), s.integer(1), s.blob_string(2)});
  if (rc != SQLITE_DONE) return db_error(db_.get(), "reading authcerts in force");
  return out;
}

Result<std::size_t> StateStore::prune_authcert_bodies(std::int64_t now) {
  Statement s(
      db_.get(),
      "DELETE FROM authcert_bodies WHERE NOT EXISTS (SELECT 1 FROM holes h WHERE h.authcert_id=authcert_bodies.id "
      "AND h.vm_id=authcert_bodies.vm_id AND h.removed=0 AND h.expires>?)");
  s.bind(1, now);
  if (s.step() != SQLITE_DONE) return db_error(db_.get(), "pruning authcerts no longer in force");
  return static_cast<std::size_t>(sqlite3_changes(db_.get()));
}

Result<std::vector<std::uint32_t>> StateStore::used_hole_minors(std::int64_t now) const {
  Statement s(db_.get(), "SELECT DISTINCT tc_minor FROM holes WHERE tc_minor>0 AND removed=0 AND expires>? ORDER BY 1");
  s.bind(1, now);
  std::vector<std::uint32_t> out;
  int rc = 0;
  while ((rc = s.step()) == SQLITE_ROW) out.push_back(static_cast<std::uint32_t>(s.integer(0)));
  if (rc != SQLITE_DONE) return db_error(db_.get(), "reading tc classes of holes");
  return out;
}

Status StateStore::insert_tunnel(const TunnelRecord& t) {
  Statement s(db_.get(),
              "INSERT INTO tunnels(vm_id, vm_name, remote, local, gre_key, device, mtu, created) "
              "VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
  s.bind(1, t.vm_id).bind(2, t.vm_name).bind(3, t.remote).bind(4, t.local).bind(5, t.key).bind(6, t.device);
  s.bind(7, std::int64_t{t.mtu}).bind(8, t.created);
  if (s.step() != SQLITE_DONE) return db_error(db_.get(), "recording the tunnel of " + t.vm_name);
  return {};
}

Status StateStore::remove_tunnel(std::int64_t vm_id) {
  Statement s(db_.get(), "DELETE FROM tunnels WHERE vm_id=?");
  s.bind(1, vm_id);
  if (s.step() != SQLITE_DONE) return db_error(db_.get(), "removing a tunnel");
  return {};
}

Result<std::vector<TunnelRecord>> StateStore::tunnels() const {
  Statement s(db_.get(),
              "SELECT vm_id, vm_name, remote, local, gre_key, device, mtu, created FROM tunnels ORDER BY vm_id");
  std::vector<TunnelRecord> out;
  int rc = 0;
  while ((rc = s.step()) == SQLITE_ROW) {
    TunnelRecord t;
    t.vm_id = s.integer(0);
    t.vm_name = s.text(1);
    t.remote = s.text(2);
    t.local = s.text(3);
    t.key = s.integer(4);
    t.device = s.text(5);
    t.mtu = static_cast<int>(s.integer(6));
    t.created = s.integer(7);
    out.push_back(std::move(t));
  }
  if (rc != SQLITE_DONE) return db_error(db_.get(), "reading tunnels");
  return out;
}

Result<std::optional<VmRecord>> StateStore::find_active(const std::string& name) const {
  auto r = query_vms("state != 'released' AND name = ?1", name);
  if (!r) return r.error();
  if (r->empty()) return std::optional<VmRecord>();
  return std::optional<VmRecord>(r->front());
}

Result<std::set<int>> StateStore::slots_in_use() const {
  auto r = active();
  if (!r) return r.error();
  std::set<int> out;
  for (const auto& v : *r) out.insert(v.slot);
  return out;
}

Result<std::map<int, std::int64_t>> StateStore::slot_release_times() const {
  Statement s(db_.get(), "SELECT slot, MAX(released) FROM vms WHERE state = 'released' GROUP BY slot");
  std::map<int, std::int64_t> out;
  int rc = 0;
  while ((rc = s.step()) == SQLITE_ROW) out[static_cast<int>(s.integer(0))] = s.integer(1);
  if (rc != SQLITE_DONE) return db_error(db_.get(), "reading released slots");
  return out;
}

}  // namespace sg
