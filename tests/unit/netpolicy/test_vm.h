// A VM as the compiler sees it, for tests: "sg<id>" with its own MAC,
// addresses and gateways in the lab ranges, and client 192.0.2.77.
#pragma once

#include <cstdint>
#include <string>

#include "netpolicy/compile.h"

namespace sg::netpolicy::test_vms {

inline VmNet vm(std::int64_t id, trust::TrustLevel level) {
  VmNet v;
  v.id = id;
  v.name = "sg" + std::to_string(id);
  v.mac = "52:54:00:00:00:0" + std::to_string(id);
  v.v4 = *IpAddress::parse("198.51.100." + std::to_string(id * 4 + 2));
  v.gateway4 = *IpAddress::parse("198.51.100." + std::to_string(id * 4 + 1));
  v.v6 = *IpAddress::parse("2001:db8:5:" + std::to_string(id) + "::2");
  v.gateway6 = *IpAddress::parse("2001:db8:5:" + std::to_string(id) + "::1");
  v.level = level;
  v.client = {*Prefix::parse("192.0.2.77")};
  return v;
}

}  // namespace sg::netpolicy::test_vms
