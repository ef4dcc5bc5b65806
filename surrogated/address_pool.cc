#include "surrogated/address_pool.h"

#include <algorithm>
#include <limits>

namespace sg {

AddressPool::AddressPool(std::optional<Prefix> v4, std::optional<Prefix> v6, int max_vms) : v4_(v4), v6_(v6) {
  std::int64_t n = max_vms;
  if (v4_) n = std::min<std::int64_t>(n, std::int64_t{1} << std::min(30 - v4_->length, 24));
  if (v6_) n = std::min<std::int64_t>(n, std::int64_t{1} << std::min(64 - v6_->length, 24));
  size_ = static_cast<int>(n);
}

VmAddresses AddressPool::addresses(int slot) const {
  VmAddresses a;
  a.slot = slot;
  auto s = static_cast<std::uint64_t>(slot);
  if (v4_) {
    IpAddress net = v4_->address.plus(s * 4);
    a.v4_link = Prefix{net, 30};
    a.v4_gateway = net.plus(1);
    a.v4_guest = net.plus(2);
  }
  if (v6_) {
    // Slot n is the n-th /64: add n to the upper 64 bits.
    IpAddress net = v6_->address;
    std::uint64_t carry = s;
    for (int i = 7; i >= 0 && carry != 0; --i) {
      std::uint64_t sum = net.bytes[i] + (carry & 0xffU);
      net.bytes[i] = static_cast<std::uint8_t>(sum & 0xffU);
      carry = (carry >> 8U) + (sum >> 8U);
    }
    a.v6_link = Prefix{net, 64};
    a.v6_gateway = net.plus(1);
    a.v6_guest = net.plus(2);
  }
  // Locally administered unicast (0x52 = 0101 0010), the range QEMU uses.
  a.mac = format_mac({0x52, 0x54, 0x00, static_cast<std::uint8_t>((s >> 16U) & 0xffU),
                      static_cast<std::uint8_t>((s >> 8U) & 0xffU), static_cast<std::uint8_t>(s & 0xffU)});
  return a;
}

Result<int> AddressPool::choose(const std::set<int>& in_use, const std::map<int, std::int64_t>& last_released) const {
  int best = -1;
  std::int64_t best_time = std::numeric_limits<std::int64_t>::max();
  for (int slot = 0; slot < size_; ++slot) {
    if (in_use.count(slot) != 0) continue;
    auto it = last_released.find(slot);
    std::int64_t t = it == last_released.end() ? std::numeric_limits<std::int64_t>::min() : it->second;
    if (t < best_time) {
      best = slot;
      best_time = t;
      if (t == std::numeric_limits<std::int64_t>::min()) break;
    }
  }
  if (best < 0) {
    return make_error("address pool exhausted: all " + std::to_string(size_) +
                      " VM slots are in use; release a VM or enlarge [pool] in surrogated.toml");
  }
  return best;
}

}  // namespace sg
