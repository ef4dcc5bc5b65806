// The daemon's durable view of its VMs, in SQLite (WAL). It survives a
// crash; at start the daemon reconciles it with what libvirt reports.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
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
  std::string client_addrs;  // comma-separated prefixes of the client's own machine
};

// An authorized destination of one VM (from an authcert, or opened by the
// admin). The kernel closes it at `expires` even if the daemon is down.
struct HoleRecord {
  std::int64_t id = 0;
  std::int64_t vm_id = 0;
  std::string vm_name;
  std::string destination;  // prefix
  int protocol = 0;         // IPPROTO_*, 0 = any
  int port_first = 1;
  int port_last = 65535;
  std::int64_t expires = 0;
  std::string origin;       // "admin" or "authcert"
  std::string authcert_id;  // when origin is authcert
  std::int64_t created = 0;
  std::uint64_t rate_bps = 0;  // the authcert's rate (0: none named)
  std::uint32_t tc_minor = 0;  // its own tc class (docs/shaping.md); 0: the VM's shared "nodes" class
};

// An authcert as it was submitted for one VM: kept while it has open holes,
// so a reload of the trust anchors or CRLs can verify it again.
struct AuthcertInForce {
  std::string id;
  std::int64_t vm_id = 0;
  std::string body;  // the submitted bytes (PEM or DER)
};

// A VM's GRE tunnel to its client (docs/tunnel.md). One per VM; the row
// exists exactly while the tunnel should: a restart rebuilds every row.
struct TunnelRecord {
  std::int64_t vm_id = 0;
  std::string vm_name;
  std::string remote;     // the client's registered address (outer destination)
  std::string local;      // the host's outer address
  std::int64_t key = -1;  // GRE key; -1: none
  std::string device;     // "sgt3"
  int mtu = 0;            // inner MTU
  std::int64_t created = 0;
};

class StateStore {
 public:
  static Result<StateStore> open(const std::string& path);

  // Reserves an id and writes the VM in state "starting"; fills id and name.
  Status insert(VmRecord& vm);
  Status update(const VmRecord& vm);
  Status mark_released(std::int64_t id, std::int64_t when, const std::string& reason);

  Result<std::vector<VmRecord>> active() const;
  Status update_policy_fields(const VmRecord& vm);

  Status insert_hole(HoleRecord& hole);
  Status remove_hole(std::int64_t id, std::int64_t when, const std::string& reason);
  // Holes still open (not removed, not expired at `now`), optionally of one VM.
  Result<std::vector<HoleRecord>> open_holes(std::int64_t now, std::int64_t vm_id = 0) const;
  // The submitted bytes of an authcert that opened holes for vm_id.
  Status record_authcert_body(const std::string& id, std::int64_t vm_id, std::string_view body, std::int64_t now);
  // Authcerts with at least one open hole, with their bytes.
  Result<std::vector<AuthcertInForce>> authcerts_in_force(std::int64_t now) const;
  // Forgets the bytes of authcerts that have no open hole any more.
  Result<std::size_t> prune_authcert_bodies(std::int64_t now);
  // tc minors of the open holes that have a class of their own.
  Result<std::vector<std::uint32_t>> used_hole_minors(std::int64_t now) const;
  // Every hole an authcert ever opened, open or not, newest first.
  Result<std::vector<HoleRecord>> holes_of_authcert(const std::string& authcert_id) const;
  // True when an authcert with this id was revoked: it may never be used again.
  Result<bool> authcert_revoked(const std::string& authcert_id) const;
  Status mark_authcert_revoked(const std::string& authcert_id, std::int64_t when);

  // Any VM by id, released or not (the flow log names VMs long gone).
  Result<std::optional<VmRecord>> find_by_id(std::int64_t id) const;

  // Node certificates the host CA issued to a VM (revoked on release).
  Status record_vm_cert(std::int64_t vm_id, const std::string& serial, std::int64_t not_after);
  Result<std::vector<std::string>> vm_cert_serials(std::int64_t vm_id) const;

  // The owner's block list from abuse complaints, on top of the policy file's.
  Status add_block(const std::string& prefix, const std::string& reason, std::int64_t when);
  Result<bool> remove_block(const std::string& prefix, std::int64_t when);
  Result<std::vector<std::pair<std::string, std::string>>> blocks() const;  // prefix, reason
  Result<std::optional<VmRecord>> find_active(const std::string& name) const;

  // Tunnels: insert fails when the VM has one already.
  Status insert_tunnel(const TunnelRecord& t);
  Status remove_tunnel(std::int64_t vm_id);
  Result<std::vector<TunnelRecord>> tunnels() const;
  Result<std::set<int>> slots_in_use() const;
  Result<std::map<int, std::int64_t>> slot_release_times() const;

 private:
  explicit StateStore(sql::Db db) : db_(std::move(db)) {}
  Result<std::vector<VmRecord>> query_vms(const char* where, const std::string& arg) const;
  sql::Db db_;
};

}  // namespace sg
