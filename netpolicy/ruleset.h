// The ruleset as a plain value: tables, sets, chains, rules, quota
// objects. The compiler (compile.h) produces it without a syscall; it prints
// as nft text for golden tests, logs and `surrogatectl rules show`; a Plan of
// operations on it is what the backend (nft_backend.h) sends to the kernel as
// one atomic netlink batch.
//
// Rules are built from a small closed set of matches and statements. Each
// has exactly one nft text form and one libnftnl expression sequence, so what
// the golden files show is what the kernel gets.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "common/net.h"

namespace sg::netpolicy {

enum class TableFamily : std::uint8_t { inet, arp };

// What a match reads from the packet. Each field has a fixed width and a
// fixed place (meta key, ct key, or payload base/offset/length).
enum class Field : std::uint8_t {
  iifname,              // meta iifname, 16 bytes, zero padded
  oifname,              // meta oifname
  nfproto,              // meta nfproto: 1 byte (NFPROTO_IPV4=2, NFPROTO_IPV6=10)
  l4proto,              // meta l4proto: 1 byte (IPPROTO_*)
  ether_saddr,          // ether saddr: link-layer header offset 6, 6 bytes
  ip_saddr,             // ip saddr: network header offset 12, 4 bytes
  ip_daddr,             // ip daddr: offset 16, 4 bytes
  ip6_saddr,            // ip6 saddr: offset 8, 16 bytes
  ip6_daddr,            // ip6 daddr: offset 24, 16 bytes
  ip_hdrlength,         // ip hdrlength: first byte & 0x0f (in 32-bit words)
  nh_first_byte,        // @nh,0,8: the network header's first byte, no dependency (IPv4: version . ihl)
  ip_frag_off,          // ip frag-off & 0x1fff: offset 6, 2 bytes masked
  th_dport,             // th dport: transport header offset 2, 2 bytes (tcp, udp, sctp...)
  tcp_flags,            // tcp flags: transport offset 13, 1 byte
  icmp_type,            // icmp type: transport offset 0, 1 byte
  icmpv6_type,          // icmpv6 type: transport offset 0, 1 byte
  icmpv6_nd_target,     // @th,64,128: target address of neighbour solicitation/advertisement
  ct_state,             // ct state: 4 bytes bitmask (NF_CT_STATE_BIT)
  ct_mark,              // ct mark: 4 bytes
  ct_direction,         // ct direction: 1 byte (0 original, 1 reply)
  arp_sip,              // arp saddr ip: ARP header offset 14, 4 bytes (Ethernet/IPv4 ARP)
  arp_sha,              // arp saddr ether: ARP header offset 8, 6 bytes
  ip6_exthdr_routing,   // exthdr rt exists (IPv6 routing header present): 1 byte boolean
  ip6_exthdr_fragment,  // exthdr frag exists
  meta_mark,            // meta mark: 4 bytes, host order (the packet mark policy routing reads)
};

// ct state bits (linux/netfilter/nf_conntrack_common.h).
inline constexpr std::uint32_t kCtInvalid = 1U;
inline constexpr std::uint32_t kCtEstablished = 1U << 1U;
inline constexpr std::uint32_t kCtRelated = 1U << 2U;
inline constexpr std::uint32_t kCtNew = 1U << 3U;
inline constexpr std::uint32_t kCtUntracked = 1U << 6U;

// TCP flag bits.
inline constexpr std::uint8_t kTcpFin = 0x01;
inline constexpr std::uint8_t kTcpSyn = 0x02;
inline constexpr std::uint8_t kTcpRst = 0x04;
inline constexpr std::uint8_t kTcpAck = 0x10;

// A literal value, in network byte order, exactly the field's width
// (interface names: 16 bytes, zero padded).
using Bytes = std::vector<std::uint8_t>;

Bytes ifname_bytes(const std::string& name);
Bytes u8_bytes(std::uint8_t v);
Bytes be16_bytes(std::uint16_t v);
Bytes be32_bytes(std::uint32_t v);
Bytes host32_bytes(std::uint32_t v);  // ct state / ct mark / meta are host order
Bytes address_bytes(const IpAddress& a);
Bytes mac_bytes(const std::string& mac);  // "52:54:00:aa:bb:cc"
// The first prefix_len bits of a len-byte field set: 24 of 4 = 255.255.255.0.
Bytes prefix_mask(std::size_t len, int prefix_len);

struct Match {
  enum class Op : std::uint8_t {
    eq,      // field == value
    neq,     // field != value
    prefix,  // field within prefix (value = network, prefix_len bits compared)
    not_prefix,
    range,   // value <= field <= value_hi
    in_set,  // field (or concatenation of fields) found in set
    not_in_set,
    any_bits,   // (field & value) != 0   (e.g. ct state established,related)
    masked_eq,  // (field & mask) == value (e.g. tcp flags & (syn|ack) == syn)
    vmap        // field (or concatenation) looked up in verdict map `set`: `iifname vmap @from_vm`
  };
  std::vector<Field> fields;  // one, or several for a concatenated set lookup
  Op op = Op::eq;
  Bytes value;
  Bytes value_hi;      // range only
  Bytes mask;          // masked_eq only
  int prefix_len = 0;  // prefix ops only
  std::string set;     // set ops only
  // Set ops: per key field, the number of leading bits looked up (the field
  // masked, `(ip daddr & 255.255.255.0)`); 0 or absent = the whole field.
  std::vector<int> key_prefix_lens;
};

struct Counter {};
struct Log {
  std::uint16_t group = 0;
  std::string prefix;  // "sg3 reserved " (at most 63 bytes)
};
struct Limit {
  std::uint64_t rate = 0;
  bool bytes = false;       // rate in bytes (per second) instead of packets
  std::uint32_t burst = 0;  // packets or bytes
  bool over = true;         // match when the rate is exceeded
};
struct QuotaRef {
  std::string name;  // a named quota object: matches once it is used up
};
struct CtMarkSet {
  std::uint32_t mark = 0;
};
struct PrioritySet {
  std::uint32_t priority = 0;  // major << 16 | minor, as tc class ids
};
// `meta mark set`: the packet mark an `ip rule fwmark` routes by (tunnel/).
struct MarkSet {
  std::uint32_t mark = 0;
};
// `tcp option maxseg size set N`: clamps the MSS of a SYN that carries one,
// so TCP through a tunnel never sends segments its MTU cannot carry.
struct MssSet {
  std::uint16_t mss = 0;
};
// `masquerade`: source NAT to the outgoing interface's address (only in a
// base chain of type nat, hook postrouting).
struct Masquerade {};
// Adds/updates an element of a dynamic set keyed by a (masked) field, with a
// per-element limit; matches when that element's limit is exceeded.
struct MeterUpdate {
  std::string set;
  Field key = Field::ip_daddr;
  int key_prefix_len = 0;  // the key is the field masked to this many bits
  Limit limit;
  // Key `iifname . <field>`: one meter set shared by every VM, each VM's
  // elements apart (the kernel finds sets by name in a list, so per-VM sets
  // would make every change cost more with every VM).
  bool by_iifname = false;
};
// `meta priority set <fields> map @map`: the tc class is the value the
// packet's key maps to; no match (no element) ends the rule, like a failed
// set lookup, so the rule both checks and classifies.
struct PriorityMap {
  std::vector<Field> fields;
  std::string map;
  std::vector<int> key_prefix_lens;  // as in Match
};
struct Verdict {
  enum class Kind : std::uint8_t { accept, drop, jump, go_to, ret } kind = Kind::accept;
  std::string chain;  // jump / goto
};
// `ct mark set <fields> map @map`: the mark the key maps to; no element ends
// the rule.
struct CtMarkMap {
  std::vector<Field> fields;
  std::string map;
};
// `ct mark set ct mark | bits`: sets bits of the flow's mark, keeps the rest.
struct CtMarkOr {
  std::uint32_t bits = 0;
};
// `quota name <fields> map @map`: the named quota the key maps to; matches
// once that quota is used up. No element (no quota) ends the rule.
struct QuotaMap {
  std::vector<Field> fields;
  std::string map;
};
// `update @set { <key> . "<tag>" counter }`: counts the packet in the
// element of a dynamic set keyed by an interface name and a fixed tag (a
// per-VM, per-reason drop counter in one shared set). A full set stops
// counting and nothing else: keep it in a rule of its own before the verdict.
struct CountUpdate {
  std::string set;
  Field key = Field::iifname;  // iifname or oifname
  std::string tag;             // at most 15 bytes (an ifname-sized key part)
};
using Statement = std::variant<Counter, Log, Limit, QuotaRef, CtMarkSet, PrioritySet, MeterUpdate, Verdict, MarkSet,
                               MssSet, Masquerade, PriorityMap, CtMarkMap, CtMarkOr, QuotaMap, CountUpdate>;

struct Rule {
  std::vector<Match> matches;
  std::vector<Statement> statements;
  std::string comment;  // "sg3: drop reserved destinations (guardrail)"
  friend bool operator==(const Rule&, const Rule&) = default;
};

struct BaseHook {
  enum class Hook : std::uint8_t { prerouting, input, forward, output, postrouting } hook = Hook::forward;
  int priority = 0;
  bool policy_drop = false;
  bool nat = false;  // type nat instead of type filter (masquerade)
};

struct Chain {
  std::string name;
  std::optional<BaseHook> base;
  std::vector<Rule> rules;
};

// classid, mark: map values (a tc class, a ct/packet mark; host byte order);
// mark is also a key part (`meta mark`). nd_target: the 16 raw bytes of an
// ICMPv6 neighbour message's target (`@th,64,128`, untyped to nft); a set
// with it is declared by `typeof`, as nft 1.0.6 has no name for that field.
enum class KeyType : std::uint8_t {
  ipv4_addr,
  ipv6_addr,
  inet_proto,
  inet_service,
  ifname,
  ether_addr,
  classid,
  mark,
  nd_target,
  ct_state,  // 4 bytes, host order (only in concatenations: `established`)
  ct_dir     // 1 byte (only in concatenations: `original`, `reply`)
};

struct SetElement {
  // One part per key type. A part is a single value or an inclusive range
  // [value, value_hi] (interval sets: prefixes and port ranges).
  struct Part {
    Bytes value;
    Bytes value_hi;  // empty: single value
  };
  std::vector<Part> key;
  std::string verdict_chain;                // maps of verdicts: goto this chain
  Bytes data;                               // maps of values: the value (data_type's width)
  std::optional<std::uint64_t> timeout_ms;  // per-element timeout (kernel removes it)
  std::string comment;
  std::string object;  // maps of quota objects: the quota's name
};

struct Set {
  std::string name;
  std::vector<KeyType> key;
  bool interval = false;
  bool timeout = false;              // elements may carry timeouts
  bool dynamic = false;              // updated from the packet path (meters)
  bool verdict_map = false;          // a map of key -> verdict (goto chain)
  std::optional<KeyType> data_type;  // a map of key -> value of this type (classid, mark)
  bool quota_map = false;            // a map of key -> named quota object
  std::uint32_t size = 0;            // dynamic sets: maximum number of elements
  // Default element timeout. Meters need one: a full dynamic set stops
  // adding elements, and a meter that cannot add its element never fires.
  std::optional<std::uint64_t> timeout_ms;
  std::vector<SetElement> elements;
};

struct QuotaObject {
  std::string name;
  std::uint64_t bytes = 0;
  std::uint64_t consumed = 0;
};

struct Table {
  TableFamily family = TableFamily::inet;
  std::string name;
  std::vector<Set> sets;
  std::vector<QuotaObject> quotas;
  std::vector<Chain> chains;
};

struct Ruleset {
  std::vector<Table> tables;
};

// Operations the backend applies in order, in one transaction.
struct Op {
  enum class Kind : std::uint8_t {
    add_table,  // table (only family/name used): create if absent
    delete_table,
    add_set,  // set (with its elements)
    delete_set,
    add_elements,  // set name + elements
    delete_elements,
    destroy_elements,  // like delete_elements, but elements already gone are no error
    flush_set,
    add_quota,
    delete_quota,
    add_chain,  // chain (with its rules)
    delete_chain,
    flush_chain,
    add_rule,  // chain name + rule, appended
  } kind = Kind::add_table;
  TableFamily family = TableFamily::inet;
  std::string table;
  std::string name;  // set, chain or quota name
  Set set;
  std::vector<SetElement> elements;
  QuotaObject quota;
  Chain chain;
  Rule rule;
};

struct Plan {
  std::vector<Op> ops;
  void append(const Plan& other) { ops.insert(ops.end(), other.ops.begin(), other.ops.end()); }
};

// A plan that replaces every table of the ruleset atomically: each table is
// created if missing, deleted, and created again with all its content, in
// one transaction, so no packet ever sees an empty or partial table.
Plan plan_replace(const Ruleset& rs);

// nft text, as `nft -f` would accept it and `nft list ruleset` would show it.
std::string to_nft_text(const Ruleset& rs);
std::string to_nft_text(const Table& t);
std::string to_nft_text(const Chain& c);
std::string to_nft_text(const Rule& r);
std::string to_nft_text(const Plan& p);

}  // namespace sg::netpolicy
