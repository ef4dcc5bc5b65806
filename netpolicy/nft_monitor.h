// Watches nftables change notifications (NFNLGRP_NFTABLES) for the daemon's
// own tables, so it can put them back at once when someone deletes, flushes
// or edits them ("nft flush ruleset" included).
//
// Telling our own changes apart: every notification carries, as nlmsg_pid,
// the netlink port id of the socket whose transaction caused it. The daemon
// registers its NftBackend's port_id() with ignore_port(); events from that
// port are dropped. This is exact (port ids are unique per namespace while
// the socket lives) and needs no timing assumptions, unlike matching
// generation ids. Each transaction ends with an NFT_MSG_NEWGEN notification
// naming the process that committed it; from_our_pid reports whether that
// was this process (through some other socket).
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "common/raii/nftnl.h"
#include "common/result.h"
#include "netpolicy/ruleset.h"

namespace sg::netpolicy {

struct NftEvent {
  enum class Kind : std::uint8_t {
    table_deleted,     // our table is gone: reapply everything
    chain_deleted,     // detail: chain name
    rule_deleted,      // detail: "chain handle N"
    set_deleted,       // detail: set name
    elements_deleted,  // detail: set name
    object_deleted,    // detail: object name
    changed,           // something was added or replaced in our table by someone else; detail says what
    overrun,           // the kernel dropped notifications (ENOBUFS): assume tampering, reapply
  } kind = Kind::changed;
  TableFamily family = TableFamily::inet;
  std::string table;
  std::string detail;
  bool from_our_pid = false;  // the transaction was committed by this process (NFT_MSG_NEWGEN's pid)
  // Our own change, not tampering: committed by this process, or through an
  // ignored port (those are dropped, so for returned events this equals from_our_pid).
  bool from_us = false;

  // "table inet surrogated deleted", "rule deleted from chain vm_sg3_out handle 7 of table inet surrogated"...
  [[nodiscard]] std::string describe() const;
};

const char* to_string(NftEvent::Kind k);

class NftMonitor {
 public:
  // Subscribes in the calling thread's network namespace; table_name is the
  // table (of any family) whose changes are reported.
  static Result<NftMonitor> open(std::string table_name);

  [[nodiscard]] int fd() const;
  // Events caused by transactions of this port id are not reported.
  void ignore_port(std::uint32_t port_id) { ignored_ports_.insert(port_id); }
  // Everything queued now; never blocks. Returns an empty vector when idle.
  std::vector<NftEvent> read_events();
  // Notifications lost to ENOBUFS since open().
  [[nodiscard]] std::uint64_t overruns() const { return overruns_; }

 private:
  NftMonitor(nft::MnlSocket sock, std::string table) : sock_(std::move(sock)), table_(std::move(table)) {}
  void handle(const struct nlmsghdr* nlh, std::vector<NftEvent>& out);

  nft::MnlSocket sock_;
  std::string table_;
  std::set<std::uint32_t> ignored_ports_;
  std::vector<NftEvent> pending_;  // events of a transaction whose NEWGEN has not arrived yet
  std::uint64_t overruns_ = 0;
};

}  // namespace sg::netpolicy
