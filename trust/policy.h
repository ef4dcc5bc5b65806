// The trust policy as plain data: which client gets which trust level and
// what each level may do on the network. The parser (trust/parse.h) fills it
// with every default already applied, so consumers (daemon, nftables
// compiler, CLI) never need to know a default themselves.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/net.h"
#include "common/result.h"

namespace sg::trust {

// Ordered from least to most trusted, so `a < b` means "a is trusted less".
enum class TrustLevel : std::uint8_t { untrusted, semi_trusted, trusted };
inline constexpr std::array<TrustLevel, 3> kAllLevels = {TrustLevel::trusted, TrustLevel::semi_trusted,
                                                         TrustLevel::untrusted};

// "trusted", "semi-trusted", "untrusted": the exact words of the policy file.
std::string_view to_string(TrustLevel level);
std::optional<TrustLevel> parse_trust_level(std::string_view text);

// An inclusive range of TCP/UDP ports, 1..65535.
struct PortRange {
  std::uint16_t first = 1;
  std::uint16_t last = 65535;

  [[nodiscard]] bool contains(std::uint16_t port) const { return port >= first && port <= last; }
  [[nodiscard]] bool all() const { return first == 1 && last == 65535; }
  // "443" or "1000-2000".
  [[nodiscard]] std::string to_string() const;
  // "443", "1000-2000".
  static Result<PortRange> parse(std::string_view text);

  friend bool operator==(const PortRange&, const PortRange&) = default;
  // NOLINTNEXTLINE(modernize-use-nullptr): clang-tidy misreads a defaulted <=>
  friend auto operator<=>(const PortRange&, const PortRange&) = default;
};

bool ports_contain(const std::vector<PortRange>& ranges, std::uint16_t port);
// True when every port of `range` is in `ranges`.
bool ports_cover(const std::vector<PortRange>& ranges, const PortRange& range);
// "80,443,1000-2000", or "*" for every port.
std::string format_ports(const std::vector<PortRange>& ranges);
// Parses "80,443,1000-2000" or "*" (every port).
Result<std::vector<PortRange>> parse_ports(std::string_view text);

// One allowlist entry: a destination prefix and the ports allowed on it.
// Written "203.0.113.0/24:80,443", "198.51.100.7:1000-2000", "[2001:db8::/32]:22"
// (IPv6 always in brackets, so the port separator is never ambiguous) or
// "203.0.113.0/24:*" for every port.
struct Destination {
  Prefix prefix;
  std::vector<PortRange> ports;

  [[nodiscard]] bool matches(const IpAddress& address, std::uint16_t port) const {
    return prefix.contains(address) && ports_contain(ports, port);
  }
  [[nodiscard]] std::string to_string() const;
  static Result<Destination> parse(std::string_view text);

  friend bool operator==(const Destination&, const Destination&) = default;
};

// A meter per destination prefix: at most `bits_per_second` and
// `packets_per_second` towards any one /v4_prefix_length (or /v6_prefix_length).
struct DestinationRate {
  std::uint64_t bits_per_second = 8'000;
  std::uint32_t packets_per_second = 2;
  int v4_prefix_length = 24;
  // A /48 is what one site usually gets in IPv6, as a /24 is the smallest
  // routed IPv4 block; metering per /64 would let a VM spray a whole site.
  int v6_prefix_length = 48;

  friend bool operator==(const DestinationRate&, const DestinationRate&) = default;
};

struct DnsPolicy {
  // The host answers DNS on the VM's gateway address ("gateway" in the file).
  bool gateway_resolver = false;
  std::vector<IpAddress> resolvers;  // other resolvers the VM may query on port 53
  // Names the gateway resolver will answer for; empty means every name.
  // "example.org" matches that name only, "*.example.org" its subdomains.
  std::vector<std::string> names;

  [[nodiscard]] bool any_resolver() const { return gateway_resolver || !resolvers.empty(); }
};

// Sources other than the VM's own address that it may send from, only towards
// the listed destinations (e.g. for a measurement experiment). Off when empty.
struct SpoofAllowance {
  std::vector<Prefix> sources;       // at most kMaxSpoofPrefixes
  std::vector<Prefix> destinations;  // at most kMaxSpoofPrefixes

  [[nodiscard]] bool enabled() const { return !sources.empty(); }
};
inline constexpr std::size_t kMaxSpoofPrefixes = 4;

enum class IcmpFamily : std::uint8_t { v4, v6 };
// "echo-request" etc. for the family, nullopt when unknown.
std::optional<std::uint8_t> icmp_type_from_name(IcmpFamily family, std::string_view name);
// The name of an ICMP type, or its number as text when it has none.
std::string icmp_type_name(IcmpFamily family, std::uint8_t type);
// Every known name for the family, for error messages.
std::vector<std::string> icmp_type_names(IcmpFamily family);

struct LevelPolicy {
  TrustLevel level = TrustLevel::untrusted;
  // Semi-trusted only: what it may reach beyond the guardrails.
  std::vector<Destination> tcp;
  std::vector<Destination> udp;
  std::vector<std::uint8_t> icmp_types;    // ICMPv4 types, any destination
  std::vector<std::uint8_t> icmpv6_types;  // ICMPv6 types, any destination
  // A bare SYN may go to any destination on these ports (TCP traceroute);
  // the connection itself is not allowed unless tcp allows it.
  std::vector<PortRange> tcp_syn_only_ports;
  std::vector<std::uint8_t> ip_protocols;  // other IP protocols by number, any destination
  // Semi-trusted and trusted (resolvers only).
  DnsPolicy dns;
  // Every level.
  std::uint64_t egress_bits_per_second = 0;  // aggregate cap of one VM
  std::uint64_t daily_quota_bytes = 0;
  DestinationRate per_destination;
  std::uint32_t tcp_syn_per_second = 1;
  // Semi-trusted and trusted.
  SpoofAllowance spoof;
};

struct Guardrails {
  std::vector<Prefix> reserved;         // always dropped ...
  std::vector<Prefix> allow_reserved;   // ... except these (lab use only)
  std::vector<PortRange> closed_ports;  // TCP and UDP destination ports dropped
  std::vector<Prefix> block;            // the owner's block list (abuse complaints)
  // Addresses of the host besides the VM gateways, which the daemon adds at
  // run time; a VM reaches the host only for what it needs (see explain.h).
  std::vector<Prefix> host_addresses;

