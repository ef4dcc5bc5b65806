#include "netpolicy/compile.h"

#include <netinet/in.h>

#include <algorithm>
#include <map>

namespace sg::netpolicy {
namespace {

constexpr std::uint8_t kNfprotoIpv4 = 2;
constexpr std::uint8_t kNfprotoIpv6 = 10;
// The base chain of tunnel dispatch, there only while some VM has a tunnel.
const char* const kPreroutingChain = "prerouting";

using trust::TrustLevel;

Match m(Field f, Match::Op op, Bytes v) {
  Match x;
  x.fields = {f};
  x.op = op;
  x.value = std::move(v);
  return x;
}
Match eq(Field f, Bytes v) { return m(f, Match::Op::eq, std::move(v)); }
Match neq(Field f, Bytes v) { return m(f, Match::Op::neq, std::move(v)); }
Match nfproto(Family fam) { return eq(Field::nfproto, u8_bytes(fam == Family::v4 ? kNfprotoIpv4 : kNfprotoIpv6)); }
Match l4proto(std::uint8_t p) { return eq(Field::l4proto, u8_bytes(p)); }
Match in_prefix(Field f, const Prefix& p, bool negate = false) {
  Match x = m(f, negate ? Match::Op::not_prefix : Match::Op::prefix, address_bytes(p.address));
  x.prefix_len = p.length;
  return x;
}
Match in_set(std::vector<Field> fields, const std::string& set, bool negate = false) {
  Match x;
  x.fields = std::move(fields);
  x.op = negate ? Match::Op::not_in_set : Match::Op::in_set;
  x.set = set;
  return x;
}
// "iifname vmap @from_vm": jump to the chain the map names for this key.
Match vmap(Field f, const std::string& map) {
  Match x;
  x.fields = {f};
  x.op = Match::Op::vmap;
  x.set = map;
  return x;
}
Match ct_state(std::uint32_t bits) { return m(Field::ct_state, Match::Op::any_bits, host32_bytes(bits)); }
Match masked(Field f, Bytes mask, Bytes value) {
  Match x = m(f, Match::Op::masked_eq, std::move(value));
  x.mask = std::move(mask);
  return x;
}
Match port_range(const trust::PortRange& r) {
  if (r.first == r.last) return eq(Field::th_dport, be16_bytes(r.first));
  Match x = m(Field::th_dport, Match::Op::range, be16_bytes(r.first));
  x.value_hi = be16_bytes(r.last);
  return x;
}
Match ifname_wildcard(Field f, const std::string& prefix) {
  // iifname "sg*": compare only the prefix's bytes.
  Match x = m(f, Match::Op::prefix, ifname_bytes(prefix));
  x.prefix_len = static_cast<int>(prefix.size()) * 8;
  return x;
}

// `ip daddr 203.0.113.7` for a single address, `ip daddr 203.0.113.0/24`
// for a prefix (a client's addresses are compared in the rule itself: no
// per-VM set, see vm_parts).
Match addr_match(Field f, const Prefix& p) {
  if (p.length >= p.address.bit_length()) return eq(f, address_bytes(p.address));
  return in_prefix(f, p);
}

Field saddr(Family f) { return f == Family::v4 ? Field::ip_saddr : Field::ip6_saddr; }
Field daddr(Family f) { return f == Family::v4 ? Field::ip_daddr : Field::ip6_daddr; }
const char* sfx(Family f) { return f == Family::v4 ? "_v4" : "_v6"; }

Rule rule(std::vector<Match> matches, std::vector<Statement> stmts, std::string comment) {
  return Rule{std::move(matches), std::move(stmts), std::move(comment)};
}
Statement accept() { return Verdict{Verdict::Kind::accept, ""}; }
Statement drop() { return Verdict{Verdict::Kind::drop, ""}; }

IpAddress last_address(const Prefix& p) {
  IpAddress a = p.address;
  for (int bit = p.length; bit < a.bit_length(); ++bit)
    a.bytes[bit / 8] |= static_cast<std::uint8_t>(1U << (7 - bit % 8));
  return a;
}

std::vector<Prefix> of_family(const std::vector<Prefix>& ps, Family f) {
  std::vector<Prefix> out;
  for (const auto& p : ps) {
    if (p.family() == f) out.push_back(p);
  }
  return out;
}

// Interval sets must not hold overlapping ranges: keep only prefixes not
// covered by another one of the list.
std::vector<Prefix> minimal(std::vector<Prefix> ps) {
  std::sort(ps.begin(), ps.end(), [](const Prefix& a, const Prefix& b) {
    return a.address != b.address ? a.address < b.address : a.length < b.length;
  });
  std::vector<Prefix> out;
  for (const auto& p : ps) {
    if (!out.empty() && out.back().contains(p)) continue;
    out.push_back(p);
  }
  return out;
}

Set prefix_set(const std::string& name, Family f, const std::vector<Prefix>& prefixes) {
  Set s;
  s.name = name;
  s.key = {f == Family::v4 ? KeyType::ipv4_addr : KeyType::ipv6_addr};
  s.interval = true;
  for (const auto& p : minimal(of_family(prefixes, f))) s.elements.push_back(prefix_element(p));
  return s;
}

constexpr std::uint8_t kIpProtoGre = 47;

Statement go_to(const std::string& chain) { return Verdict{Verdict::Kind::go_to, chain}; }
Statement ret() { return Verdict{Verdict::Kind::ret, ""}; }

KeyType addr_type(Family f) { return f == Family::v4 ? KeyType::ipv4_addr : KeyType::ipv6_addr; }

Set make_set(const std::string& name, std::vector<KeyType> key) {
  Set s;
  s.name = name;
  s.key = std::move(key);
  return s;
}

// "untrusted", "semi", "trusted": set and chain names (no '-' in them).
std::string level_token(TrustLevel l) {
  return l == TrustLevel::semi_trusted ? std::string("semi") : std::string(trust::to_string(l));
}
// Keys start with the interface name, in hash and interval maps alike. In
// an interval map (the kernel's pipapo) that keeps inserting cheap: every
// insert checks for overlaps field by field, and many VMs share the same
// destinations (address first made reconciling 20,000 prefix holes ~3x
// slower).
std::vector<KeyType> hole_key(Family f) {
  return {KeyType::ifname, addr_type(f), KeyType::inet_proto, KeyType::inet_service};
}
std::vector<Field> hole_fields(Family f) { return {Field::iifname, daddr(f), Field::l4proto, Field::th_dport}; }

// Where a hole goes. One protocol, one port and a prefix of a common length
// (a host, an IPv4 /24 or /16, an IPv6 /64, /56 or /48): a hash map of that
// length, keyed by the destination masked to it, whose inserts and deletes
// cost the same at any size. Everything else (port ranges, any protocol,
// other lengths): the interval map (pipapo), whose deletes scan the whole
// map (docs/performance.md). prefix_len 0 names the interval map.
struct HoleMap {
  Family family = Family::v4;
  int prefix_len = 0;
};
constexpr int kHashedHoleLengthsV4[] = {32, 24, 16};
constexpr int kHashedHoleLengthsV6[] = {128, 64, 56, 48};
std::vector<HoleMap> hole_maps(Family f) {
  std::vector<HoleMap> maps;
  if (f == Family::v4) {
    for (int len : kHashedHoleLengthsV4) maps.push_back({f, len});
  } else {
    for (int len : kHashedHoleLengthsV6) maps.push_back({f, len});
  }
  maps.push_back({f, 0});
  return maps;
}
int full_length(Family f) { return f == Family::v4 ? 32 : 128; }
// holes_v4 (hosts), holes_v4_p24, holes_v4_range.
std::string hole_map_name(const HoleMap& m) {
  std::string name = std::string("holes") + sfx(m.family);
  if (m.prefix_len == 0) return name + "_range";
  if (m.prefix_len == full_length(m.family)) return name;
  return name + "_p" + std::to_string(m.prefix_len);
}
// The key's prefix lengths: the destination masked to the map's length.
std::vector<int> hole_key_prefix(const HoleMap& m) {
  if (m.prefix_len == 0 || m.prefix_len == full_length(m.family)) return {};
  return {0, m.prefix_len};
}
Match hole_lookup(const HoleMap& m) {
  Match x = in_set(hole_fields(m.family), hole_map_name(m));
  x.key_prefix_lens = hole_key_prefix(m);
  return x;
}
// A rule that admits what `lookup` finds, after `matches`. With shaping the
// set is a map of tc classes and the same lookup also sets the packet's
// class (`meta priority set <key> map @set`); its comment says so.
Rule admit_by_lookup(bool shaping, std::vector<Match> matches, const Match& lookup, Statement verdict,
                     const std::string& comment, const std::string& shaped_comment) {
  if (shaping) {
    return rule(std::move(matches),
                {PriorityMap{lookup.fields, lookup.set, lookup.key_prefix_lens}, std::move(verdict)}, shaped_comment);
  }
  matches.push_back(lookup);
  return rule(std::move(matches), {std::move(verdict)}, comment);
}
// dev: iifname (from the VM) or oifname (to it); addr: the client's side.
std::vector<Field> client_fields(Field dev, Field addr) { return {dev, addr}; }
std::string client_map(Family f, bool range) { return std::string("vm_client") + sfx(f) + (range ? "_range" : ""); }

std::string level_set(TrustLevel l) { return "level_" + level_token(l); }
std::string level_chain_name(TrustLevel l) { return level_token(l) + "_out"; }
constexpr TrustLevel kLevels[] = {TrustLevel::untrusted, TrustLevel::semi_trusted, TrustLevel::trusted};

// Every reason a packet of a VM is dropped for, and the interface that
// names the VM (the tap it came in on, or for "inbound" the one it was
// going out of).
struct DropReason {
  const char* reason;
  Field key;
  const char* text;
};
constexpr DropReason kDropReasons[] = {
    {"spoof-mac", Field::iifname, "not from the VM's own MAC"},
    {"family", Field::iifname, "an address family not enabled for the VM"},
    {"spoof-ip", Field::iifname, "not from the VM's own address"},
    {"fragment", Field::iifname, "a fragment that escaped reassembly"},
    {"ip-options", Field::iifname, "IPv4 options"},
    {"ip6-routing", Field::iifname, "an IPv6 routing header"},
    {"gre", Field::iifname, "GRE from the guest"},
    {"reserved", Field::iifname, "a reserved or bogon destination"},
    {"blocked", Field::iifname, "a destination on the owner's block list"},
    {"closed-port", Field::iifname, "a closed port"},
    {"quota", Field::iifname, "the daily byte quota is used up"},
    {"dest-rate", Field::iifname, "over the per-destination rate"},
    {"syn-rate", Field::iifname, "over the TCP SYN rate"},
    {"not-allowed", Field::iifname, "not allowed at the VM's trust level"},
    {"inbound", Field::oifname, "a new inbound connection not from its client"},
    {"host", Field::iifname, "to the host, not needed by a VM"},
    {"nd-spoof", Field::iifname, "a neighbour advertisement for an address not the VM's"},
};

// 0x1fff: the fragment offset bits of the IPv4 header.
constexpr std::uint16_t kFragOffsetMask = 0x1fff;

}  // namespace

SetElement prefix_element(const Prefix& p) {
  SetElement e;
  SetElement::Part part;
  part.value = address_bytes(p.address);
  if (p.length < p.address.bit_length()) part.value_hi = address_bytes(last_address(p));
  e.key.push_back(std::move(part));
  return e;
}

SetElement port_range_element(const trust::PortRange& r) {
  SetElement e;
  SetElement::Part part;
  part.value = be16_bytes(r.first);
  if (r.last != r.first) part.value_hi = be16_bytes(r.last);
  e.key.push_back(std::move(part));
  return e;
}

std::string Compiler::drop_chain(const std::string& reason) {
  std::string name = "drop_" + reason;
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

Rule Compiler::drop_rule(std::vector<Match> matches, const std::string& reason, const std::string& why) const {
  return rule(std::move(matches), {go_to(drop_chain(reason))}, why);
}

Rule Compiler::block_rule(Family f) const {
  return drop_rule({nfproto(f), in_set({daddr(f)}, std::string("block") + sfx(f))}, "blocked",
                   "drop destinations on the owner's block list (guardrail)");
}

// A VM without a quota has no element: the rule never matches.
Rule Compiler::quota_rule() const {
  return rule({}, {QuotaMap{{Field::iifname}, "vm_quota"}, go_to(drop_chain("quota"))}, "daily byte quota used up");
}

std::vector<Set> Compiler::shared_sets() const {
  std::vector<Set> sets = policy_sets();
  std::vector<Set> per_vm = vm_sets();
  sets.insert(sets.end(), std::make_move_iterator(per_vm.begin()), std::make_move_iterator(per_vm.end()));
  return sets;
}

std::vector<Set> Compiler::packet_path_sets() const {
  std::vector<Set> out;
  for (Set& s : vm_sets()) {
    if (s.dynamic) out.push_back(std::move(s));
  }
  return out;
}

std::vector<Set> Compiler::policy_sets() const {
  const auto& g = policy_.guardrails;
  std::vector<Set> sets;
  for (Family f : {Family::v4, Family::v6}) {
    sets.push_back(prefix_set(std::string("reserved") + sfx(f), f, g.reserved));
    sets.push_back(prefix_set(std::string("allow_reserved") + sfx(f), f, g.allow_reserved));
    sets.push_back(prefix_set(std::string("block") + sfx(f), f, g.block));
  }
  Set ports = make_set("closed_ports", {KeyType::inet_service});
  ports.interval = true;
  for (const auto& r : g.closed_ports) ports.elements.push_back(port_range_element(r));
  sets.push_back(std::move(ports));

  // Semi-trusted allowlists: destination prefix . port range.
  const auto& semi = policy_.level(TrustLevel::semi_trusted);
  for (Family f : {Family::v4, Family::v6}) {
    for (const auto& [proto, list] : {std::pair{"tcp", &semi.tcp}, std::pair{"udp", &semi.udp}}) {
      Set s = make_set(std::string("semi_") + proto + sfx(f), {addr_type(f), KeyType::inet_service});
      s.interval = true;
      for (const auto& d : *list) {
        if (d.prefix.family() != f) continue;
        for (const auto& r : d.ports) {
          SetElement e = prefix_element(d.prefix);
          if (e.key[0].value_hi.empty()) e.key[0].value_hi = e.key[0].value;
          e.key.push_back({be16_bytes(r.first), be16_bytes(r.last)});
          s.elements.push_back(std::move(e));
        }
      }
      sets.push_back(std::move(s));
    }
  }
  return sets;
}

std::vector<Set> Compiler::vm_sets() const {
  std::vector<Set> sets;
  // What makes each VM itself, keyed by its interface name.
  Set vms = make_set("vms", {KeyType::ifname});
  sets.push_back(vms);
  sets.push_back(make_set("vm_mac", {KeyType::ifname, KeyType::ether_addr}));
  for (Family f : {Family::v4, Family::v6}) {
    sets.push_back(make_set(f == Family::v4 ? "vm_ipv4" : "vm_ipv6", {KeyType::ifname}));
    sets.push_back(make_set(std::string("vm_addr") + sfx(f), {KeyType::ifname, addr_type(f)}));
    sets.push_back(make_set(std::string("vm_gateway") + sfx(f), {KeyType::ifname, addr_type(f)}));
    // Its client: single addresses in a hash map, prefixes in an interval one.
    for (bool range : {false, true}) {
      Set client = make_set(client_map(f, range), {KeyType::ifname, addr_type(f)});
      client.interval = range;
      if (opt_.shaping) client.data_type = KeyType::classid;
      sets.push_back(std::move(client));
    }
  }
  // The same IPv6 addresses, as the target of a neighbour advertisement.
  sets.push_back(make_set("vm_nd_v6", {KeyType::ifname, KeyType::nd_target}));
  for (const char* name : {"vm_mark", "vm_mark_synonly"}) {
    Set mark = make_set(name, {KeyType::ifname});
    mark.data_type = KeyType::mark;
    sets.push_back(std::move(mark));
  }
  if (opt_.shaping) {
    Set cls = make_set("vm_class", {KeyType::ifname});
    cls.data_type = KeyType::classid;
    sets.push_back(std::move(cls));
  }
  // The short path: tap . MAC . plain flow mark . established . original,
  // and tap . plain flow mark . established . reply (replies), each to the
  // VM's default class when shaping. The state and direction are part of
  // the key so one lookup checks them too.
  for (const auto& [name, key] :
       {std::pair{"vm_plain", std::vector<KeyType>{KeyType::ifname, KeyType::ether_addr, KeyType::mark,
                                                   KeyType::ct_state, KeyType::ct_dir}},
        std::pair{"vm_plain_in",
                  std::vector<KeyType>{KeyType::ifname, KeyType::mark, KeyType::ct_state, KeyType::ct_dir}}}) {
    Set plain = make_set(name, key);
    if (opt_.shaping) plain.data_type = KeyType::classid;
    sets.push_back(std::move(plain));
  }
  Set quota = make_set("vm_quota", {KeyType::ifname});
  quota.quota_map = true;
  sets.push_back(std::move(quota));
  for (TrustLevel l : kLevels) sets.push_back(make_set(level_set(l), {KeyType::ifname}));
  // Holes: exact ones (one address, one protocol, one port) in a hash map
  // whose changes cost the same at any size; the rest in an interval map.
  for (Family f : {Family::v4, Family::v6}) {
    for (const HoleMap& m : hole_maps(f)) {
      Set h = make_set(hole_map_name(m), hole_key(f));
      h.interval = m.prefix_len == 0;
      h.timeout = true;
      // With shaping, a map to each hole's tc class (docs/shaping.md).
      if (opt_.shaping) h.data_type = KeyType::classid;
      sets.push_back(std::move(h));
    }
  }

  // Per-destination meters, shared by every VM and keyed by its interface.
  for (Family f : {Family::v4, Family::v6}) {
    for (const char* kind : {"dst_pps", "dst_bps"}) {
      Set meter = make_set(std::string(kind) + sfx(f), {KeyType::ifname, addr_type(f)});
      meter.dynamic = true;
      meter.timeout = true;
      // The kernel sizes a dynamic set's hash table by `size` up front.
      meter.size = opt_.meter_size;
      meter.timeout_ms = 60'000;
      sets.push_back(std::move(meter));
    }
  }
  Set syn = make_set("syn_rate", {KeyType::ifname});
  syn.dynamic = true;
  syn.timeout = true;
  syn.size = 65'536;
  syn.timeout_ms = 60'000;
  sets.push_back(std::move(syn));
  // Drops per VM and reason: "sg3" . "spoof-ip" counter packets 2 bytes 168.
  Set drops = make_set("drops", {KeyType::ifname, KeyType::ifname});
  drops.dynamic = true;
  drops.size = 262'144;
  sets.push_back(std::move(drops));

  Set pre = make_set("vm_pre", {KeyType::ifname});
  pre.verdict_map = true;
  sets.push_back(std::move(pre));
  // Tunnel device . VM tap: what may come out of a tunnel, and where to;
  // VM tap . tunnel device . mark: what may go into it.
  sets.push_back(make_set("tunnel_ok", {KeyType::ifname, KeyType::ifname}));
  sets.push_back(make_set("tunnel_out", {KeyType::ifname, KeyType::ifname, KeyType::mark}));
  return sets;
}

std::uint32_t Compiler::hole_class(const VmNet& vm, const Hole& hole) const {
  return hole.tc_minor != 0 ? tc_handle(opt_.tc_major, hole.tc_minor)
                            : tc_handle(opt_.tc_major, vm.id, FlowClass::nodes);
}

std::optional<std::pair<std::string, SetElement>> Compiler::hole_element(const VmNet& vm, const Hole& hole,
                                                                         std::int64_t now) const {
  const Family f = hole.destination.family();
  const bool ported = hole.protocol == IPPROTO_TCP || hole.protocol == IPPROTO_UDP;
  HoleMap map{f, 0};
  if (ported && hole.ports.first == hole.ports.last) {
    for (const HoleMap& m : hole_maps(f)) {
      if (m.prefix_len == hole.destination.length) map = m;
    }
  }
  const bool exact = map.prefix_len != 0;
  SetElement e;
  e.key.push_back({ifname_bytes(vm.name), {}});
  if (exact) {
    // The network address (a Prefix holds no host bits): what the rule's
    // masked destination equals.
    e.key.push_back({address_bytes(hole.destination.address), {}});
    e.key.push_back({u8_bytes(hole.protocol), {}});
    e.key.push_back({be16_bytes(hole.ports.first), {}});
  } else {
    e.key.push_back(prefix_element(hole.destination).key[0]);
    if (hole.protocol == 0) {
      e.key.push_back({u8_bytes(0), u8_bytes(255)});
      e.key.push_back({be16_bytes(0), be16_bytes(65535)});
    } else {
      e.key.push_back({u8_bytes(hole.protocol), {}});
      e.key.push_back(ported ? SetElement::Part{be16_bytes(hole.ports.first), be16_bytes(hole.ports.last)}
                             : SetElement::Part{be16_bytes(0), be16_bytes(65535)});
    }
  }
  if (hole.expires > 0) e.timeout_ms = static_cast<std::uint64_t>(std::max<std::int64_t>(1, hole.expires - now)) * 1000;
  e.comment = "hole " + std::to_string(hole.id);
  if (opt_.shaping) e.data = host32_bytes(hole_class(vm, hole));
  return std::pair{hole_map_name(map), std::move(e)};
}

std::vector<Rule> Compiler::evil_packet_rules() const {
  std::vector<Rule> r;
  r.push_back(drop_rule({nfproto(Family::v4), m(Field::ip_frag_off, Match::Op::neq, be16_bytes(0))}, "fragment",
                        "drop non-first IPv4 fragments (ports unknown)"));
  r.push_back(drop_rule({nfproto(Family::v4), neq(Field::ip_hdrlength, u8_bytes(5))}, "ip-options",
                        "drop IPv4 packets with options (source route, record route...)"));
  r.push_back(drop_rule({nfproto(Family::v6), eq(Field::ip6_exthdr_routing, u8_bytes(1))}, "ip6-routing",
                        "drop IPv6 packets with a routing header"));
  r.push_back(drop_rule({nfproto(Family::v6), eq(Field::ip6_exthdr_fragment, u8_bytes(1))}, "fragment",
                        "drop IPv6 fragments that escaped reassembly"));
  return r;
}

Chain Compiler::out_chain() const {
  Chain c{"vm_out", std::nullopt, {}};
  auto& r = c.rules;
  // 1. Anti-spoofing: a VM sends only from its own MAC (checked on the way
  // here, in forward) and addresses.
  // One lookup per packet: which of the two drops it is (no address in
  // that family at all, or another address) is told apart after the miss.
  for (Family f : {Family::v4, Family::v6}) {
    r.push_back(rule({nfproto(f), in_set({Field::iifname, saddr(f)}, std::string("vm_addr") + sfx(f), true)},
                     {go_to(std::string("not_own") + sfx(f))}, "drop packets not from the VM's own address"));
  }
  // 2. Every new flow carries the VM's id, for the flow log.
  r.push_back(rule({ct_state(kCtNew)}, {CtMarkMap{{Field::iifname}, "vm_mark"}}, "mark new flows with the VM's id"));
  // Its HTB class: everything else, unless the client or hole rule below
  // picks a more specific one.
  if (opt_.shaping) {
    r.push_back(rule({}, {PriorityMap{{Field::iifname}, "vm_class"}}, "shape as everything else"));
  }
  // 3. Evil packets: fragments that escaped reassembly, IP options, IPv6
  // routing headers.
  for (Rule& e : evil_packet_rules()) r.push_back(std::move(e));
  // 4. GRE from the guest itself: no tunnel inside the tunnel, and no GRE
  // that could pass for the host's own to the client's endpoint. Only
  // levels that may be tunnelled; a semi-trusted policy that allows IP
  // protocol 47 keeps it.
  const auto& semi = policy_.level(TrustLevel::semi_trusted);
  const bool semi_gre =
      std::find(semi.ip_protocols.begin(), semi.ip_protocols.end(), kIpProtoGre) != semi.ip_protocols.end();
  for (TrustLevel l : {TrustLevel::untrusted, TrustLevel::semi_trusted}) {
    if (l == TrustLevel::semi_trusted && semi_gre) continue;
    r.push_back(drop_rule({l4proto(kIpProtoGre), in_set({Field::iifname}, level_set(l))}, "gre",
                          std::string(trust::to_string(l)) + ": drop GRE sent by the guest (docs/tunnel.md)"));
  }
  // 5. Global guardrails, for every level.
  for (Family f : {Family::v4, Family::v6}) {
    r.push_back(drop_rule({nfproto(f), in_set({daddr(f)}, std::string("reserved") + sfx(f)),
                           in_set({daddr(f)}, std::string("allow_reserved") + sfx(f), true)},
                          "reserved", "drop reserved and bogon destinations (guardrail)"));
    r.push_back(block_rule(f));
  }
  for (std::uint8_t proto : {static_cast<std::uint8_t>(IPPROTO_TCP), static_cast<std::uint8_t>(IPPROTO_UDP)}) {
    r.push_back(
        drop_rule({l4proto(proto), in_set({Field::th_dport}, "closed_ports")}, "closed-port",
                  std::string("drop ") + (proto == IPPROTO_TCP ? "TCP" : "UDP") + " to closed ports (guardrail)"));
  }
  // 6. Its own client: always, for every level, and before the quota, so a
  // VM that used up its day can still talk to its owner.
  for (Family f : {Family::v4, Family::v6}) {
    for (bool range : {false, true}) {
      r.push_back(admit_by_lookup(opt_.shaping, {nfproto(f)},
                                  in_set(client_fields(Field::iifname, daddr(f)), client_map(f, range)), accept(),
                                  "its own client", "its own client, in the client's class"));
    }
  }
  // 7. Daily byte quota: counts everything but the client. A VM without a
  // quota has no element: the rule never matches.
  r.push_back(quota_rule());
  // 8. Authorized nodes: for every level.
  for (Family f : {Family::v4, Family::v6}) {
    for (const HoleMap& m : hole_maps(f)) {
      // With shaping the lookup both authorizes and picks the hole's class.
      r.push_back(admit_by_lookup(opt_.shaping, {nfproto(f)}, hole_lookup(m), accept(),
                                  "nodes that signed an authcert for this client",
                                  "nodes that signed an authcert for this client, each in its class"));
    }
  }
  // 9. The rest depends on the VM's trust level; a tap in no level set gets
  // the untrusted chain.
  r.push_back(rule({in_set({Field::iifname}, level_set(TrustLevel::trusted))},
                   {go_to(level_chain_name(TrustLevel::trusted))}, "trusted VMs"));
  r.push_back(rule({in_set({Field::iifname}, level_set(TrustLevel::semi_trusted))},
                   {go_to(level_chain_name(TrustLevel::semi_trusted))}, "semi-trusted VMs"));
  r.push_back(rule({}, {go_to(level_chain_name(TrustLevel::untrusted))}, "untrusted VMs"));
  return c;
}

Chain Compiler::level_chain(TrustLevel level) const {
  const trust::LevelPolicy& lp = policy_.level(level);
  const std::string lv(trust::to_string(level));
  Chain c{level_chain_name(level), std::nullopt, {}};
  auto& r = c.rules;
  // Semi-trusted allowlists (no meter: the destination is vetted).
  if (level == TrustLevel::semi_trusted) {
    for (Family f : {Family::v4, Family::v6}) {
      for (auto [proto, name] : {std::pair{static_cast<std::uint8_t>(IPPROTO_TCP), "tcp"},
                                 std::pair{static_cast<std::uint8_t>(IPPROTO_UDP), "udp"}}) {
        r.push_back(rule(
            {nfproto(f), l4proto(proto), in_set({daddr(f), Field::th_dport}, std::string("semi_") + name + sfx(f))},
            {CtMarkOr{kPlainFlowMark}, accept()}, lv + ": " + name + " allowlist"));
      }
    }
  }
  // Per-destination-prefix meters for unsolicited traffic: new flows and
  // echo requests (a ping with replies is "established" to conntrack).
  for (Family f : {Family::v4, Family::v6}) {
    int len = f == Family::v4 ? lp.per_destination.v4_prefix_length : lp.per_destination.v6_prefix_length;
    std::string what = "/" + std::to_string(len);
    auto meter = [&](const std::string& set, Limit lim, std::vector<Match> ms, const std::string& why) {
      ms.insert(ms.begin(), nfproto(f));
      r.push_back(rule(std::move(ms), {MeterUpdate{set, daddr(f), len, lim, true}, go_to(drop_chain("dest-rate"))},
                       lv + ": " + why));
    };
    Match echo = f == Family::v4 ? eq(Field::icmp_type, u8_bytes(8)) : eq(Field::icmpv6_type, u8_bytes(128));
    Match echo_proto = l4proto(static_cast<std::uint8_t>(f == Family::v4 ? int{IPPROTO_ICMP} : int{IPPROTO_ICMPV6}));
    if (lp.per_destination.packets_per_second > 0) {
      Limit lim{lp.per_destination.packets_per_second, false, lp.per_destination.packets_per_second, true};
      std::string set = std::string("dst_pps") + sfx(f);
      meter(set, lim, {ct_state(kCtNew)},
            "at most " + std::to_string(lim.rate) + " new flows/s per VM and destination " + what);
      meter(set, lim, {ct_state(kCtEstablished), echo_proto, echo}, "pings count against the same meter");
    }
    if (lp.per_destination.bits_per_second > 0) {
      std::uint64_t bytes = std::max<std::uint64_t>(1, lp.per_destination.bits_per_second / 8);
      Limit lim{bytes, true, static_cast<std::uint32_t>(std::max<std::uint64_t>(bytes, 1500)), true};
      std::string set = std::string("dst_bps") + sfx(f);
      meter(set, lim, {ct_state(kCtNew)},
            "at most " + trust::format_bit_rate(lp.per_destination.bits_per_second) +
                " of unsolicited traffic per VM and destination " + what);
      meter(set, lim, {ct_state(kCtEstablished), echo_proto, echo}, "pings count against the same meter");
    }
  }
  // TCP SYN rate of each VM: one meter element per VM.
  if (lp.tcp_syn_per_second > 0) {
    r.push_back(rule({l4proto(IPPROTO_TCP), masked(Field::tcp_flags, u8_bytes(kTcpSyn | kTcpAck), u8_bytes(kTcpSyn))},
                     {MeterUpdate{"syn_rate", Field::iifname, 0,
                                  Limit{lp.tcp_syn_per_second, false, lp.tcp_syn_per_second * 2, true}, false},
                      go_to(drop_chain("syn-rate"))},
                     lv + ": at most " + std::to_string(lp.tcp_syn_per_second) + " TCP SYN/s per VM"));
  }
  // Continuations of allowed flows; SYN-only connections send no data.
  r.push_back(
      rule({ct_state(kCtEstablished | kCtRelated), masked(Field::ct_mark, host32_bytes(kSynOnlyMark), host32_bytes(0))},
           {accept()}, lv + ": established and related flows"));
  r.push_back(
      rule({l4proto(IPPROTO_TCP), masked(Field::ct_mark, host32_bytes(kSynOnlyMark), host32_bytes(kSynOnlyMark)),
            masked(Field::tcp_flags, u8_bytes(kTcpRst), u8_bytes(kTcpRst))},
           {accept()}, lv + ": a SYN-only probe may reset its connection"));
  // What the level allows beyond that.
  switch (level) {
    case TrustLevel::trusted:
      r.push_back(
          rule({}, {CtMarkOr{kPlainFlowMark}, accept()}, "trusted: any destination (logged, under the guardrails)"));
      break;
    case TrustLevel::semi_trusted: {
      for (Family f : {Family::v4, Family::v6}) {
        for (const auto& res : lp.dns.resolvers) {
          if (res.family != f) continue;
          for (std::uint8_t proto : {static_cast<std::uint8_t>(IPPROTO_UDP), static_cast<std::uint8_t>(IPPROTO_TCP)}) {
            r.push_back(rule(
                {nfproto(f), eq(daddr(f), address_bytes(res)), l4proto(proto), eq(Field::th_dport, be16_bytes(53))},
                {CtMarkOr{kPlainFlowMark}, accept()}, lv + ": DNS resolver " + res.to_string()));
          }
        }
      }
      for (std::uint8_t t : lp.icmp_types) {
        r.push_back(rule({l4proto(IPPROTO_ICMP), eq(Field::icmp_type, u8_bytes(t))}, {accept()},
                         lv + ": ICMP " + trust::icmp_type_name(trust::IcmpFamily::v4, t)));
      }
      for (std::uint8_t t : lp.icmpv6_types) {
        r.push_back(rule({l4proto(IPPROTO_ICMPV6), eq(Field::icmpv6_type, u8_bytes(t))}, {accept()},
                         lv + ": ICMPv6 " + trust::icmp_type_name(trust::IcmpFamily::v6, t)));
      }
      for (const auto& pr : lp.tcp_syn_only_ports) {
        r.push_back(rule({l4proto(IPPROTO_TCP), ct_state(kCtNew),
                          masked(Field::tcp_flags, u8_bytes(kTcpSyn | kTcpAck | kTcpFin | kTcpRst), u8_bytes(kTcpSyn)),
                          port_range(pr)},
                         {CtMarkMap{{Field::iifname}, "vm_mark_synonly"}, accept()},
                         lv + ": SYN-only to any destination, port " + pr.to_string()));
      }
      for (std::uint8_t p : lp.ip_protocols) {
        r.push_back(rule({l4proto(p)}, {accept()}, lv + ": IP protocol " + std::to_string(p)));
      }
      r.push_back(drop_rule({}, "not-allowed", "semi-trusted: everything else"));
      break;
    }
    case TrustLevel::untrusted:
      // Marked in prerouting only while its tunnel is up, and accepted only
      // when routing sent it into its own tunnel device: every guardrail
      // above has already been applied.
      r.push_back(rule({in_set({Field::iifname, Field::oifname, Field::meta_mark}, "tunnel_out")},
                       {CtMarkOr{kPlainFlowMark}, accept()},
                       "untrusted: everything else into its own GRE tunnel to its client"));
      r.push_back(drop_rule({}, "not-allowed", "untrusted: only its client and authorized nodes"));
      break;
  }
  return c;
}

Chain Compiler::in_chain() const {
  Chain c{"vm_in", std::nullopt, {}};
  auto& r = c.rules;
  // Its HTB class on the tap: the client's traffic, or everything else.
  if (opt_.shaping) {
    r.push_back(rule({}, {PriorityMap{{Field::oifname}, "vm_class"}}, "shape as everything else"));
  }
  if (opt_.shaping) {
    for (Family f : {Family::v4, Family::v6}) {
      for (bool range : {false, true}) {
        r.push_back(rule({nfproto(f)}, {PriorityMap{client_fields(Field::oifname, saddr(f)), client_map(f, range)}},
                         "shape as its client"));
      }
    }
  }
  r.push_back(rule({ct_state(kCtEstablished | kCtRelated)}, {accept()}, "replies and related"));
  for (Family f : {Family::v4, Family::v6}) {
    for (bool range : {false, true}) {
      r.push_back(rule({nfproto(f), in_set(client_fields(Field::oifname, saddr(f)), client_map(f, range))}, {accept()},
                       "its own client may connect"));
    }
  }
  r.push_back(
      rule({in_set({Field::oifname}, level_set(TrustLevel::trusted))}, {accept()}, "trusted: reachable from anywhere"));
  r.push_back(drop_rule({}, "inbound", "no new inbound connections except from its client"));
  return c;
}

Chain Compiler::host_chain() const {
  Chain c{"vm_host", std::nullopt, {}};
  auto& r = c.rules;
  r.push_back(drop_rule({in_set({Field::iifname, Field::ether_saddr}, "vm_mac", true)}, "spoof-mac",
                        "drop frames to the host not from the VM's own MAC"));
  r.push_back(drop_rule({nfproto(Family::v4), in_set({Field::iifname}, "vm_ipv4", true)}, "family",
                        "drop IPv4 from a VM that has no IPv4 address"));
  r.push_back(drop_rule({nfproto(Family::v4), in_set({Field::iifname, Field::ip_saddr}, "vm_addr_v4", true)},
                        "spoof-ip", "drop packets to the host not from the VM's own address"));
  r.push_back(drop_rule({nfproto(Family::v6), in_set({Field::iifname}, "vm_ipv6", true)}, "family",
                        "drop IPv6 from a VM that has no IPv6 address"));
  Prefix link_local = *Prefix::parse("fe80::/10");
  // Neighbour discovery uses link-local sources, DAD the unspecified one.
  r.push_back(drop_rule(
      {nfproto(Family::v6), in_set({Field::iifname, Field::ip6_saddr}, "vm_addr_v6", true),
       in_prefix(Field::ip6_saddr, link_local, true), neq(Field::ip6_saddr, address_bytes(*IpAddress::parse("::")))},
      "spoof-ip", "drop packets to the host not from the VM's own address or link-local"));
  // A neighbour advertisement may only claim the VM's own addresses.
  r.push_back(drop_rule({l4proto(IPPROTO_ICMPV6), eq(Field::icmpv6_type, u8_bytes(136)),
                         in_set({Field::iifname, Field::icmpv6_nd_target}, "vm_nd_v6", true),
                         in_prefix(Field::icmpv6_nd_target, link_local, true)},
                        "nd-spoof", "drop neighbour advertisements for addresses not the VM's"));
  r.push_back(rule({ct_state(kCtEstablished | kCtRelated)}, {accept()}, "replies and ICMP errors"));
  for (std::uint8_t t : {133, 135, 136}) {  // router solicitation, neighbour solicitation/advertisement
    r.push_back(rule({l4proto(IPPROTO_ICMPV6), eq(Field::icmpv6_type, u8_bytes(t))}, {accept()},
                     "neighbour discovery " + trust::icmp_type_name(trust::IcmpFamily::v6, t)));
  }
  r.push_back(rule({nfproto(Family::v4), in_set({Field::iifname, Field::ip_daddr}, "vm_gateway_v4"),
                    l4proto(IPPROTO_ICMP), eq(Field::icmp_type, u8_bytes(8))},
                   {accept()}, "ping its gateway"));
  r.push_back(rule({nfproto(Family::v6), in_set({Field::iifname, Field::ip6_daddr}, "vm_gateway_v6"),
                    l4proto(IPPROTO_ICMPV6), eq(Field::icmpv6_type, u8_bytes(128))},
                   {accept()}, "ping its gateway"));
  for (TrustLevel l : kLevels) {
    if (!policy_.level(l).dns.gateway_resolver) continue;
    for (Family f : {Family::v4, Family::v6}) {
      for (std::uint8_t proto : {static_cast<std::uint8_t>(IPPROTO_UDP), static_cast<std::uint8_t>(IPPROTO_TCP)}) {
        r.push_back(rule({in_set({Field::iifname}, level_set(l)), nfproto(f),
                          in_set({Field::iifname, daddr(f)}, std::string("vm_gateway") + sfx(f)), l4proto(proto),
                          eq(Field::th_dport, be16_bytes(53))},
                         {accept()}, std::string(trust::to_string(l)) + ": DNS on its gateway"));
      }
    }
  }
  r.push_back(drop_rule({}, "host", "nothing else reaches the host"));
  return c;
}

// Routing happens before forward: tunnel-bound packets are marked here, for
// `ip rule fwmark`, by the chain of the VM's tunnel (docs/tunnel.md). Only
// while some VM has a tunnel: otherwise the hook would cost every packet
// of every VM (and every reply) a chain for nothing.
Chain Compiler::prerouting_chain() const {
  // (The name prefix first: a packet from the uplink costs a compare.)
  return Chain{kPreroutingChain,
               BaseHook{BaseHook::Hook::prerouting, opt_.priority, false},
               {rule({ifname_wildcard(Field::iifname, opt_.iface_prefix), vmap(Field::iifname, "vm_pre")}, {},
                     "dispatch packets of a VM with a tunnel to its tunnel chain")}};
}

std::vector<Chain> Compiler::shared_chains() const {
  std::vector<Chain> chains;
  Chain forward{"forward", BaseHook{BaseHook::Hook::forward, opt_.priority, false}, {}};
  // Every packet from a VM's tap (or a tunnel device) is judged in
  // from_vm; the rules below it see only packets from elsewhere, and those
  // from a tunnel that from_vm lets through (to their own VM).
  const Match from_tap = ifname_wildcard(Field::iifname, opt_.iface_prefix);
  const Match to_tap = ifname_wildcard(Field::oifname, opt_.iface_prefix);
  forward.rules.push_back(rule({from_tap}, {Verdict{Verdict::Kind::jump, "from_vm"}}, "packets from a VM or a tunnel"));
  // Replies of a VM's plain flows (docs/enforcement.md, the short path): one
  // lookup, that the flow is the destination VM's, established, and this
  // packet in its reply direction. Packets from a VM's tap never get here
  // (a reply sent by another VM meets that VM's anti-spoofing in from_vm).
  forward.rules.push_back(admit_by_lookup(
      opt_.shaping, {}, in_set({Field::oifname, Field::ct_mark, Field::ct_state, Field::ct_direction}, "vm_plain_in"),
      accept(), "replies of a VM's plain flows", "replies of a VM's plain flows, in its class"));
  forward.rules.push_back(rule({to_tap, in_set({Field::oifname}, "vms")}, {go_to("vm_in")}, "packets to a VM"));
  forward.rules.push_back(rule({to_tap}, {Counter{}, Log{opt_.log_group, "sg? no-chain "}, drop()},
                               "fail closed: a VM interface without rules receives nothing"));
  Chain from_vm{"from_vm", std::nullopt, {}};
  // The short path (docs/enforcement.md): a packet of an established flow
  // that its VM's level accepted as plain (ct mark = the VM's id | bit 30),
  // from that VM's own MAC, in the flow's own direction. One lookup checks
  // the MAC, the state, the direction and that the flow is this VM's (its
  // first packet passed the address check, and conntrack matched this one
  // to its tuple) and picks the VM's class; what still applies to such a
  // packet is in vm_out_plain. A packet with IPv4 options or an IPv6
  // routing header takes the long way, where it is dropped.
  // TCP and UDP only: a level's meters also count established ICMP echo
  // requests (a ping flood keeps one flow), so those take the long way.
  const std::vector<Field> plain_key = {Field::iifname, Field::ether_saddr, Field::ct_mark, Field::ct_state,
                                        Field::ct_direction};
  // IPv4 without options is one compare of the header's first byte
  // (version 4, length 5 words: 0x45), which no IPv6 packet has, so it
  // needs no `meta nfproto` before it: two expressions instead of five.
  for (Family f : {Family::v4, Family::v6}) {
    for (std::uint8_t proto : {static_cast<std::uint8_t>(IPPROTO_TCP), static_cast<std::uint8_t>(IPPROTO_UDP)}) {
      std::vector<Match> m = {f == Family::v4 ? eq(Field::nh_first_byte, u8_bytes(0x45)) : nfproto(f), l4proto(proto)};
      if (f == Family::v6) m.push_back(eq(Field::ip6_exthdr_routing, u8_bytes(0)));
      from_vm.rules.push_back(admit_by_lookup(opt_.shaping, m, in_set(plain_key, "vm_plain"), go_to("vm_out_plain"),
                                              "established plain flows of a VM: the short path",
                                              "established plain flows of a VM, in its class: the short path"));
    }
  }
  // A client's tunnel carries only replies and its own connections to its
  // own VM: nothing from a tunnel goes anywhere else (no relaying through
  // the host), and a tunnel device without rules passes nothing.
  from_vm.rules.push_back(rule({ifname_wildcard(Field::iifname, opt_.iface_prefix + "t"),
                                in_set({Field::iifname, Field::oifname}, "tunnel_ok", true)},
                               {Counter{}, Log{opt_.log_group, "sg? tunnel-escape "}, drop()},
                               "a tunnel delivers only to its own VM"));
  // From a VM with its own MAC (one lookup for both); from a VM's tap with
  // another MAC: dropped.
  from_vm.rules.push_back(
      rule({in_set({Field::iifname, Field::ether_saddr}, "vm_mac")}, {go_to("vm_out")}, "packets from a VM"));
  from_vm.rules.push_back(rule({in_set({Field::iifname}, "vms")}, {go_to(drop_chain("spoof-mac"))},
                               "drop frames from a VM not from its own MAC"));
  // Any other tap, before packets are dispatched by their destination: a
  // VM's inbound chain admits its client's address, which a tap without
  // rules could claim. (Tunnel devices are under the same prefix; the
  // tunnel rule above lets out of them only what goes to their own VM, and
  // that returns to forward.)
  Match not_tunnel = ifname_wildcard(Field::iifname, opt_.iface_prefix + "t");
  not_tunnel.op = Match::Op::not_prefix;
  from_vm.rules.push_back(rule({not_tunnel}, {Counter{}, Log{opt_.log_group, "sg? no-chain "}, drop()},
                               "fail closed: a VM interface without rules sends nothing"));
  Chain input{"input", BaseHook{BaseHook::Hook::input, opt_.priority, false}, {}};
  input.rules.push_back(rule({in_set({Field::iifname}, "vms")}, {go_to("vm_host")}, "packets from a VM to the host"));
  input.rules.push_back(rule({ifname_wildcard(Field::iifname, opt_.iface_prefix)},
                             {Counter{}, Log{opt_.log_group, "sg? no-chain "}, drop()},
                             "fail closed: a VM interface without rules reaches nothing on the host"));
  chains = {forward, input, from_vm, out_chain()};
  // The short path of an established plain flow: what acts on every packet
  // (the quota), then accept. Its class is the VM's default one, set on the
  // way here. The guardrails were checked on the flow's first packet; when
  // they change, the daemon ends the flows they now forbid (Enforcer::
  // end_flows_now_forbidden), whose next packet then meets vm_out again.
  Chain plain{"vm_out_plain", std::nullopt, {}};
  plain.rules.push_back(quota_rule());
  plain.rules.push_back(rule({}, {accept()}, "an established plain flow"));
  chains.push_back(std::move(plain));
  // Reached only by packets from a VM that are not from its own address.
  for (Family f : {Family::v4, Family::v6}) {
    const std::string fam = f == Family::v4 ? "IPv4" : "IPv6";
    Chain no{std::string("not_own") + sfx(f), std::nullopt, {}};
    no.rules.push_back(drop_rule({in_set({Field::iifname}, f == Family::v4 ? "vm_ipv4" : "vm_ipv6", true)}, "family",
                                 "drop " + fam + " from a VM that has no " + fam + " address"));
    no.rules.push_back(drop_rule({}, "spoof-ip", "drop " + fam + " packets not from the VM's own address"));
    chains.push_back(std::move(no));
  }
  for (TrustLevel l : kLevels) chains.push_back(level_chain(l));
  chains.push_back(in_chain());
  chains.push_back(host_chain());
  // Each drop: counted for its VM (a full counter set stops counting, not
  // dropping: the count is a rule of its own), then logged and dropped.
  for (const auto& d : kDropReasons) {
    Chain dc{drop_chain(d.reason), std::nullopt, {}};
    dc.rules.push_back(rule({}, {CountUpdate{"drops", d.key, d.reason}}, "count it for its VM"));
    dc.rules.push_back(rule({}, {Counter{}, Log{opt_.log_group, std::string("sg? ") + d.reason + " "}, drop()},
                            std::string("drop: ") + d.text));
    chains.push_back(std::move(dc));
  }
  return chains;
}

Compiler::VmParts Compiler::vm_parts(const VmNet& vm, const std::vector<Hole>& holes, std::int64_t now) const {
  VmParts p;
  const std::string& n = vm.name;
  const trust::LevelPolicy& lp = policy_.level(vm.level);
  auto key = [&](std::vector<SetElement::Part> more = {}) {
    SetElement e;
    e.key.push_back({ifname_bytes(n), {}});
    for (auto& part : more) e.key.push_back(std::move(part));
    return e;
  };
  auto add = [&](const std::string& set, SetElement e) { p.elements.emplace_back(set, std::move(e)); };
  add("vm_mac", key({{mac_bytes(vm.mac), {}}}));
  for (Family f : {Family::v4, Family::v6}) {
    const auto& own = f == Family::v4 ? vm.v4 : vm.v6;
    if (own && policy_.owner.allows(f)) {
      add(f == Family::v4 ? "vm_ipv4" : "vm_ipv6", key());
      add(std::string("vm_addr") + sfx(f), key({{address_bytes(*own), {}}}));
      if (f == Family::v6) add("vm_nd_v6", key({{address_bytes(*own), {}}}));
    }
    const auto& gw = f == Family::v4 ? vm.gateway4 : vm.gateway6;
    if (gw) add(std::string("vm_gateway") + sfx(f), key({{address_bytes(*gw), {}}}));
    for (const auto& c : minimal(of_family(vm.client, f))) {
      const bool range = c.length < c.address.bit_length();
      SetElement e = key({prefix_element(c).key[0]});
      if (opt_.shaping) e.data = host32_bytes(tc_handle(opt_.tc_major, vm.id, FlowClass::client));
      add(client_map(f, range), std::move(e));
    }
  }
  SetElement mark = key();
  mark.data = host32_bytes(static_cast<std::uint32_t>(vm.id));
  add("vm_mark", std::move(mark));
  if (vm.level == TrustLevel::semi_trusted) {
    SetElement syn = key();
    syn.data = host32_bytes(static_cast<std::uint32_t>(vm.id) | kSynOnlyMark);
    add("vm_mark_synonly", std::move(syn));
  }
  const Bytes plain_mark = host32_bytes(static_cast<std::uint32_t>(vm.id) | kPlainFlowMark);
  const Bytes established = host32_bytes(kCtEstablished);
  SetElement plain = key({{mac_bytes(vm.mac), {}}, {plain_mark, {}}, {established, {}}, {u8_bytes(0), {}}});
  SetElement plain_in = key({{plain_mark, {}}, {established, {}}, {u8_bytes(1), {}}});
  if (opt_.shaping) {
    SetElement cls = key();
    cls.data = host32_bytes(tc_handle(opt_.tc_major, vm.id, FlowClass::other));
    plain.data = cls.data;
    plain_in.data = cls.data;
    add("vm_class", std::move(cls));
  }
  add("vm_plain", std::move(plain));
  add("vm_plain_in", std::move(plain_in));
  if (lp.daily_quota_bytes > 0) {
    p.quotas.push_back(QuotaObject{"vm_" + n + "_quota", lp.daily_quota_bytes, 0});
    SetElement q = key();
    q.object = "vm_" + n + "_quota";
    add("vm_quota", std::move(q));
  }
  add(level_set(vm.level), key());
  for (const auto& hole : holes) {
    if (hole.vm != n) continue;
    if (auto h = hole_element(vm, hole, now)) p.hole_elements.push_back(std::move(*h));
  }
  if (vm.v4) {
    SetElement e;
    e.key = {{ifname_bytes(n), {}}, {address_bytes(*vm.v4), {}}, {mac_bytes(vm.mac), {}}};
    p.arp_elements.push_back(std::move(e));
  }
  // Its tunnel's chain and elements, while it has one up (docs/tunnel.md).
  if (opt_.tunnel_of && vm.level == TrustLevel::untrusted) {
    if (auto tunnel = opt_.tunnel_of(vm.name)) add_tunnel_parts(p, vm, *tunnel);
  }
  // Last: membership in "vms" is what sends its packets through the chains.
  SetElement member = key();
  member.comment = "VM " + std::to_string(vm.id) + ", " + std::string(trust::to_string(vm.level));
  add("vms", std::move(member));
  return p;
}

Ruleset Compiler::compile(const std::vector<VmNet>& vms, const std::vector<Hole>& holes, std::int64_t now) const {
  Table t;
  t.family = TableFamily::inet;
  t.name = opt_.table;
  t.sets = shared_sets();
  t.chains = shared_chains();

  Table arp;
  arp.family = TableFamily::arp;
  arp.name = opt_.table;
  Set ok = make_set("arp_ok", {KeyType::ifname, KeyType::ipv4_addr, KeyType::ether_addr});
  Chain arp_in{"input", BaseHook{BaseHook::Hook::input, opt_.priority, false}, {}};
  arp_in.rules.push_back(rule({ifname_wildcard(Field::iifname, opt_.iface_prefix),
                               in_set({Field::iifname, Field::arp_sip, Field::arp_sha}, "arp_ok", true)},
                              {Counter{}, Log{opt_.log_group, "sg? arp-spoof "}, drop()},
                              "ARP from a VM only for its own address and MAC"));

  // Holes grouped by VM and the shared sets indexed once, so compiling
  // grows linearly with VMs and holes (a restart reconciles 1,000 VMs).
  std::map<std::string, std::vector<Hole>> holes_by_vm;
  for (const auto& h : holes) holes_by_vm[h.vm].push_back(h);
  std::map<std::string, Set*> by_name;
  for (auto& s : t.sets) by_name[s.name] = &s;
  const std::vector<Hole> no_holes;
  for (const auto& vm : vms) {
    auto hv = holes_by_vm.find(vm.name);
    VmParts p = vm_parts(vm, hv == holes_by_vm.end() ? no_holes : hv->second, now);
    t.quotas.insert(t.quotas.end(), p.quotas.begin(), p.quotas.end());
    t.chains.insert(t.chains.end(), std::make_move_iterator(p.chains.begin()), std::make_move_iterator(p.chains.end()));
    for (auto* list : {&p.elements, &p.hole_elements}) {
      for (auto& [set, e] : *list) by_name.at(set)->elements.push_back(std::move(e));
    }
    ok.elements.insert(ok.elements.end(), p.arp_elements.begin(), p.arp_elements.end());
  }
  if (!by_name.at("vm_pre")->elements.empty()) t.chains.insert(t.chains.begin(), prerouting_chain());
  arp.sets = {ok};
  arp.chains = {arp_in};
  return Ruleset{{t, arp}};
}

Plan Compiler::plan_add_vm(const VmNet& vm, const std::vector<Hole>& holes, std::int64_t now) const {
  return plan_add_parts(vm_parts(vm, holes, now));
}

Plan Compiler::plan_remove_vm(const VmNet& vm, const std::vector<Hole>& holes) const {
  return plan_remove_parts(vm_parts(vm, holes, 0));
}

namespace {

// One op per set, in the order the sets first appear; each op carries the
// set's declaration so the backend need not ask the kernel for it.
void element_ops(Plan& plan, const std::string& table, const std::vector<Set>& decls,
                 const std::vector<std::pair<std::string, SetElement>>& elements, Op::Kind kind) {
  std::vector<std::string> order;
  std::map<std::string, std::vector<SetElement>> by_set;
  for (const auto& [set, e] : elements) {
    auto& list = by_set[set];
    if (list.empty()) order.push_back(set);
    list.push_back(e);
  }
  for (const auto& name : order) {
    Op o;
    o.kind = kind;
    o.table = table;
    o.name = name;
    auto it = std::find_if(decls.begin(), decls.end(), [&](const Set& s) { return s.name == name; });
    if (it != decls.end()) {
      o.set = *it;
      o.set.elements.clear();
    }
    o.elements = std::move(by_set[name]);
    plan.ops.push_back(std::move(o));
  }
}

}  // namespace

namespace {

Op table_op(Op::Kind kind, const std::string& table, const std::string& name, TableFamily family = TableFamily::inet) {
  Op o;
  o.kind = kind;
  o.family = family;
  o.table = table;
  o.name = name;
  return o;
}

void arp_element_ops(Plan& plan, const std::string& table, const std::vector<SetElement>& elements, Op::Kind kind) {
  for (const auto& e : elements) {
    Op o = table_op(kind, table, "arp_ok", TableFamily::arp);
    o.set = make_set("arp_ok", {KeyType::ifname, KeyType::ipv4_addr, KeyType::ether_addr});
    o.elements = {e};
    plan.ops.push_back(std::move(o));
  }
}

// The elements that send a VM's packets into the chains ("vms", and the
// tunnel dispatch "vm_pre"), apart from the rest.
using NamedElements = std::vector<std::pair<std::string, SetElement>>;
std::pair<NamedElements, NamedElements> split_dispatch(const NamedElements& all) {
  std::pair<NamedElements, NamedElements> out;  // {dispatch, rest}
  for (const auto& el : all) (el.first == "vms" || el.first == "vm_pre" ? out.first : out.second).push_back(el);
  return out;
}

}  // namespace

Plan Compiler::plan_add_parts(const VmParts& p) const {
  Plan plan;
  // A tunnel's dispatch needs the prerouting chain.
  if (std::any_of(p.elements.begin(), p.elements.end(), [](const auto& el) { return el.first == "vm_pre"; })) {
    plan = plan_prerouting_on();
  }
  const std::vector<Set> decls = vm_sets();
  for (const auto& q : p.quotas) {
    Op o = table_op(Op::Kind::add_quota, opt_.table, q.name);
    o.quota = q;
    plan.ops.push_back(std::move(o));
  }
  for (const auto& c : p.chains) {
    Op o = table_op(Op::Kind::add_chain, opt_.table, c.name);
    o.chain = c;
    plan.ops.push_back(std::move(o));
  }
  element_ops(plan, opt_.table, decls, p.hole_elements, Op::Kind::add_elements);
  // Dispatch last: everything the chains look up for the VM is in place
  // before any packet can use it.
  const auto [dispatch, rest] = split_dispatch(p.elements);
  element_ops(plan, opt_.table, decls, rest, Op::Kind::add_elements);
  arp_element_ops(plan, opt_.table, p.arp_elements, Op::Kind::add_elements);
  element_ops(plan, opt_.table, decls, dispatch, Op::Kind::add_elements);
  return plan;
}

Plan Compiler::plan_remove_parts(const VmParts& p) const {
  Plan plan;
  const std::vector<Set> decls = vm_sets();
  // Dispatch first: from then on the catch-all drops the VM's packets.
  const auto [dispatch, rest] = split_dispatch(p.elements);
  element_ops(plan, opt_.table, decls, dispatch, Op::Kind::delete_elements);
  arp_element_ops(plan, opt_.table, p.arp_elements, Op::Kind::delete_elements);
  element_ops(plan, opt_.table, decls, rest, Op::Kind::delete_elements);
  // Holes the kernel already timed out are gone: no error for those.
  element_ops(plan, opt_.table, decls, p.hole_elements, Op::Kind::destroy_elements);
  for (const auto& c : p.chains) {
    plan.ops.push_back(table_op(Op::Kind::flush_chain, opt_.table, c.name));
    plan.ops.push_back(table_op(Op::Kind::delete_chain, opt_.table, c.name));
  }
  // After the vm_quota element that names it.
  for (const auto& q : p.quotas) plan.ops.push_back(table_op(Op::Kind::delete_quota, opt_.table, q.name));
  return plan;
}

Plan Compiler::plan_add_hole(const VmNet& vm, const Hole& hole, std::int64_t now) const {
  Plan plan;
  if (auto h = hole_element(vm, hole, now)) element_ops(plan, opt_.table, vm_sets(), {*h}, Op::Kind::add_elements);
  return plan;
}

Plan Compiler::plan_remove_hole(const VmNet& vm, const Hole& hole, std::int64_t now) const {
  Plan plan = plan_add_hole(vm, hole, now);
  for (auto& o : plan.ops) {
    o.kind = Op::Kind::delete_elements;
    for (auto& e : o.elements) e.timeout_ms.reset();
  }
  return plan;
}

Chain Compiler::tunnel_chain(const VmNet& vm, const TunnelNet& tunnel) const {
  const std::string& n = vm.name;
  Chain c;
  c.name = "vm_" + n + "_pre";
  auto& r = c.rules;
  // Both directions of a TCP handshake carry an MSS that fits the tunnel, so
  // no segment needs fragmenting or a PMTU probe that may never come back.
  auto clamp = [&](std::vector<Match> ms, const std::string& why) {
    for (Family f : {Family::v4, Family::v6}) {
      std::vector<Match> x = ms;
      x.push_back(nfproto(f));
      x.push_back(masked(Field::tcp_flags, u8_bytes(kTcpSyn | kTcpRst), u8_bytes(kTcpSyn)));
      auto mss = static_cast<std::uint16_t>(tunnel.mtu - (f == Family::v4 ? 40 : 60));
      r.push_back(rule(std::move(x), {MssSet{mss}}, n + ": " + why + " (" + (f == Family::v4 ? "IPv4" : "IPv6") + ")"));
    }
  };
  Match from_tunnel = eq(Field::iifname, ifname_bytes(tunnel.device));
  clamp({from_tunnel}, "clamp TCP MSS from the tunnel to its MTU " + std::to_string(tunnel.mtu));
  r.push_back(rule({from_tunnel}, {ret()}, n + ": from its tunnel: routed normally"));
  for (Family f : {Family::v4, Family::v6}) {
    for (const auto& p : minimal(of_family(vm.client, f))) {
      r.push_back(
          rule({nfproto(f), addr_match(daddr(f), p)}, {ret()}, n + ": its own client: direct (" + p.to_string() + ")"));
    }
  }
  for (Family f : {Family::v4, Family::v6}) {
    for (const HoleMap& m : hole_maps(f)) {
      r.push_back(rule({nfproto(f), hole_lookup(m)}, {ret()}, n + ": authorized nodes: direct"));
    }
  }
  r.push_back(rule({}, {MarkSet{tunnel_mark(vm.id)}},
                   n + ": everything else is routed into " + tunnel.device + " (ip rule fwmark)"));
  clamp({}, "clamp TCP MSS into the tunnel to its MTU " + std::to_string(tunnel.mtu));
  return c;
}

void Compiler::add_tunnel_parts(VmParts& p, const VmNet& vm, const TunnelNet& tunnel) const {
  p.chains.push_back(tunnel_chain(vm, tunnel));
  auto map_elem = [&](const std::string& ifname) {
    SetElement e;
    e.key.push_back({ifname_bytes(ifname), {}});
    e.verdict_chain = "vm_" + vm.name + "_pre";
    return e;
  };
  p.elements.emplace_back("vm_pre", map_elem(vm.name));
  p.elements.emplace_back("vm_pre", map_elem(tunnel.device));
  SetElement ok;
  ok.key = {{ifname_bytes(tunnel.device), {}}, {ifname_bytes(vm.name), {}}};
  p.elements.emplace_back("tunnel_ok", std::move(ok));
  SetElement out;
  out.key = {{ifname_bytes(vm.name), {}}, {ifname_bytes(tunnel.device), {}}, {host32_bytes(tunnel_mark(vm.id)), {}}};
  p.elements.emplace_back("tunnel_out", std::move(out));
}

// The tunnel's parts alone: its chain, then its dispatch and guard elements
// (added last, removed first, as for a VM).
Plan Compiler::plan_tunnel_up(const VmNet& vm, const TunnelNet& tunnel) const {
  VmParts p;
  add_tunnel_parts(p, vm, tunnel);
  return plan_add_parts(p);
}

Plan Compiler::plan_tunnel_down(const VmNet& vm, const TunnelNet& tunnel) const {
  VmParts p;
  add_tunnel_parts(p, vm, tunnel);
  return plan_remove_parts(p);
}

Plan Compiler::plan_prerouting_on() const {
  Plan plan;
  Chain chain = prerouting_chain();
  Op r = table_op(Op::Kind::add_rule, opt_.table, chain.name);
  r.rule = std::move(chain.rules.at(0));
  chain.rules.clear();
  Op add = table_op(Op::Kind::add_chain, opt_.table, chain.name);
  add.chain = std::move(chain);
  plan.ops.push_back(std::move(add));
  // The chain may be there already (another tunnel): its one rule afresh.
  plan.ops.push_back(table_op(Op::Kind::flush_chain, opt_.table, r.name));
  plan.ops.push_back(std::move(r));
  return plan;
}

Plan Compiler::plan_prerouting_off() const {
  Plan plan;
  plan.ops.push_back(table_op(Op::Kind::flush_chain, opt_.table, kPreroutingChain));
  plan.ops.push_back(table_op(Op::Kind::delete_chain, opt_.table, kPreroutingChain));
  return plan;
}

Plan Compiler::plan_update_block_list() const {
  Plan plan;
  for (const auto& s : policy_sets()) {
    if (s.name.rfind("block", 0) != 0) continue;
    Op flush;
    flush.kind = Op::Kind::flush_set;
    flush.table = opt_.table;
    flush.name = s.name;
    plan.ops.push_back(flush);
    if (s.elements.empty()) continue;
    Op add;
    add.kind = Op::Kind::add_elements;
    add.table = opt_.table;
    add.name = s.name;
    add.set = s;
    add.set.elements.clear();
    add.elements = s.elements;
    plan.ops.push_back(std::move(add));
  }
  return plan;
}

std::string Compiler::vm_text(const VmNet& vm, const std::vector<Hole>& holes, std::int64_t now) const {
  VmParts p = vm_parts(vm, holes, now);
  Table t;
  t.name = opt_.table;
  t.quotas = p.quotas;
  // Its elements, in the sets they belong to.
  for (auto s : vm_sets()) {
    s.elements.clear();
    for (const auto* list : {&p.elements, &p.hole_elements}) {
      for (const auto& [set, e] : *list) {
        if (set == s.name) s.elements.push_back(e);
      }
    }
    if (!s.elements.empty()) t.sets.push_back(std::move(s));
  }
  // The chains its packets go through.
  for (auto& c : shared_chains()) {
    if (c.name == "from_vm" || c.name == "vm_out" || c.name == "vm_out_plain" || c.name == level_chain_name(vm.level) ||
        c.name == "vm_in" || c.name == "vm_host") {
      t.chains.push_back(std::move(c));
    }
  }
  t.chains.insert(t.chains.end(), p.chains.begin(), p.chains.end());
  return to_nft_text(t);
}

}  // namespace sg::netpolicy
