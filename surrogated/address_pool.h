// The admin's address pool, carved into per-VM slots. Slot n owns the n-th
// IPv4 /30 (gateway .1, guest .2) and the n-th IPv6 /64 (gateway ::1,
// guest ::2) of the pool, and a MAC derived from n. Pure logic: which slot
// is free is decided from the state store's view, passed in.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "common/net.h"
#include "common/result.h"

namespace sg {

struct VmAddresses {
  int slot = -1;
  std::optional<Prefix> v4_link;  // the /30 of the point-to-point link
  std::optional<IpAddress> v4_gateway;
  std::optional<IpAddress> v4_guest;
  std::optional<Prefix> v6_link;  // the /64 of the link
  std::optional<IpAddress> v6_gateway;
  std::optional<IpAddress> v6_guest;
  std::string mac;
};

class AddressPool {
 public:
  AddressPool(std::optional<Prefix> v4, std::optional<Prefix> v6, int max_vms);

  [[nodiscard]] int size() const { return size_; }
  [[nodiscard]] VmAddresses addresses(int slot) const;

  // Picks a free slot. Never-used slots come first, then the one released
  // longest ago, so a released VM's address is not handed to the next
  // client at once (flows and complaints stay attributable).
  [[nodiscard]] Result<int> choose(const std::set<int>& in_use, const std::map<int, std::int64_t>& last_released) const;

 private:
  std::optional<Prefix> v4_;
  std::optional<Prefix> v6_;
  int size_ = 0;
};

}  // namespace sg
