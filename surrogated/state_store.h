// The daemon's durable view of its VMs, in SQLite (WAL). It survives a
// crash; at start the daemon reconciles it with what libvirt reports.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/raii/sqlite.h"
#include "common/result.h"

namespace sg {

struct VmRecord {
  std::int64_t id = 0;        // never reused; also the flows' ct mark
  std::string name;           // "sg<id>", also the tap name
  std::string domain;         // libvirt domain name
  std::string owner_fp;       // client key fingerprint
  std::string owner_key_pem;  // client public key
  std::string template_name;
  int slot = -1;
  std::string ipv4;  // guest address, empty when the pool has no v4
  std::string ipv6;
  std::string mac;
  std::int64_t created = 0;  // unix seconds
  std::int64_t expires = 0;
  std::string trust_level = "untrusted";
  std::string policy_version;
  std::string state = "starting";  // starting, running, released
  std::int64_t released = 0;
  std::string release_reason;
  std::string contact;  // given by the client at allocation
  std::string title;
};

class StateStore {
 public:
  static Result<StateStore> open(const std::string& path);

  // Reserves an id and writes the VM in state "starting"; fills id and name.
  Status insert(VmRecord& vm);
  Status update(const VmRecord& vm);
  Status mark_released(std::int64_t id, std::int64_t when, const std::string& reason);

  Result<std::vector<VmRecord>> active() const;
  Result<std::optional<VmRecord>> find_active(const std::string& name) const;
  Result<std::set<int>> slots_in_use() const;
  Result<std::map<int, std::int64_t>> slot_release_times() const;

 private:
  explicit StateStore(sql::Db db) : db_(std::move(db)) {}
  Status exec(const char* sql) const;
  Result<std::vector<VmRecord>> query_vms(const char* where, const std::string& arg) const;
  sql::Db db_;
};

}  // namespace sg
