#include "netpolicy/compile.h"

#include <netinet/in.h>

#include <algorithm>
#include <map>

namespace sg::netpolicy {
namespace {

constexpr std::uint8_t kNfprotoIpv4 = 2;
constexpr std::uint8_t kNfprotoIpv6 = 10;

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

Rule Compiler::drop_rule(const VmNet& vm, std::vector<Match> matches, const std::string& reason,
                         const std::string& why) const {
  return rule(std::move(matches), {Counter{}, Log{opt_.log_group, vm.name + " " + reason + " "}, drop()},
              vm.name + ": " + why);
}

std::vector<Set> Compiler::shared_sets() const {
  const auto& g = policy_.guardrails;
  std::vector<Set> sets;
  for (Family f : {Family::v4, Family::v6}) {
    sets.push_back(prefix_set(std::string("reserved") + sfx(f), f, g.reserved));
    sets.push_back(prefix_set(std::string("allow_reserved") + sfx(f), f, g.allow_reserved));
    sets.push_back(prefix_set(std::string("block") + sfx(f), f, g.block));
  }
  Set ports;
  ports.name = "closed_ports";
  ports.key = {KeyType::inet_service};
  ports.interval = true;
  for (const auto& r : g.closed_ports) ports.elements.push_back(port_range_element(r));
  sets.push_back(std::move(ports));

  // Semi-trusted allowlists: destination prefix . port range.
  const auto& semi = policy_.level(TrustLevel::semi_trusted);
  for (Family f : {Family::v4, Family::v6}) {
    for (const auto& [proto, list] : {std::pair{"tcp", &semi.tcp}, std::pair{"udp", &semi.udp}}) {
      Set s;
      s.name = std::string("semi_") + proto + sfx(f);
      s.key = {f == Family::v4 ? KeyType::ipv4_addr : KeyType::ipv6_addr, KeyType::inet_service};
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
  // Per-destination meters, shared by every VM and keyed by its interface:
  // one set each instead of four per VM (the kernel finds a table's sets by
  // name in a list, so per-VM sets made every change slower with every VM).
  for (Family f : {Family::v4, Family::v6}) {
    for (const char* kind : {"dst_pps", "dst_bps"}) {
      Set meter;
      meter.name = std::string(kind) + sfx(f);
      meter.key = {KeyType::ifname, f == Family::v4 ? KeyType::ipv4_addr : KeyType::ipv6_addr};
      meter.dynamic = true;
      meter.timeout = true;
      // The kernel sizes a dynamic set's hash table by `size` up front.
      meter.size = opt_.meter_size;
      meter.timeout_ms = 60'000;
      sets.push_back(std::move(meter));
    }
  }
  for (const char* map : {"from_vm", "to_vm", "vm_to_host", "vm_pre"}) {
    Set s;
    s.name = map;
    s.key = {KeyType::ifname};
    s.verdict_map = true;
    sets.push_back(std::move(s));
  }
  // Tunnel device . VM tap: what may come out of a tunnel, and where to.
  Set tunnel_ok;
  tunnel_ok.name = "tunnel_ok";
  tunnel_ok.key = {KeyType::ifname, KeyType::ifname};
  sets.push_back(std::move(tunnel_ok));
  return sets;
}

Set Compiler::holes_set(const VmNet& vm, Family f) const {
  Set h;
  h.name = "vm_" + vm.name + "_holes" + sfx(f);
  h.key = {f == Family::v4 ? KeyType::ipv4_addr : KeyType::ipv6_addr, KeyType::inet_proto, KeyType::inet_service};
  h.interval = true;
  h.timeout = true;
  // With shaping, a map to each hole's tc class (docs/shaping.md).
  if (opt_.shaping) h.data_type = KeyType::classid;
  return h;
}

std::uint32_t Compiler::hole_class(const VmNet& vm, const Hole& hole) const {
  return hole.tc_minor != 0 ? tc_handle(opt_.tc_major, hole.tc_minor)
                            : tc_handle(opt_.tc_major, vm.id, FlowClass::nodes);
}

std::vector<SetElement> Compiler::hole_elements(const VmNet& vm, const Hole& hole, Family family,
                                                std::int64_t now) const {
  std::vector<SetElement> out;
  if (hole.destination.family() != family) return out;
  SetElement e = prefix_element(hole.destination);
  if (e.key[0].value_hi.empty()) e.key[0].value_hi = e.key[0].value;
  if (hole.protocol == 0) {
    e.key.push_back({u8_bytes(0), u8_bytes(255)});
    e.key.push_back({be16_bytes(0), be16_bytes(65535)});
  } else {
    e.key.push_back({u8_bytes(hole.protocol), u8_bytes(hole.protocol)});
    bool ported = hole.protocol == IPPROTO_TCP || hole.protocol == IPPROTO_UDP;
    e.key.push_back(ported ? SetElement::Part{be16_bytes(hole.ports.first), be16_bytes(hole.ports.last)}
                           : SetElement::Part{be16_bytes(0), be16_bytes(65535)});
  }
  if (hole.expires > 0) e.timeout_ms = static_cast<std::uint64_t>(std::max<std::int64_t>(1, hole.expires - now)) * 1000;
  e.comment = "hole " + std::to_string(hole.id);
  if (opt_.shaping) e.data = host32_bytes(hole_class(vm, hole));
  out.push_back(std::move(e));
  return out;
}

Chain Compiler::out_chain(const VmNet& vm) const {
  const std::string& n = vm.name;
  const trust::LevelPolicy& lp = policy_.level(vm.level);
  Chain c;
  c.name = "vm_" + n + "_out";
  auto& r = c.rules;

  // 1. Anti-spoofing: the VM sends only from its own MAC and addresses.
  r.push_back(drop_rule(vm, {neq(Field::ether_saddr, mac_bytes(vm.mac))}, "spoof-mac",
                        "drop frames not from the VM's MAC " + vm.mac));
  for (Family f : {Family::v4, Family::v6}) {
    const auto& own = f == Family::v4 ? vm.v4 : vm.v6;
    if (!own || !policy_.owner.allows(f)) {
      r.push_back(drop_rule(vm, {nfproto(f)}, "family",
                            std::string(f == Family::v4 ? "IPv4" : "IPv6") + " is not enabled for this VM"));
      continue;
    }
    r.push_back(drop_rule(vm, {nfproto(f), neq(saddr(f), address_bytes(*own))}, "spoof-ip",
                          "drop packets not from the VM's address " + own->to_string()));
  }
  // 2. Every new flow carries the VM's id, for the flow log.
  r.push_back(rule({ct_state(kCtNew)}, {CtMarkSet{static_cast<std::uint32_t>(vm.id)}},
                   n + ": mark new flows with VM id " + std::to_string(vm.id)));
  // Its HTB class: everything else, unless the client or hole rule below
  // picks a more specific one.
  if (opt_.shaping) {
    r.push_back(
        rule({}, {PrioritySet{tc_handle(opt_.tc_major, vm.id, FlowClass::other)}}, n + ": shape as everything else"));
  }
  // 3. Evil packets: fragments that escaped reassembly, IP options, IPv6
  // routing headers.
  r.push_back(drop_rule(vm, {nfproto(Family::v4), m(Field::ip_frag_off, Match::Op::neq, be16_bytes(0))}, "fragment",
                        "drop non-first IPv4 fragments (ports unknown)"));
  r.push_back(drop_rule(vm, {nfproto(Family::v4), neq(Field::ip_hdrlength, u8_bytes(5))}, "ip-options",
                        "drop IPv4 packets with options (source route, record route...)"));
  r.push_back(drop_rule(vm, {nfproto(Family::v6), eq(Field::ip6_exthdr_routing, u8_bytes(1))}, "ip6-routing",
                        "drop IPv6 packets with a routing header"));
  r.push_back(drop_rule(vm, {nfproto(Family::v6), eq(Field::ip6_exthdr_fragment, u8_bytes(1))}, "fragment",
                        "drop IPv6 fragments that escaped reassembly"));
  // 4. GRE from the guest itself: no tunnel inside the tunnel, and no GRE
  // that could pass for the host's own to the client's endpoint. Only
  // levels that may be tunnelled; a semi-trusted policy that allows IP
  // protocol 47 keeps it.
  if (vm.level == TrustLevel::untrusted ||
      (vm.level == TrustLevel::semi_trusted &&
       std::find(lp.ip_protocols.begin(), lp.ip_protocols.end(), kIpProtoGre) == lp.ip_protocols.end())) {
    r.push_back(drop_rule(vm, {l4proto(kIpProtoGre)}, "gre", "drop GRE sent by the guest (docs/tunnel.md)"));
  }
  // 5. Global guardrails, for every level.
  for (Family f : {Family::v4, Family::v6}) {
    r.push_back(drop_rule(vm,
                          {nfproto(f), in_set({daddr(f)}, std::string("reserved") + sfx(f)),
                           in_set({daddr(f)}, std::string("allow_reserved") + sfx(f), true)},
                          "reserved", "drop reserved and bogon destinations (guardrail)"));
    r.push_back(drop_rule(vm, {nfproto(f), in_set({daddr(f)}, std::string("block") + sfx(f))}, "blocked",
                          "drop destinations on the owner's block list (guardrail)"));
  }
  for (std::uint8_t proto : {static_cast<std::uint8_t>(IPPROTO_TCP), static_cast<std::uint8_t>(IPPROTO_UDP)}) {
    r.push_back(
        drop_rule(vm, {l4proto(proto), in_set({Field::th_dport}, "closed_ports")}, "closed-port",
                  std::string("drop ") + (proto == IPPROTO_TCP ? "TCP" : "UDP") + " to closed ports (guardrail)"));
  }
  // 6. Its own client: always, for every level, and before the quota, so a
  // VM that used up its day can still talk to its owner.
  auto shaped = [&](FlowClass fc) {
    std::vector<Statement> st;
    if (opt_.shaping) st.emplace_back(PrioritySet{tc_handle(opt_.tc_major, vm.id, fc)});
    st.push_back(accept());
    return st;
  };
  for (Family f : {Family::v4, Family::v6}) {
    for (const auto& p : minimal(of_family(vm.client, f))) {
      r.push_back(rule({nfproto(f), addr_match(daddr(f), p)}, shaped(FlowClass::client),
                       n + ": its own client " + p.to_string()));
    }
  }
  // 7. Daily byte quota: counts everything but the client.
  if (lp.daily_quota_bytes > 0) {
    r.push_back(rule({}, {QuotaRef{"vm_" + n + "_quota"}, Counter{}, Log{opt_.log_group, n + " quota "}, drop()},
                     n + ": daily byte quota used up"));
  }
  // 8. Authorized nodes: for every level.
  for (Family f : {Family::v4, Family::v6}) {
    std::vector<Field> key = {daddr(f), Field::l4proto, Field::th_dport};
    std::string map = "vm_" + n + "_holes" + sfx(f);
    if (opt_.shaping) {
      // The lookup both authorizes and picks the hole's tc class.
      r.push_back(rule({nfproto(f)}, {PriorityMap{key, map}, accept()},
                       n + ": nodes that signed an authcert for this client, each in its class"));
    } else {
      r.push_back(
          rule({nfproto(f), in_set(key, map)}, {accept()}, n + ": nodes that signed an authcert for this client"));
    }
  }
  // 9. Semi-trusted allowlists (no meter: the destination is vetted).
  if (vm.level == TrustLevel::semi_trusted) {
    for (Family f : {Family::v4, Family::v6}) {
      for (auto [proto, name] : {std::pair{static_cast<std::uint8_t>(IPPROTO_TCP), "tcp"},
                                 std::pair{static_cast<std::uint8_t>(IPPROTO_UDP), "udp"}}) {
        r.push_back(rule(
            {nfproto(f), l4proto(proto), in_set({daddr(f), Field::th_dport}, std::string("semi_") + name + sfx(f))},
            {accept()}, n + ": semi-trusted " + name + " allowlist"));
      }
    }
  }
  // 10. Per-destination-prefix meters for unsolicited traffic: new flows and
  // echo requests (a ping with replies is "established" to conntrack).
  for (Family f : {Family::v4, Family::v6}) {
    int len = f == Family::v4 ? lp.per_destination.v4_prefix_length : lp.per_destination.v6_prefix_length;
    std::string what = "/" + std::to_string(len);
    auto meter = [&](const std::string& set, Limit lim, std::vector<Match> ms, const std::string& why) {
      ms.insert(ms.begin(), nfproto(f));
      r.push_back(
          rule(std::move(ms),
               {MeterUpdate{set, daddr(f), len, lim, true}, Counter{}, Log{opt_.log_group, n + " dest-rate "}, drop()},
               n + ": " + why));
    };
    Match echo = f == Family::v4 ? eq(Field::icmp_type, u8_bytes(8)) : eq(Field::icmpv6_type, u8_bytes(128));
    Match echo_proto = l4proto(static_cast<std::uint8_t>(f == Family::v4 ? int{IPPROTO_ICMP} : int{IPPROTO_ICMPV6}));
    if (lp.per_destination.packets_per_second > 0) {
      Limit lim{lp.per_destination.packets_per_second, false, lp.per_destination.packets_per_second, true};
      std::string set = std::string("dst_pps") + sfx(f);
      meter(set, lim, {ct_state(kCtNew)},
            "at most " + std::to_string(lim.rate) + " new flows/s per destination " + what);
      meter(set, lim, {ct_state(kCtEstablished), echo_proto, echo}, "pings count against the same meter");
    }
    if (lp.per_destination.bits_per_second > 0) {
      std::uint64_t bytes = std::max<std::uint64_t>(1, lp.per_destination.bits_per_second / 8);
      Limit lim{bytes, true, static_cast<std::uint32_t>(std::max<std::uint64_t>(bytes, 1500)), true};
      std::string set = std::string("dst_bps") + sfx(f);
      meter(set, lim, {ct_state(kCtNew)},
            "at most " + trust::format_bit_rate(lp.per_destination.bits_per_second) +
                " of unsolicited traffic per destination " + what);
      meter(set, lim, {ct_state(kCtEstablished), echo_proto, echo}, "pings count against the same meter");
    }
  }
  // 11. TCP SYN rate of the whole VM.
  if (lp.tcp_syn_per_second > 0) {
    r.push_back(rule({l4proto(IPPROTO_TCP), masked(Field::tcp_flags, u8_bytes(kTcpSyn | kTcpAck), u8_bytes(kTcpSyn))},
                     {Limit{lp.tcp_syn_per_second, false, lp.tcp_syn_per_second * 2, true}, Counter{},
                      Log{opt_.log_group, n + " syn-rate "}, drop()},
                     n + ": at most " + std::to_string(lp.tcp_syn_per_second) + " TCP SYN/s"));
  }
  // 12. Continuations of allowed flows; SYN-only connections send no data.
  r.push_back(
      rule({ct_state(kCtEstablished | kCtRelated), masked(Field::ct_mark, host32_bytes(kSynOnlyMark), host32_bytes(0))},
           {accept()}, n + ": established and related flows"));
  r.push_back(
      rule({l4proto(IPPROTO_TCP), masked(Field::ct_mark, host32_bytes(kSynOnlyMark), host32_bytes(kSynOnlyMark)),
            masked(Field::tcp_flags, u8_bytes(kTcpRst), u8_bytes(kTcpRst))},
           {accept()}, n + ": a SYN-only probe may reset its connection"));
  // 13. What the level allows beyond that.
  switch (vm.level) {
    case TrustLevel::trusted:
      r.push_back(rule({}, {accept()}, n + ": trusted: any destination (logged, under the guardrails)"));
      break;
    case TrustLevel::semi_trusted: {
      for (Family f : {Family::v4, Family::v6}) {
        for (const auto& res : lp.dns.resolvers) {
          if (res.family != f) continue;
          for (std::uint8_t proto : {static_cast<std::uint8_t>(IPPROTO_UDP), static_cast<std::uint8_t>(IPPROTO_TCP)}) {
            r.push_back(rule(
                {nfproto(f), eq(daddr(f), address_bytes(res)), l4proto(proto), eq(Field::th_dport, be16_bytes(53))},
                {accept()}, n + ": DNS resolver " + res.to_string()));
          }
        }
      }
      for (std::uint8_t t : lp.icmp_types) {
        r.push_back(rule({l4proto(IPPROTO_ICMP), eq(Field::icmp_type, u8_bytes(t))}, {accept()},
                         n + ": ICMP " + trust::icmp_type_name(trust::IcmpFamily::v4, t)));
      }
      for (std::uint8_t t : lp.icmpv6_types) {
        r.push_back(rule({l4proto(IPPROTO_ICMPV6), eq(Field::icmpv6_type, u8_bytes(t))}, {accept()},
                         n + ": ICMPv6 " + trust::icmp_type_name(trust::IcmpFamily::v6, t)));
      }
      for (const auto& pr : lp.tcp_syn_only_ports) {
        r.push_back(rule({l4proto(IPPROTO_TCP), ct_state(kCtNew),
                          masked(Field::tcp_flags, u8_bytes(kTcpSyn | kTcpAck | kTcpFin | kTcpRst), u8_bytes(kTcpSyn)),
                          port_range(pr)},
                         {CtMarkSet{static_cast<std::uint32_t>(vm.id) | kSynOnlyMark}, accept()},
                         n + ": SYN-only to any destination, port " + pr.to_string()));
      }
      for (std::uint8_t p : lp.ip_protocols) {
        r.push_back(rule({l4proto(p)}, {accept()}, n + ": IP protocol " + std::to_string(p)));
      }
      r.push_back(drop_rule(vm, {}, "not-allowed", "semi-trusted: everything else"));
      break;
    }
    case TrustLevel::untrusted:
      // Marked in prerouting only while its tunnel is up, and accepted only
      // when routing sent it into its own tunnel device: every guardrail
      // above has already been applied.
      r.push_back(rule({eq(Field::meta_mark, host32_bytes(tunnel_mark(vm.id))),
                        eq(Field::oifname, ifname_bytes(tunnel_device(opt_.iface_prefix, vm.id)))},
                       {accept()}, n + ": everything else into its GRE tunnel to its client"));
      r.push_back(drop_rule(vm, {}, "not-allowed", "untrusted: only its client and authorized nodes"));
      break;
  }
  return c;
}

Chain Compiler::in_chain(const VmNet& vm) const {
  const std::string& n = vm.name;
  Chain c;
  c.name = "vm_" + n + "_in";
  auto& r = c.rules;
  // Its HTB class on the tap: the client's traffic, or everything else.
  if (opt_.shaping) {
    r.push_back(
        rule({}, {PrioritySet{tc_handle(opt_.tc_major, vm.id, FlowClass::other)}}, n + ": shape as everything else"));
    for (Family f : {Family::v4, Family::v6}) {
      for (const auto& p : minimal(of_family(vm.client, f))) {
        r.push_back(rule({nfproto(f), addr_match(saddr(f), p)},
                         {PrioritySet{tc_handle(opt_.tc_major, vm.id, FlowClass::client)}},
                         n + ": shape as its client " + p.to_string()));
      }
    }
  }
  r.push_back(rule({ct_state(kCtEstablished | kCtRelated)}, {accept()}, n + ": replies and related"));
  for (Family f : {Family::v4, Family::v6}) {
    for (const auto& p : minimal(of_family(vm.client, f))) {
      r.push_back(rule({nfproto(f), addr_match(saddr(f), p)}, {accept()},
                       n + ": its own client " + p.to_string() + " may connect"));
    }
  }
  if (vm.level == TrustLevel::trusted) {
    r.push_back(rule({}, {accept()}, n + ": trusted: reachable from anywhere"));
  } else {
    r.push_back(drop_rule(vm, {}, "inbound", "no new inbound connections except from its client"));
  }
  return c;
}

Chain Compiler::host_chain(const VmNet& vm) const {
  const std::string& n = vm.name;
  const trust::LevelPolicy& lp = policy_.level(vm.level);
  Chain c;
  c.name = "vm_" + n + "_host";
  auto& r = c.rules;
  r.push_back(drop_rule(vm, {neq(Field::ether_saddr, mac_bytes(vm.mac))}, "spoof-mac",
                        "drop frames to the host not from the VM's MAC"));
  if (vm.v4) {
    r.push_back(drop_rule(vm, {nfproto(Family::v4), neq(Field::ip_saddr, address_bytes(*vm.v4))}, "spoof-ip",
                          "drop packets to the host not from " + vm.v4->to_string()));
  } else {
    r.push_back(drop_rule(vm, {nfproto(Family::v4)}, "family", "IPv4 is not enabled for this VM"));
  }
  Prefix link_local = *Prefix::parse("fe80::/10");
  if (vm.v6) {
    // Neighbour discovery uses link-local sources, DAD the unspecified one.
    r.push_back(drop_rule(
        vm,
        {nfproto(Family::v6), neq(Field::ip6_saddr, address_bytes(*vm.v6)),
         in_prefix(Field::ip6_saddr, link_local, true), neq(Field::ip6_saddr, address_bytes(*IpAddress::parse("::")))},
        "spoof-ip", "drop packets to the host not from " + vm.v6->to_string() + " or link-local"));
    // A neighbour advertisement may only claim the VM's own addresses.
    r.push_back(drop_rule(
        vm,
        {l4proto(IPPROTO_ICMPV6), eq(Field::icmpv6_type, u8_bytes(136)),
         neq(Field::icmpv6_nd_target, address_bytes(*vm.v6)), in_prefix(Field::icmpv6_nd_target, link_local, true)},
        "nd-spoof", "drop neighbour advertisements for addresses not the VM's"));
  } else {
    r.push_back(drop_rule(vm, {nfproto(Family::v6)}, "family", "IPv6 is not enabled for this VM"));
  }
  r.push_back(rule({ct_state(kCtEstablished | kCtRelated)}, {accept()}, n + ": replies and ICMP errors"));
  for (std::uint8_t t : {133, 135, 136}) {  // router solicitation, neighbour solicitation/advertisement
    r.push_back(rule({l4proto(IPPROTO_ICMPV6), eq(Field::icmpv6_type, u8_bytes(t))}, {accept()},
                     n + ": neighbour discovery " + trust::icmp_type_name(trust::IcmpFamily::v6, t)));
  }
  if (vm.gateway4) {
    r.push_back(rule({nfproto(Family::v4), eq(Field::ip_daddr, address_bytes(*vm.gateway4)), l4proto(IPPROTO_ICMP),
                      eq(Field::icmp_type, u8_bytes(8))},
                     {accept()}, n + ": ping its gateway"));
  }
  if (vm.gateway6) {
    r.push_back(rule({nfproto(Family::v6), eq(Field::ip6_daddr, address_bytes(*vm.gateway6)), l4proto(IPPROTO_ICMPV6),
                      eq(Field::icmpv6_type, u8_bytes(128))},
                     {accept()}, n + ": ping its gateway"));
  }
  if (lp.dns.gateway_resolver) {
    for (Family f : {Family::v4, Family::v6}) {
      const auto& gw = f == Family::v4 ? vm.gateway4 : vm.gateway6;
      if (!gw) continue;
      for (std::uint8_t proto : {static_cast<std::uint8_t>(IPPROTO_UDP), static_cast<std::uint8_t>(IPPROTO_TCP)}) {
        r.push_back(
            rule({nfproto(f), eq(daddr(f), address_bytes(*gw)), l4proto(proto), eq(Field::th_dport, be16_bytes(53))},
                 {accept()}, n + ": DNS on its gateway"));
      }
    }
  }
  r.push_back(drop_rule(vm, {}, "host", "nothing else reaches the host"));
  return c;
}

Compiler::VmParts Compiler::vm_parts(const VmNet& vm, const std::vector<Hole>& holes, std::int64_t now) const {
  VmParts p;
  const std::string& n = vm.name;
  const trust::LevelPolicy& lp = policy_.level(vm.level);
  // Its only sets: the holes (prefix . protocol . ports, per-element
  // timeouts). The client's addresses are in its rules, the meters shared.
  for (Family f : {Family::v4, Family::v6}) {
    Set h = holes_set(vm, f);
    for (const auto& hole : holes) {
      if (hole.vm != n) continue;
      for (auto& e : hole_elements(vm, hole, f, now)) h.elements.push_back(std::move(e));
    }
    p.sets.push_back(std::move(h));
  }
  if (lp.daily_quota_bytes > 0) p.quotas.push_back(QuotaObject{"vm_" + n + "_quota", lp.daily_quota_bytes, 0});
  p.chains = {out_chain(vm), in_chain(vm), host_chain(vm)};
  auto map_elem = [&](const std::string& chain) {
    SetElement e;
    e.key.push_back({ifname_bytes(n), {}});
    e.verdict_chain = chain;
    return e;
  };
  p.map_elements = {{"from_vm", map_elem("vm_" + n + "_out")},
                    {"to_vm", map_elem("vm_" + n + "_in")},
                    {"vm_to_host", map_elem("vm_" + n + "_host")}};
  if (vm.v4) {
    SetElement e;
    e.key = {{ifname_bytes(n), {}}, {address_bytes(*vm.v4), {}}, {mac_bytes(vm.mac), {}}};
    p.arp_elements.push_back(std::move(e));
  }
  // Its tunnel's chain and elements, while it has one up (docs/tunnel.md).
  if (opt_.tunnel_of && vm.level == TrustLevel::untrusted) {
    if (auto tunnel = opt_.tunnel_of(vm.name)) add_tunnel_parts(p, vm, *tunnel);
  }
  return p;
}

Ruleset Compiler::compile(const std::vector<VmNet>& vms, const std::vector<Hole>& holes, std::int64_t now) const {
  Table t;
  t.family = TableFamily::inet;
  t.name = opt_.table;
  t.sets = shared_sets();
  Chain forward{"forward", BaseHook{BaseHook::Hook::forward, opt_.priority, false}, {}};
  // A client's tunnel carries only replies and its own connections to its
  // own VM: nothing from a tunnel goes anywhere else (no relaying through
  // the host), and a tunnel device without rules passes nothing.
  forward.rules.push_back(rule({ifname_wildcard(Field::iifname, opt_.iface_prefix + "t"),
                                in_set({Field::iifname, Field::oifname}, "tunnel_ok", true)},
                               {Counter{}, Log{opt_.log_group, "sg? tunnel-escape "}, drop()},
                               "a tunnel delivers only to its own VM"));
  forward.rules.push_back(rule({vmap(Field::iifname, "from_vm")}, {}, "dispatch packets from a VM to its chain"));
  forward.rules.push_back(rule({vmap(Field::oifname, "to_vm")}, {}, "dispatch packets to a VM to its chain"));
  forward.rules.push_back(rule({ifname_wildcard(Field::iifname, opt_.iface_prefix)},
                               {Counter{}, Log{opt_.log_group, "sg? no-chain "}, drop()},
                               "fail closed: a VM interface without rules sends nothing"));
  forward.rules.push_back(rule({ifname_wildcard(Field::oifname, opt_.iface_prefix)},
                               {Counter{}, Log{opt_.log_group, "sg? no-chain "}, drop()},
                               "fail closed: a VM interface without rules receives nothing"));
  Chain input{"input", BaseHook{BaseHook::Hook::input, opt_.priority, false}, {}};
  input.rules.push_back(rule({vmap(Field::iifname, "vm_to_host")}, {}, "dispatch packets from a VM to the host"));
  input.rules.push_back(rule({ifname_wildcard(Field::iifname, opt_.iface_prefix)},
                             {Counter{}, Log{opt_.log_group, "sg? no-chain "}, drop()},
                             "fail closed: a VM interface without rules reaches nothing on the host"));
  // Routing happens before forward: tunnel-bound packets are marked here,
  // for `ip rule fwmark`, by the chain of the VM's tunnel (docs/tunnel.md).
  Chain prerouting{"prerouting", BaseHook{BaseHook::Hook::prerouting, opt_.priority, false}, {}};
  prerouting.rules.push_back(
      rule({vmap(Field::iifname, "vm_pre")}, {}, "dispatch packets of a VM with a tunnel to its tunnel chain"));
  t.chains = {prerouting, forward, input};

  Table arp;
  arp.family = TableFamily::arp;
  arp.name = opt_.table;
  Set ok;
  ok.name = "arp_ok";
  ok.key = {KeyType::ifname, KeyType::ipv4_addr, KeyType::ether_addr};
  Chain arp_in{"input", BaseHook{BaseHook::Hook::input, opt_.priority, false}, {}};
  arp_in.rules.push_back(rule({ifname_wildcard(Field::iifname, opt_.iface_prefix),
                               in_set({Field::iifname, Field::arp_sip, Field::arp_sha}, "arp_ok", true)},
                              {Counter{}, Log{opt_.log_group, "sg? arp-spoof "}, drop()},
                              "ARP from a VM only for its own address and MAC"));

  // Holes grouped by VM and the shared maps indexed once, so compiling
  // grows linearly with VMs and holes (a restart reconciles 1,000 VMs).
  std::map<std::string, std::vector<Hole>> holes_by_vm;
  for (const auto& h : holes) holes_by_vm[h.vm].push_back(h);
  std::map<std::string, std::vector<SetElement>> map_elements;
  const std::vector<Hole> no_holes;
  for (const auto& vm : vms) {
    auto hv = holes_by_vm.find(vm.name);
    VmParts p = vm_parts(vm, hv == holes_by_vm.end() ? no_holes : hv->second, now);
    t.sets.insert(t.sets.end(), std::make_move_iterator(p.sets.begin()), std::make_move_iterator(p.sets.end()));
    t.quotas.insert(t.quotas.end(), p.quotas.begin(), p.quotas.end());
    t.chains.insert(t.chains.end(), std::make_move_iterator(p.chains.begin()), std::make_move_iterator(p.chains.end()));
    for (auto& [map, e] : p.map_elements) map_elements[map].push_back(std::move(e));
    ok.elements.insert(ok.elements.end(), p.arp_elements.begin(), p.arp_elements.end());
  }
  for (auto& s : t.sets) {
    auto it = map_elements.find(s.name);
    // Shared verdict maps, and the shared tunnel_ok set (ifname . ifname).
    if (it != map_elements.end()) {
      s.elements.insert(s.elements.end(), it->second.begin(), it->second.end());
    }
  }
  arp.sets = {ok};
  arp.chains = {arp_in};
  return Ruleset{{t, arp}};
}

Plan Compiler::plan_add_vm(const VmNet& vm, const std::vector<Hole>& holes, std::int64_t now) const {
  return plan_add_parts(vm_parts(vm, holes, now));
}

Plan Compiler::plan_remove_vm(const VmNet& vm) const { return plan_remove_parts(vm_parts(vm, {}, 0)); }

Plan Compiler::plan_add_parts(const VmParts& p) const {
  Plan plan;
  auto op = [&](Op::Kind k, TableFamily fam = TableFamily::inet) {
    Op o;
    o.kind = k;
    o.family = fam;
    o.table = opt_.table;
    return o;
  };
  for (const auto& s : p.sets) {
    Op o = op(Op::Kind::add_set);
    o.name = s.name;
    o.set = s;
    plan.ops.push_back(std::move(o));
  }
  for (const auto& q : p.quotas) {
    Op o = op(Op::Kind::add_quota);
    o.name = q.name;
    o.quota = q;
    plan.ops.push_back(std::move(o));
  }
  for (const auto& c : p.chains) {
    Op o = op(Op::Kind::add_chain);
    o.name = c.name;
    o.chain = c;
    plan.ops.push_back(std::move(o));
  }
  // Dispatch last: the chains are complete before any packet can reach them.
  for (const auto& e : p.arp_elements) {
    Op o = op(Op::Kind::add_elements, TableFamily::arp);
    o.name = "arp_ok";
    o.elements = {e};
    plan.ops.push_back(std::move(o));
  }
  for (const auto& [map, e] : p.map_elements) {
    Op o = op(Op::Kind::add_elements);
    o.name = map;
    o.elements = {e};
    plan.ops.push_back(std::move(o));
  }
  return plan;
}

Plan Compiler::plan_remove_parts(const VmParts& p) const {
  Plan plan;
  auto op = [&](Op::Kind k, const std::string& name, TableFamily fam = TableFamily::inet) {
    Op o;
    o.kind = k;
    o.family = fam;
    o.table = opt_.table;
    o.name = name;
    return o;
  };
  // Undispatch first: from then on the catch-all drops the VM's packets.
  for (const auto& [map, e] : p.map_elements) {
    Op o = op(Op::Kind::delete_elements, map);
    o.elements = {e};
    plan.ops.push_back(std::move(o));
  }
  for (const auto& e : p.arp_elements) {
    Op o = op(Op::Kind::delete_elements, "arp_ok", TableFamily::arp);
    o.elements = {e};
    plan.ops.push_back(std::move(o));
  }
  for (const auto& c : p.chains) {
    plan.ops.push_back(op(Op::Kind::flush_chain, c.name));
    plan.ops.push_back(op(Op::Kind::delete_chain, c.name));
  }
  for (const auto& s : p.sets) plan.ops.push_back(op(Op::Kind::delete_set, s.name));
  for (const auto& q : p.quotas) plan.ops.push_back(op(Op::Kind::delete_quota, q.name));
  return plan;
}

Plan Compiler::plan_add_hole(const VmNet& vm, const Hole& hole, std::int64_t now) const {
  Plan plan;
  for (Family f : {Family::v4, Family::v6}) {
    auto elems = hole_elements(vm, hole, f, now);
    if (elems.empty()) continue;
    Op o;
    o.kind = Op::Kind::add_elements;
    o.table = opt_.table;
    // The set's layout, so the backend need not ask the kernel for it.
    o.set = holes_set(vm, f);
    o.name = o.set.name;
    o.elements = std::move(elems);
    plan.ops.push_back(std::move(o));
  }
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
  r.push_back(rule({from_tunnel}, {Verdict{Verdict::Kind::ret, ""}}, n + ": from its tunnel: routed normally"));
  for (Family f : {Family::v4, Family::v6}) {
    for (const auto& p : minimal(of_family(vm.client, f))) {
      r.push_back(rule({nfproto(f), addr_match(daddr(f), p)}, {Verdict{Verdict::Kind::ret, ""}},
                       n + ": its own client: direct (" + p.to_string() + ")"));
    }
  }
  for (Family f : {Family::v4, Family::v6}) {
    r.push_back(rule({nfproto(f), in_set({daddr(f), Field::l4proto, Field::th_dport}, "vm_" + n + "_holes" + sfx(f))},
                     {Verdict{Verdict::Kind::ret, ""}}, n + ": authorized nodes: direct"));
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
  p.map_elements.emplace_back("vm_pre", map_elem(vm.name));
  p.map_elements.emplace_back("vm_pre", map_elem(tunnel.device));
  SetElement ok;
  ok.key = {{ifname_bytes(tunnel.device), {}}, {ifname_bytes(vm.name), {}}};
  p.map_elements.emplace_back("tunnel_ok", std::move(ok));
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

Plan Compiler::plan_update_block_list() const {
  Plan plan;
  for (const auto& s : shared_sets()) {
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
    add.elements = s.elements;
    plan.ops.push_back(std::move(add));
  }
  return plan;
}

std::string Compiler::vm_text(const VmNet& vm, const std::vector<Hole>& holes, std::int64_t now) const {
  VmParts p = vm_parts(vm, holes, now);
  Table t;
  t.name = opt_.table;
  t.sets = p.sets;
  t.quotas = p.quotas;
  t.chains = p.chains;
  return to_nft_text(t);
}

}  // namespace sg::netpolicy
