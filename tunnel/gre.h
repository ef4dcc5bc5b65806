// GRE wire format (RFC 2784, with the key and sequence fields of RFC 2890):
// pure encode/decode of the GRE header and of the outer IPv4 header a raw
// IPv4 socket hands over. The userspace endpoint and the unit tests use it;
// what it produces is byte for byte what the kernel's ip_gre sends, so either
// end may be kernel or userspace.
//
//    0                   1                   2                   3
//   |C| |K|S| Reserved0       | Ver |         Protocol Type         |
//   |      Checksum (optional)      |       Reserved1 (optional)    |
//   |                         Key (optional)                        |
//   |                 Sequence Number (optional)                    |
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "common/net.h"
#include "common/result.h"

namespace sg::tunnel {

inline constexpr std::uint16_t kEtherTypeIpv4 = 0x0800;
inline constexpr std::uint16_t kEtherTypeIpv6 = 0x86dd;
inline constexpr std::uint8_t kIpProtoGre = 47;

// Bytes the tunnel adds in front of every inner packet.
inline constexpr int kGreBaseHeader = 4;
inline constexpr int kGreKeyField = 4;
inline constexpr int kIpv4Header = 20;
inline constexpr int kIpv6Header = 40;
[[nodiscard]] int gre_overhead(Family outer, bool with_key);
// The inner MTU of a tunnel whose outer packets leave through a link of
// `link_mtu` (24 bytes less for IPv4 without key, 48 for IPv6 with one).
[[nodiscard]] int tunnel_mtu(Family outer, bool with_key, int link_mtu = 1500);

struct GreHeader {
  std::uint16_t protocol = kEtherTypeIpv4;  // EtherType of the payload
  std::optional<std::uint32_t> key;
  std::optional<std::uint32_t> sequence;
  bool checksum = false;  // C bit: a checksum over header and payload
};

// Writes header + payload into `out` (cleared first).
void encode(const GreHeader& h, std::span<const std::uint8_t> payload, std::vector<std::uint8_t>& out);
// The header alone, for scatter/gather sends.
[[nodiscard]] std::size_t encode_header(const GreHeader& h, std::span<const std::uint8_t> payload, std::uint8_t* out);

struct Decoded {
  GreHeader header;
  std::span<const std::uint8_t> payload;
};
// Parses a GRE packet (starting at the GRE header). Refuses version != 0,
// the deprecated routing bit, a bad checksum and truncated input.
[[nodiscard]] Result<Decoded> decode(std::span<const std::uint8_t> packet);

// A raw IPv4 socket delivers the outer IP header too: the GRE part of such
// a datagram, checked to be protocol 47 and not a fragment.
[[nodiscard]] Result<std::span<const std::uint8_t>> strip_ipv4(std::span<const std::uint8_t> datagram);

// What the tunnel needs to know about an inner packet.
struct InnerInfo {
  Family family = Family::v4;
  IpAddress source, destination;
};
// Checks the inner packet's version against the GRE protocol type and reads
// its addresses.
[[nodiscard]] Result<InnerInfo> inspect_inner(std::uint16_t protocol, std::span<const std::uint8_t> inner);
// The GRE protocol type for an inner packet, from its version nibble.
[[nodiscard]] Result<std::uint16_t> protocol_of(std::span<const std::uint8_t> inner);

// The Internet checksum (RFC 1071) over data.
[[nodiscard]] std::uint16_t internet_checksum(std::span<const std::uint8_t> data);

}  // namespace sg::tunnel
