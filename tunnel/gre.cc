#include "tunnel/gre.h"

#include <cstring>

namespace sg::tunnel {
namespace {

constexpr std::uint16_t kFlagChecksum = 0x8000;
constexpr std::uint16_t kFlagRouting = 0x4000;
constexpr std::uint16_t kFlagKey = 0x2000;
constexpr std::uint16_t kFlagSequence = 0x1000;
constexpr std::uint16_t kVersionMask = 0x0007;

std::uint16_t be16(const std::uint8_t* p) { return static_cast<std::uint16_t>(p[0] << 8U | p[1]); }
std::uint32_t be32(const std::uint8_t* p) {
  return static_cast<std::uint32_t>(p[0]) << 24U | static_cast<std::uint32_t>(p[1]) << 16U |
         static_cast<std::uint32_t>(p[2]) << 8U | p[3];
}
void put16(std::uint8_t* p, std::uint16_t v) {
  p[0] = static_cast<std::uint8_t>(v >> 8U);
  p[1] = static_cast<std::uint8_t>(v);
}
void put32(std::uint8_t* p, std::uint32_t v) {
  put16(p, static_cast<std::uint16_t>(v >> 16U));
  put16(p + 2, static_cast<std::uint16_t>(v));
}

std::uint32_t sum16(std::span<const std::uint8_t> data, std::uint32_t sum) {
  std::size_t i = 0;
  for (; i + 1 < data.size(); i += 2) sum += static_cast<std::uint32_t>(data[i] << 8U | data[i + 1]);
  if (i < data.size()) sum += static_cast<std::uint32_t>(data[i] << 8U);
  return sum;
}
std::uint16_t fold(std::uint32_t sum) {
  while (sum >> 16U) sum = (sum & 0xffffU) + (sum >> 16U);
  return static_cast<std::uint16_t>(~sum);
}

}  // namespace

int gre_overhead(Family outer, bool with_key) {
  return (outer == Family::v4 ? kIpv4Header : kIpv6Header) + kGreBaseHeader + (with_key ? kGreKeyField : 0);
}

int tunnel_mtu(Family outer, bool with_key, int link_mtu) { return link_mtu - gre_overhead(outer, with_key); }

std::uint16_t internet_checksum(std::span<const std::uint8_t> data) { return fold(sum16(data, 0)); }

std::size_t encode_header(const GreHeader& h, std::span<const std::uint8_t> payload, std::uint8_t* out) {
  std::uint16_t flags = 0;
  if (h.checksum) flags |= kFlagChecksum;
  if (h.key) flags |= kFlagKey;
  if (h.sequence) flags |= kFlagSequence;
  put16(out, flags);
  put16(out + 2, h.protocol);
  std::size_t n = 4;
  std::size_t checksum_at = 0;
  if (h.checksum) {
    checksum_at = n;
    put32(out + n, 0);
    n += 4;
  }
  if (h.key) {
    put32(out + n, *h.key);
    n += 4;
  }
  if (h.sequence) {
    put32(out + n, *h.sequence);
    n += 4;
  }
  if (h.checksum) {
    // Over the GRE header and the payload, with the checksum field zero.
    // The header is a whole number of 16-bit words, so the sums chain.
    std::uint32_t sum = sum16(payload, sum16({out, n}, 0));
    put16(out + checksum_at, fold(sum));
  }
  return n;
}

void encode(const GreHeader& h, std::span<const std::uint8_t> payload, std::vector<std::uint8_t>& out) {
  out.assign(16 + payload.size(), 0);
  std::size_t n = encode_header(h, payload, out.data());
  std::memcpy(out.data() + n, payload.data(), payload.size());
  out.resize(n + payload.size());
}

Result<Decoded> decode(std::span<const std::uint8_t> packet) {
  if (packet.size() < 4) return make_error("GRE packet of " + std::to_string(packet.size()) + " bytes is truncated");
  const std::uint16_t flags = be16(packet.data());
  if ((flags & kVersionMask) != 0)
    return make_error("GRE version " + std::to_string(flags & kVersionMask) + " (not 0)");
  if ((flags & kFlagRouting) != 0) return make_error("GRE routing field (RFC 1701) is not supported");
  Decoded d;
  d.header.protocol = be16(packet.data() + 2);
  std::size_t n = 4;
  auto field = [&](std::uint32_t& v) {
    if (packet.size() < n + 4) return false;
    v = be32(packet.data() + n);
    n += 4;
    return true;
  };
  std::uint32_t v = 0;
  if ((flags & kFlagChecksum) != 0) {
    if (!field(v)) return make_error("GRE checksum field is truncated");
    if (internet_checksum(packet) != 0) return make_error("GRE checksum is wrong");
    d.header.checksum = true;
  }
  if ((flags & kFlagKey) != 0) {
    if (!field(v)) return make_error("GRE key field is truncated");
    d.header.key = v;
  }
  if ((flags & kFlagSequence) != 0) {
    if (!field(v)) return make_error("GRE sequence field is truncated");
    d.header.sequence = v;
  }
  d.payload = packet.subspan(n);
  return d;
}

Result<std::span<const std::uint8_t>> strip_ipv4(std::span<const std::uint8_t> datagram) {
  if (datagram.size() < 20 || (datagram[0] >> 4U) != 4) return make_error("not an IPv4 datagram");
  const std::size_t ihl = (datagram[0] & 0x0fU) * 4U;
  if (ihl < 20 || datagram.size() < ihl) return make_error("IPv4 header length is invalid");
  if (datagram[9] != kIpProtoGre) return make_error("IPv4 protocol " + std::to_string(datagram[9]) + " is not GRE");
  // The kernel reassembles before raw delivery; a fragment here is garbage.
  if ((be16(datagram.data() + 6) & 0x3fffU) != 0) return make_error("IPv4 fragment");
  return datagram.subspan(ihl);
}

Result<std::uint16_t> protocol_of(std::span<const std::uint8_t> inner) {
  if (inner.empty()) return make_error("empty inner packet");
  switch (inner[0] >> 4U) {
    case 4: return kEtherTypeIpv4;
    case 6: return kEtherTypeIpv6;
    default: return make_error("inner packet is neither IPv4 nor IPv6");
  }
}

Result<InnerInfo> inspect_inner(std::uint16_t protocol, std::span<const std::uint8_t> inner) {
  InnerInfo info;
  if (protocol == kEtherTypeIpv4) {
    if (inner.size() < 20 || (inner[0] >> 4U) != 4) return make_error("GRE says IPv4 but the payload is not");
    info.family = Family::v4;
    info.source.family = info.destination.family = Family::v4;
    std::memcpy(info.source.bytes.data(), inner.data() + 12, 4);
    std::memcpy(info.destination.bytes.data(), inner.data() + 16, 4);
    return info;
  }
  if (protocol == kEtherTypeIpv6) {
    if (inner.size() < 40 || (inner[0] >> 4U) != 6) return make_error("GRE says IPv6 but the payload is not");
    info.family = Family::v6;
    info.source.family = info.destination.family = Family::v6;
    std::memcpy(info.source.bytes.data(), inner.data() + 8, 16);
    std::memcpy(info.destination.bytes.data(), inner.data() + 24, 16);
    return info;
  }
  return make_error("GRE protocol type " + std::to_string(protocol) + " is neither IPv4 nor IPv6");
}

}  // namespace sg::tunnel
