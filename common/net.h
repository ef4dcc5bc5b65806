// IPv4/IPv6 addresses and prefixes: parsing, printing, containment.
// Pure value types, used by the pool, the trust policy and the rule compiler.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace sg {

enum class Family : std::uint8_t { v4, v6 };

struct IpAddress {
  Family family = Family::v4;
  std::array<std::uint8_t, 16> bytes{};  // v4 uses the first 4 bytes

  static Result<IpAddress> parse(std::string_view text);
  [[nodiscard]] std::string to_string() const;
  [[nodiscard]] int bit_length() const { return family == Family::v4 ? 32 : 128; }
  [[nodiscard]] int byte_length() const { return family == Family::v4 ? 4 : 16; }
  // This address plus n (wrapping within the family's width is the caller's concern).
  [[nodiscard]] IpAddress plus(std::uint64_t n) const;

  friend bool operator==(const IpAddress&, const IpAddress&) = default;
  // NOLINTNEXTLINE(modernize-use-nullptr): clang-tidy misreads a defaulted <=>
  friend auto operator<=>(const IpAddress&, const IpAddress&) = default;
};

struct Prefix {
  IpAddress address;  // always the network address (host bits zero)
  int length = 0;

  // "198.51.100.0/24", "2001:db8::/32", or a bare address (full length).
  // Host bits set after the prefix length are an error, so a typo such as
  // "198.51.100.7/24" is not silently widened.
  static Result<Prefix> parse(std::string_view text);
  [[nodiscard]] std::string to_string() const;
  [[nodiscard]] bool contains(const IpAddress& a) const;
  [[nodiscard]] bool contains(const Prefix& p) const { return p.length >= length && contains(p.address); }
  [[nodiscard]] bool overlaps(const Prefix& p) const { return contains(p) || p.contains(*this); }
  [[nodiscard]] Family family() const { return address.family; }

  friend bool operator==(const Prefix&, const Prefix&) = default;
  // NOLINTNEXTLINE(modernize-use-nullptr): as above
  friend auto operator<=>(const Prefix&, const Prefix&) = default;
};

// Formats a MAC address as "52:54:00:aa:bb:cc".
std::string format_mac(const std::array<std::uint8_t, 6>& mac);

}  // namespace sg
