#include "common/net.h"

#include <arpa/inet.h>

#include <cstdio>

namespace sg {

Result<IpAddress> IpAddress::parse(std::string_view text) {
  std::string s(text);
  IpAddress a;
  if (s.find(':') != std::string::npos) {
    a.family = Family::v6;
    if (inet_pton(AF_INET6, s.c_str(), a.bytes.data()) == 1) return a;
    return make_error("'" + s + "' is not a valid IPv6 address (example: 2001:db8::7)");
  }
  a.family = Family::v4;
  if (inet_pton(AF_INET, s.c_str(), a.bytes.data()) == 1) return a;
  return make_error("'" + s + "' is not a valid IPv4 address (example: 198.51.100.7)");
}

std::string IpAddress::to_string() const {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(family == Family::v4 ? AF_INET : AF_INET6, bytes.data(), buf, sizeof buf);
  return buf;
}

IpAddress IpAddress::plus(std::uint64_t n) const {
  IpAddress r = *this;
  unsigned carry = 0;
  for (int i = byte_length() - 1; i >= 0; --i) {
    unsigned sum = r.bytes[i] + static_cast<unsigned>(n & 0xffU) + carry;
    r.bytes[i] = static_cast<std::uint8_t>(sum & 0xffU);
    carry = sum >> 8U;
    n >>= 8U;
  }
  return r;
}

Result<Prefix> Prefix::parse(std::string_view text) {
  std::string s(text);
  auto slash = s.find('/');
  auto addr = IpAddress::parse(s.substr(0, slash));
  if (!addr) return addr.error();
  Prefix p;
  p.address = *addr;
  p.length = addr->bit_length();
  if (slash != std::string::npos) {
    std::string len = s.substr(slash + 1);
    if (len.empty() || len.size() > 3 || len.find_first_not_of("0123456789") != std::string::npos) {
      return make_error("'" + s + "': prefix length must be a number after '/' (example: 198.51.100.0/24)");
    }
    p.length = std::stoi(len);
    if (p.length > addr->bit_length()) {
      return make_error("'" + s + "': prefix length " + len + " is longer than the address (" +
                        std::to_string(addr->bit_length()) + " bits)");
    }
  }
  for (int bit = p.length; bit < p.address.bit_length(); ++bit) {
    if ((p.address.bytes[bit / 8] >> (7 - bit % 8)) & 1U) {
      Prefix fixed = p;
      for (int b = p.length; b < p.address.bit_length(); ++b) {
        fixed.address.bytes[b / 8] &= static_cast<std::uint8_t>(~(1U << (7 - b % 8)));
      }
      return make_error("'" + s + "' has host bits set; write " + fixed.to_string() +
                        " for the network, or the address alone for a single host");
    }
  }
  return p;
}

std::string Prefix::to_string() const { return address.to_string() + "/" + std::to_string(length); }

bool Prefix::contains(const IpAddress& a) const {
  if (a.family != address.family) return false;
  int full = length / 8;
  for (int i = 0; i < full; ++i) {
    if (a.bytes[i] != address.bytes[i]) return false;
  }
  int rest = length % 8;
  if (rest == 0) return true;
  auto mask = static_cast<std::uint8_t>(0xffU << (8 - rest));
  return (a.bytes[full] & mask) == (address.bytes[full] & mask);
}

std::string format_mac(const std::array<std::uint8_t, 6>& mac) {
  char buf[18];
  (void)std::snprintf(buf, sizeof buf, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
  return buf;
}

}  // namespace sg
