// The nftables backend: turns a Plan into one libnftnl batch and sends it
// over a NETLINK_NETFILTER socket as a single kernel transaction, so the
// kernel either applies every op or none of them.
//
// Rules are linearised exactly as nft 1.0.6 does it (same dependencies, same
// register use, same set element layout), so `nft list` shows the same text
// whether a table was loaded by this backend or by `nft -f to_nft_text(...)`.
#pragma once

#include <linux/netlink.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/raii/nftnl.h"
#include "common/result.h"
#include "netpolicy/ruleset.h"

namespace sg::netpolicy {

class NftBackend {
 public:
  // A socket in the network namespace of the calling thread: open it after
  // setns() when the daemon (or a test) works in a private namespace.
  static Result<NftBackend> open();

  // Sends the whole plan as one transaction. On failure nothing changed, and
  // the error names the first op the kernel refused, e.g.
  // "kernel refused 'add rule inet surrogated vm_sg3_out ...': No such file or directory".
  // The element layout of add_elements / delete_elements depends on the set
  // (key, interval, verdict map): it comes from op.set when op.set.key is
  // filled, else from an add_set op of the same plan, else from the kernel.
  Status apply(const Plan& plan);

  Result<bool> table_exists(TableFamily family, const std::string& name);

  // A named quota object as the kernel has it: its limit and the bytes
  // consumed so far. With `reset`, the kernel zeroes the consumed bytes in
  // the same step (NFT_MSG_GETOBJ_RESET) and reports what was consumed before.
  Result<QuotaObject> read_quota(TableFamily family, const std::string& table, const std::string& name,
                                 bool reset = false);

  // Deletes every element of the set `decl` declares whose key starts with
  // key_prefix (a released VM's entries of a meter shared by all VMs, keyed
  // by its interface name first). Returns how many were found. Elements
  // that time out meanwhile are no error.
  Result<std::size_t> purge_elements(TableFamily family, const std::string& table, const Set& decl,
                                     const Bytes& key_prefix);

  // The netlink port id of this socket. Kernel notifications about changes
  // made through it carry it as nlmsg_pid, which is how NftMonitor tells our
  // own transactions from someone else's.
  [[nodiscard]] std::uint32_t port_id() const;

 private:
  explicit NftBackend(nft::MnlSocket sock);
  // Sends a request built in nlmsg form and reads its answers until the
  // kernel's ack or the end of a dump; on_reply gets every other message of
  // its sequence. A kernel error comes back as a system error naming `what`.
  Status request(nlmsghdr* nlh, const std::string& what, const std::function<Status(const nlmsghdr*)>& on_reply);
  // The declaration of an existing set, read back from the kernel.
  Result<Set> kernel_set(TableFamily family, const std::string& table, const std::string& name);
  // The keys of every element of a set, as the kernel stores them.
  Result<std::vector<Bytes>> element_keys(TableFamily family, const std::string& table, const std::string& name);
  nft::MnlSocket sock_;
  std::uint32_t seq_ = 0;
};

}  // namespace sg::netpolicy
