#include "netpolicy/nft_monitor.h"

#include <endian.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <optional>

#include "netpolicy/netlink_drain.h"

namespace sg::netpolicy {

namespace {

// Attributes 1..3 of every nf_tables message we care about: the table name is
// attribute 1 for tables, chains, rules, sets, element lists and objects.
using Attrs = std::array<const nlattr*, 8>;

Attrs parse_attrs(const nlmsghdr* nlh) {
  Attrs attrs{};
  mnl_attr_parse(
      nlh, sizeof(nfgenmsg),
      [](const nlattr* a, void* data) -> int {
        auto* out = static_cast<Attrs*>(data);
        auto type = mnl_attr_get_type(a);
        if (type < out->size()) (*out)[type] = a;
        return MNL_CB_OK;
      },
      &attrs);
  return attrs;
}

std::string str_attr(const nlattr* a) {
  if (a == nullptr || mnl_attr_validate(a, MNL_TYPE_NUL_STRING) < 0) return "";
  return mnl_attr_get_str(a);
}

std::optional<TableFamily> family_of(std::uint8_t nfproto) {
  if (nfproto == NFPROTO_INET) return TableFamily::inet;
  if (nfproto == NFPROTO_ARP) return TableFamily::arp;
  return std::nullopt;
}

}  // namespace

const char* to_string(NftEvent::Kind k) {
  switch (k) {
    case NftEvent::Kind::table_deleted: return "table_deleted";
    case NftEvent::Kind::chain_deleted: return "chain_deleted";
    case NftEvent::Kind::rule_deleted: return "rule_deleted";
    case NftEvent::Kind::set_deleted: return "set_deleted";
    case NftEvent::Kind::elements_deleted: return "elements_deleted";
    case NftEvent::Kind::object_deleted: return "object_deleted";
    case NftEvent::Kind::changed: return "changed";
    case NftEvent::Kind::overrun: return "overrun";
  }
  return "?";
}

std::string NftEvent::describe() const {
  const std::string where = std::string(family == TableFamily::inet ? "inet " : "arp ") + table;
  switch (kind) {
    case Kind::table_deleted: return "table " + where + " deleted";
    case Kind::chain_deleted: return "chain " + detail + " of table " + where + " deleted";
    case Kind::rule_deleted: return "rule deleted from chain " + detail + " of table " + where;
    case Kind::set_deleted: return "set " + detail + " of table " + where + " deleted";
    case Kind::elements_deleted: return "elements deleted from set " + detail + " of table " + where;
    case Kind::object_deleted: return "object " + detail + " of table " + where + " deleted";
    case Kind::changed: return detail + " added to table " + where;
    case Kind::overrun: return "nftables notifications lost (ENOBUFS) for table " + where;
  }
  return "unknown change to table " + where;
}

Result<NftMonitor> NftMonitor::open(std::string table_name) {
  auto opened = open_netfilter_socket("nftables events");
  if (!opened) return opened.error();
  nft::MnlSocket sock = std::move(*opened);
  int group = NFNLGRP_NFTABLES;
  if (mnl_socket_setsockopt(sock.get(), NETLINK_ADD_MEMBERSHIP, &group, sizeof group) < 0) {
    return make_sys_error("subscribing to nftables events (needs CAP_NET_ADMIN)");
  }
  // A flush of a big ruleset sends one notification per object: leave room.
  int rcvbuf = 4 * 1024 * 1024;
  if (setsockopt(mnl_socket_get_fd(sock.get()), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) != 0) {
    setsockopt(mnl_socket_get_fd(sock.get()), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  }
  return NftMonitor(std::move(sock), std::move(table_name));
}

int NftMonitor::fd() const { return mnl_socket_get_fd(sock_.get()); }

void NftMonitor::handle(const nlmsghdr* nlh, std::vector<NftEvent>& out) {
  if (NFNL_SUBSYS_ID(nlh->nlmsg_type) != NFNL_SUBSYS_NFTABLES) return;
  const auto type = NFNL_MSG_TYPE(nlh->nlmsg_type);
  const auto attrs = parse_attrs(nlh);
  if (type == NFT_MSG_NEWGEN) {
    // The end of a transaction: tag its events with who committed it.
    const bool ours = attrs[NFTA_GEN_PROC_PID] != nullptr &&
                      be32toh(mnl_attr_get_u32(attrs[NFTA_GEN_PROC_PID])) == static_cast<std::uint32_t>(getpid());
    for (auto& e : pending_) {
      e.from_our_pid = ours;
      e.from_us = ours;
      out.push_back(std::move(e));
    }
    pending_.clear();
    return;
  }
  if (ignored_ports_.count(nlh->nlmsg_pid) != 0) return;
  const auto* nfg = static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(nlh));
  auto family = family_of(nfg->nfgen_family);
  if (!family) return;
  NftEvent ev;
  ev.family = *family;
  ev.table = str_attr(attrs[1]);  // NFTA_{TABLE_NAME,CHAIN_TABLE,RULE_TABLE,SET_TABLE,SET_ELEM_LIST_TABLE,OBJ_TABLE}
  if (ev.table != table_) return;
  switch (type) {
    case NFT_MSG_DELTABLE: ev.kind = NftEvent::Kind::table_deleted; break;
    case NFT_MSG_DELCHAIN:
      ev.kind = NftEvent::Kind::chain_deleted;
      ev.detail = str_attr(attrs[NFTA_CHAIN_NAME]);
      break;
    case NFT_MSG_DELRULE: {
      ev.kind = NftEvent::Kind::rule_deleted;
      ev.detail = str_attr(attrs[NFTA_RULE_CHAIN]);
      if (attrs[NFTA_RULE_HANDLE] != nullptr) {
        ev.detail += " handle " + std::to_string(be64toh(mnl_attr_get_u64(attrs[NFTA_RULE_HANDLE])));
      }
      break;
    }
    case NFT_MSG_DELSET:
      ev.kind = NftEvent::Kind::set_deleted;
      ev.detail = str_attr(attrs[NFTA_SET_NAME]);
      break;
    case NFT_MSG_DELSETELEM:
      ev.kind = NftEvent::Kind::elements_deleted;
      ev.detail = str_attr(attrs[NFTA_SET_ELEM_LIST_SET]);
      break;
    case NFT_MSG_DELOBJ:
      ev.kind = NftEvent::Kind::object_deleted;
      ev.detail = str_attr(attrs[NFTA_OBJ_NAME]);
      break;
    case NFT_MSG_NEWTABLE: ev.detail = "table"; break;
    case NFT_MSG_NEWCHAIN: ev.detail = "chain " + str_attr(attrs[NFTA_CHAIN_NAME]); break;
    case NFT_MSG_NEWRULE: ev.detail = "rule in chain " + str_attr(attrs[NFTA_RULE_CHAIN]); break;
    case NFT_MSG_NEWSET: ev.detail = "set " + str_attr(attrs[NFTA_SET_NAME]); break;
    case NFT_MSG_NEWSETELEM: ev.detail = "elements of set " + str_attr(attrs[NFTA_SET_ELEM_LIST_SET]); break;
    case NFT_MSG_NEWOBJ: ev.detail = "object " + str_attr(attrs[NFTA_OBJ_NAME]); break;
    default: return;
  }
  pending_.push_back(std::move(ev));
}

std::vector<NftEvent> NftMonitor::read_events() {
  std::vector<NftEvent> out;
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE * 4);
  for (;;) {
    ssize_t n = recv(fd(), buf.data(), buf.size(), MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == ENOBUFS) {
        // Notifications were lost; we cannot know what changed.
        ++overruns_;
        NftEvent ev;
        ev.kind = NftEvent::Kind::overrun;
        ev.table = table_;
        ev.detail = "kernel dropped nftables notifications (ENOBUFS)";
        out.push_back(std::move(ev));
        continue;
      }
      break;  // EAGAIN: nothing more queued
    }
    const auto* nlh = reinterpret_cast<const nlmsghdr*>(buf.data());
    int len = static_cast<int>(n);
    while (mnl_nlmsg_ok(nlh, len)) {
      handle(nlh, out);
      nlh = mnl_nlmsg_next(nlh, &len);
    }
  }
  // The kernel queues a transaction's events and its NEWGEN together; should
  // a NEWGEN still be missing, report now rather than hold an alarm back.
  for (auto& e : pending_) out.push_back(std::move(e));
  pending_.clear();
  return out;
}

}  // namespace sg::netpolicy