  // The reserved prefix that drops `address`, or nullptr when it is not
  // reserved or allow_reserved lifts it.
  [[nodiscard]] const Prefix* reserved_prefix_for(const IpAddress& address) const;
  [[nodiscard]] const Prefix* allow_reserved_for(const IpAddress& address) const;
  [[nodiscard]] const Prefix* block_prefix_for(const IpAddress& address) const;
  // Whether the guardrails drop what a VM sends to `dst` with `protocol`
  // (IPPROTO_*) and, for TCP and UDP, destination port `dport`: a reserved
  // destination not lifted, one on the block list, or a closed port.
  [[nodiscard]] bool forbid(const IpAddress& dst, std::uint8_t protocol, std::uint16_t dport) const;
  // Whether the two drop exactly the same (host addresses aside).
  [[nodiscard]] bool same_drops(const Guardrails& other) const;
};

// The defaults an empty file yields.
std::vector<Prefix> default_reserved_prefixes();
std::vector<PortRange> default_closed_ports();
// Reserved prefixes that allow_reserved can never lift: traffic to them
// would reach the host itself or its link, never the internet.
std::vector<Prefix> unliftable_reserved_prefixes();

enum class AddressFamilies : std::uint8_t { ipv4, ipv6, both };
std::string_view to_string(AddressFamilies families);
std::optional<AddressFamilies> parse_address_families(std::string_view text);

struct OwnerOptions {
  // Unknown clients are refused instead of being classified by the default.
  bool only_listed_clients = false;
  std::optional<std::uint64_t> bandwidth_ceiling_bits_per_second;  // all VMs together
  AddressFamilies address_families = AddressFamilies::both;

  [[nodiscard]] bool allows(Family family) const {
    return address_families == AddressFamilies::both ||
           (family == Family::v4 ? address_families == AddressFamilies::ipv4
                                 : address_families == AddressFamilies::ipv6);
  }
};

// Where something was written in the policy file (1-based; 0 when it came
// from a default).
struct SourceLocation {
  int line = 0;
  int column = 0;
};

// One [[clients.rules]] entry: exactly one matcher and a level.
struct ClientRule {
  enum class Match : std::uint8_t { fingerprint, group, issuer_ca, source, any };
  Match match = Match::any;
  std::string value;  // fingerprint, group name or CA fingerprint
  Prefix source;      // Match::source only
  TrustLevel level = TrustLevel::untrusted;
  std::string name;  // optional label from the file, shown in explanations
  SourceLocation location;

  // "fingerprint sha256:0123…", "group 'lab'", "issuer CA sha256:…",
  // "source 198.51.100.0/24", "any client".
  [[nodiscard]] std::string describe_match() const;
};

struct Policy {
  std::string source_file;  // as given to the parser
  std::string version;      // "sha256:" + hex SHA-256 of the file bytes
  OwnerOptions owner;
  TrustLevel default_level = TrustLevel::untrusted;
  std::map<std::string, std::vector<std::string>> groups;  // name -> fingerprints
  std::vector<ClientRule> rules;                           // first match wins
  std::array<LevelPolicy, 3> levels;                       // indexed by TrustLevel
  Guardrails guardrails;

  [[nodiscard]] const LevelPolicy& level(TrustLevel l) const { return levels[static_cast<std::size_t>(l)]; }
  [[nodiscard]] LevelPolicy& level(TrustLevel l) { return levels[static_cast<std::size_t>(l)]; }
};

// The policy of an empty file (without version and source file).
Policy default_policy();
// The built-in defaults of one level.
LevelPolicy default_level_policy(TrustLevel level);

// "10GiB", "500MB", "1TiB", "2048" (bytes). Binary (KiB..TiB) and decimal
// (KB..TB) units; whole numbers only.
Result<std::uint64_t> parse_byte_size(std::string_view text);
// The shortest exact form: "10GiB", "500MB", "12345B".
std::string format_byte_size(std::uint64_t bytes);
// "8 kbit/s", "50 Mbit/s", "1.5 Mbit/s".
std::string format_bit_rate(std::uint64_t bits_per_second);

// "sha256:" followed by 64 lowercase hex digits.
bool is_valid_fingerprint(std::string_view text);

}  // namespace sg::trust
