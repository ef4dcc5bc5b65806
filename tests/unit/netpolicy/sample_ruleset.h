// A ruleset that uses every Field, Match::Op, Statement, set kind and element
// kind of netpolicy/ruleset.h. The unit tests check its text; the backend
// integration tests load it into the kernel both through NftBackend and
// through `nft -f` and compare what the kernel then holds.
#pragma once

#include <string>

#include "netpolicy/ruleset.h"

namespace sg::netpolicy::sample {

inline IpAddress ip(const char* text) { return *IpAddress::parse(text); }
inline Bytes addr(const char* text) { return address_bytes(ip(text)); }

inline Match eq(Field f, Bytes v) { return Match{{f}, Match::Op::eq, std::move(v)}; }
inline Match neq(Field f, Bytes v) { return Match{{f}, Match::Op::neq, std::move(v)}; }
inline Match prefix(Field f, Bytes v, int len, bool negate = false) {
  Match m{{f}, negate ? Match::Op::not_prefix : Match::Op::prefix, std::move(v)};
  m.prefix_len = len;
  return m;
}
inline Match range(Field f, Bytes lo, Bytes hi) { return Match{{f}, Match::Op::range, std::move(lo), std::move(hi)}; }
inline Match in_set(std::vector<Field> f, std::string set, bool negate = false) {
  Match m{std::move(f), negate ? Match::Op::not_in_set : Match::Op::in_set};
  m.set = std::move(set);
  return m;
}
inline Match masked_in_set(std::vector<Field> f, std::string set, std::vector<int> prefix_lens) {
  Match m = in_set(std::move(f), std::move(set));
  m.key_prefix_lens = std::move(prefix_lens);
  return m;
}
inline Match vmap(Field f, std::string map) {
  Match m{{f}, Match::Op::vmap};
  m.set = std::move(map);
  return m;
}
inline Match any_bits(Field f, Bytes v) { return Match{{f}, Match::Op::any_bits, std::move(v)}; }
inline Match masked_eq(Field f, Bytes v, Bytes mask) {
  Match m{{f}, Match::Op::masked_eq, std::move(v)};
  m.mask = std::move(mask);
  return m;
}

inline Verdict accept() { return Verdict{Verdict::Kind::accept, ""}; }
inline Verdict drop() { return Verdict{Verdict::Kind::drop, ""}; }

inline Rule rule(std::vector<Match> m, std::vector<Statement> s, std::string comment = "") {
  return Rule{std::move(m), std::move(s), std::move(comment)};
}

inline SetElement::Part part(Bytes v, Bytes hi = {}) { return SetElement::Part{std::move(v), std::move(hi)}; }
inline SetElement elem(std::vector<SetElement::Part> key) {
  return SetElement{std::move(key), "", {}, std::nullopt, ""};
}

// 52:54:00:00:00:03, the MAC of VM 3.
inline Bytes vm_mac() { return mac_bytes("52:54:00:00:00:03"); }

inline Table inet_table(const std::string& name = "surrogated") {
  Table t;
  t.family = TableFamily::inet;
  t.name = name;
  t.quotas = {QuotaObject{"q3", 1073741824, 0}, QuotaObject{"q4", 5000000, 1000}};

  Set reserved_v4{"reserved_v4", {KeyType::ipv4_addr}, true};
  reserved_v4.elements = {
      elem({part(addr("10.0.0.0"), addr("10.255.255.255"))}),
      elem({part(addr("100.64.0.0"), addr("100.127.255.255"))}),
      elem({part(addr("198.51.100.10"), addr("198.51.100.20"))}),
      elem({part(addr("203.0.113.5"))}),
      elem({part(addr("240.0.0.0"), addr("255.255.255.255"))}),
  };
  Set reserved_v6{"reserved_v6", {KeyType::ipv6_addr}, true};
  reserved_v6.elements = {
      elem({part(addr("::ffff:0:0"), addr("::ffff:ffff:ffff"))}),
      elem({part(addr("fc00::"), addr("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))}),
  };
  Set holes_v4{"holes_v4", {KeyType::ipv4_addr, KeyType::inet_proto, KeyType::inet_service}, true, true};
  SetElement h1 = elem(
      {part(addr("198.51.100.0"), addr("198.51.100.255")), part(u8_bytes(6)), part(be16_bytes(80), be16_bytes(90))});
  h1.timeout_ms = 5400000;  // 1h30m
  h1.comment = "authcert 7";
  SetElement h2 = elem({part(addr("203.0.113.7")), part(u8_bytes(17)), part(be16_bytes(53))});
  holes_v4.elements = {h1, h2};
  Set holes_v6{"holes_v6", {KeyType::ipv6_addr, KeyType::inet_proto, KeyType::inet_service}, false, true};
  SetElement h3 = elem({part(addr("2001:db8::7")), part(u8_bytes(6)), part(be16_bytes(443))});
  h3.timeout_ms = 600000;
  holes_v6.elements = {h3};
  Set meter_v4{"meter_v4", {KeyType::ipv4_addr}, false, true, true};
  meter_v4.timeout_ms = 60000;  // a default element timeout, as the compiler gives meters
  // No size: nft then picks 65535, and so must the backend.
  Set meter_v6{"meter_v6", {KeyType::ipv6_addr}, false, false, true};
  meter_v6.size = 1024;
  Set macs{"macs", {KeyType::ether_addr}};
  macs.elements = {elem({part(vm_mac())})};
  Set ifs{"vm_ifs", {KeyType::ifname}};
  ifs.elements = {elem({part(ifname_bytes("sg3"))}), elem({part(ifname_bytes("sg4"))})};
  Set protos{"protos", {KeyType::inet_proto}};
  protos.elements = {elem({part(u8_bytes(6))}), elem({part(u8_bytes(17))})};
  Set ports{"closed_ports", {KeyType::inet_service}, true};
  ports.elements = {elem({part(be16_bytes(1), be16_bytes(52))}), elem({part(be16_bytes(31337))})};
  Set from_vm{"from_vm", {KeyType::ifname}};
  from_vm.verdict_map = true;
  SetElement m1 = elem({part(ifname_bytes("sg3"))});
  m1.verdict_chain = "vm_sg3_out";
  from_vm.elements = {m1};
  // A meter shared by all VMs, each VM's elements apart (iifname . prefix).
  Set meter_if{"dst_pps_v4", {KeyType::ifname, KeyType::ipv4_addr}, false, true, true};
  meter_if.size = 4096;
  meter_if.timeout_ms = 60000;
  // Holes as a map to their tc class (meta priority set ... map).
  Set hole_map{"vm_sg3_holes_v4", {KeyType::ipv4_addr, KeyType::inet_proto, KeyType::inet_service}, true, true};
  hole_map.data_type = KeyType::classid;
  SetElement hm1 = elem(
      {part(addr("198.51.100.0"), addr("198.51.100.255")), part(u8_bytes(6)), part(be16_bytes(80), be16_bytes(90))});
  hm1.timeout_ms = 5400000;
  hm1.comment = "hole 7";
  hm1.data = host32_bytes((0x53U << 16U) | 0xeU);
  SetElement hm2 = elem({part(addr("203.0.113.7"), addr("203.0.113.7")), part(u8_bytes(17), u8_bytes(17)),
                         part(be16_bytes(53), be16_bytes(53))});
  hm2.data = host32_bytes((0x53U << 16U) | 0x8000U);
  hole_map.elements = {hm1, hm2};
  // Per-VM values keyed by interface: a ct mark, a named quota, a drop
  // counter per VM and reason, and a tap . tunnel . mark triple.
  Set marks{"vm_mark", {KeyType::ifname}};
  marks.data_type = KeyType::mark;
  SetElement mk = elem({part(ifname_bytes("sg3"))});
  mk.data = host32_bytes(3);
  marks.elements = {mk};
  Set quotas{"vm_quota", {KeyType::ifname}};
  quotas.quota_map = true;
  SetElement qe = elem({part(ifname_bytes("sg3"))});
  qe.object = "q3";
  quotas.elements = {qe};
  Set drops{"drops", {KeyType::ifname, KeyType::ifname}, false, false, true};
  drops.size = 65536;
  Set triples{"tunnel_out", {KeyType::ifname, KeyType::ifname, KeyType::mark}};
  triples.elements = {elem({part(ifname_bytes("sg3")), part(ifname_bytes("sgt3")), part(host32_bytes(0x40000003U))})};
  // Declared by typeof: nft has no type for an ND target.
  Set nd{"vm_nd_v6", {KeyType::ifname, KeyType::nd_target}};
  nd.elements = {elem({part(ifname_bytes("sg3")), part(addr("2001:db8:0:3::2"))})};
  // Holes to a prefix of one length, keyed by the masked destination.
  Set p24{
      "holes_v4_p24", {KeyType::ifname, KeyType::ipv4_addr, KeyType::inet_proto, KeyType::inet_service}, false, true};
  p24.data_type = KeyType::classid;
  SetElement pe =
      elem({part(ifname_bytes("sg3")), part(addr("198.51.100.0")), part(u8_bytes(6)), part(be16_bytes(443))});
  pe.timeout_ms = 600000;
  pe.data = host32_bytes((0x53U << 16U) | 0xeU);
  p24.elements = {pe};
  Set p64{"holes_v6_p64", {KeyType::ifname, KeyType::ipv6_addr, KeyType::inet_proto, KeyType::inet_service}};
  p64.elements = {
      elem({part(ifname_bytes("sg3")), part(addr("2001:db8:1:2::")), part(u8_bytes(17)), part(be16_bytes(53))})};
  // The short path: tap . MAC . flow mark . state . direction to a class.
  Set plain{"vm_plain", {KeyType::ifname, KeyType::ether_addr, KeyType::mark, KeyType::ct_state, KeyType::ct_dir}};
  plain.data_type = KeyType::classid;
  SetElement pl = elem({part(ifname_bytes("sg3")), part(vm_mac()), part(host32_bytes(0x40000003U)),
                        part(host32_bytes(kCtEstablished)), part(u8_bytes(0))});
  pl.data = host32_bytes((0x53U << 16U) | 0xfU);
  plain.elements = {pl};
  t.sets = {reserved_v4, reserved_v6, holes_v4, holes_v6, meter_v4, meter_v6, meter_if, hole_map, macs, ifs,  protos,
            ports,       from_vm,     marks,    quotas,   drops,    triples,  nd,       p24,      p64,  plain};

  Chain forward{"forward", BaseHook{BaseHook::Hook::forward, -10, false}, {}};
  forward.rules = {
      rule({any_bits(Field::ct_state, host32_bytes(kCtEstablished | kCtRelated))}, {accept()}),
      rule({vmap(Field::iifname, "from_vm")}, {}),
      rule({prefix(Field::iifname, ifname_bytes("sg"), 16)}, {Counter{}, drop()}, "catch-all: VM without a chain"),
      rule({prefix(Field::oifname, ifname_bytes("sg"), 16, true), in_set({Field::iifname}, "vm_ifs")}, {drop()}),
  };

  Chain out{"vm_sg3_out", std::nullopt, {}};
  out.rules = {
      rule({neq(Field::ether_saddr, vm_mac())}, {Counter{}, Log{1, "sg3 spoof-mac "}, drop()},
           "sg3: source MAC is not the VM's"),
      rule({eq(Field::nfproto, u8_bytes(2)), neq(Field::ip_saddr, addr("198.51.100.3"))}, {drop()}),
      rule({eq(Field::nfproto, u8_bytes(10)), prefix(Field::ip6_saddr, addr("2001:db8:0:3::"), 64, true)}, {drop()}),
      rule({prefix(Field::ip_daddr, addr("10.0.0.0"), 8)}, {drop()}),
      rule({prefix(Field::ip_daddr, addr("100.64.0.0"), 10)}, {drop()}),
      rule({prefix(Field::ip_daddr, addr("172.16.0.0"), 12, true), eq(Field::ip_saddr, addr("198.51.100.3"))}, {}),
      rule({eq(Field::ip6_daddr, addr("2001:db8::1"))}, {accept()}),
      rule({neq(Field::ip_hdrlength, u8_bytes(5))}, {Log{1, "sg3 ip-options "}, drop()}, "sg3: IP options"),
      rule({neq(Field::ip_frag_off, be16_bytes(0))}, {drop()}, "sg3: non-first fragment"),
      rule({eq(Field::nh_first_byte, u8_bytes(0x45)), eq(Field::l4proto, u8_bytes(17))}, {accept()},
           "IPv4 without options, no nfproto dependency"),
      rule({eq(Field::ip6_exthdr_routing, u8_bytes(1))}, {drop()}),
      rule({eq(Field::ip6_exthdr_fragment, u8_bytes(1))}, {drop()}),
      rule({eq(Field::l4proto, u8_bytes(6)), range(Field::th_dport, be16_bytes(1), be16_bytes(1023))}, {drop()}),
      rule({Match{{Field::th_dport}, Match::Op::neq, be16_bytes(31337)}}, {}),
      rule({masked_eq(Field::tcp_flags, u8_bytes(kTcpSyn), u8_bytes(kTcpSyn | kTcpAck))},
           {MeterUpdate{"meter_v4", Field::ip_daddr, 24, Limit{2, false, 2, true}}, drop()}, "sg3: SYN rate"),
      rule({masked_eq(Field::tcp_flags, u8_bytes(kTcpSyn), u8_bytes(kTcpSyn | kTcpAck))},
           {MeterUpdate{"meter_v6", Field::ip6_daddr, 64, Limit{2, false, 2, true}}, drop()}),
      rule({eq(Field::ct_state, host32_bytes(kCtNew))},
           {MeterUpdate{"dst_pps_v4", Field::ip_daddr, 24, Limit{5, false, 5, true}, true}, drop()},
           "sg3: new flows per destination /24, shared meter"),
      rule({}, {PriorityMap{{Field::ip_daddr, Field::l4proto, Field::th_dport}, "vm_sg3_holes_v4"}, accept()},
           "sg3: authorized nodes, each in its tc class"),
      rule({eq(Field::tcp_flags, u8_bytes(kTcpSyn))}, {Limit{10, false, 5, true}, drop()}),
      rule({any_bits(Field::tcp_flags, u8_bytes(kTcpRst | kTcpFin))}, {accept()}),
      rule({eq(Field::icmp_type, u8_bytes(8))}, {Limit{1280000, true, 1000, true}, drop()}),
      rule({eq(Field::icmpv6_type, u8_bytes(135)), neq(Field::icmpv6_nd_target, addr("2001:db8::3"))}, {drop()},
           "sg3: ND for a foreign target"),
      rule({eq(Field::ct_state, host32_bytes(kCtNew))}, {CtMarkSet{3}, PrioritySet{(1U << 16U) | 0xaU}}),
      rule({eq(Field::ct_mark, host32_bytes(3))}, {QuotaRef{"q3"}, drop()}),
      rule({masked_eq(Field::ct_mark, host32_bytes(0), host32_bytes(0x80000000U))}, {accept()},
           "sg3: SYN-only bit clear"),
      rule({in_set({Field::ip_daddr}, "reserved_v4")}, {Counter{}, Log{1, "sg3 reserved "}, drop()}),
      rule({in_set({Field::ip6_daddr}, "reserved_v6", true)}, {}),
      rule({in_set({Field::ip_daddr, Field::l4proto, Field::th_dport}, "holes_v4")}, {accept()}),
      rule({in_set({Field::ip6_daddr, Field::l4proto, Field::th_dport}, "holes_v6")}, {accept()}),
      rule({in_set({Field::ether_saddr}, "macs", true)}, {drop()}),
      rule({in_set({Field::l4proto}, "protos"), in_set({Field::th_dport}, "closed_ports")}, {drop()}),
      rule({eq(Field::ct_state, host32_bytes(kCtNew))}, {CtMarkMap{{Field::iifname}, "vm_mark"}},
           "the VM's id, from its interface"),
      rule({}, {QuotaMap{{Field::iifname}, "vm_quota"}, drop()}, "the VM's own quota"),
      rule({eq(Field::ct_state, host32_bytes(kCtNew))}, {CtMarkOr{0x40000000U}, accept()}, "a plain flow"),
      rule({}, {CountUpdate{"drops", Field::iifname, "spoof-ip"}}),
      rule({}, {CountUpdate{"drops", Field::oifname, "inbound"}}),
      rule({},
           {PriorityMap{{Field::iifname, Field::ip_daddr, Field::l4proto, Field::th_dport}, "holes_v4_p24", {0, 24}},
            accept()},
           "holes to a /24, each in its class"),
      rule(
          {masked_in_set({Field::iifname, Field::ip6_daddr, Field::l4proto, Field::th_dport}, "holes_v6_p64", {0, 64})},
          {accept()}),
      rule({masked_in_set({Field::ip_saddr}, "reserved_v4", {20})}, {drop()}),
      rule({any_bits(Field::ct_state, host32_bytes(kCtEstablished)), eq(Field::ct_direction, u8_bytes(0))},
           {PriorityMap{{Field::iifname, Field::ether_saddr, Field::ct_mark, Field::ct_state, Field::ct_direction},
                        "vm_plain"},
            Verdict{Verdict::Kind::go_to, "vm_common"}},
           "an established plain flow of this VM, in its class"),
      rule({eq(Field::ct_direction, u8_bytes(1))}, {}),
      rule({in_set({Field::iifname, Field::oifname, Field::meta_mark}, "tunnel_out")}, {accept()}),
      rule({eq(Field::icmpv6_type, u8_bytes(136)), in_set({Field::iifname, Field::icmpv6_nd_target}, "vm_nd_v6", true)},
           {drop()}, "ND only for the VM's own address"),
      rule({eq(Field::oifname, ifname_bytes("eth0"))}, {Verdict{Verdict::Kind::jump, "vm_common"}}),
      rule({}, {Verdict{Verdict::Kind::go_to, "vm_common"}}),
  };
  Chain common{"vm_common", std::nullopt, {}};
  common.rules = {rule({eq(Field::l4proto, u8_bytes(47))}, {drop()}), rule({}, {Verdict{Verdict::Kind::ret, ""}})};
  t.chains = {forward, out, common};
  return t;
}

inline Table arp_table(const std::string& name = "surrogated") {
  Table t;
  t.family = TableFamily::arp;
  t.name = name;
  Chain in{"arp_in", BaseHook{BaseHook::Hook::input, 0, true}, {}};
  in.rules = {
      rule({eq(Field::arp_sip, addr("198.51.100.3")), eq(Field::arp_sha, vm_mac()),
            eq(Field::iifname, ifname_bytes("sg3"))},
           {accept()}, "sg3: own ARP"),
      rule({neq(Field::arp_sha, vm_mac())}, {Log{2, "arp spoof "}, drop()}),
      rule({prefix(Field::arp_sip, addr("198.51.100.0"), 24)}, {Counter{}, accept()}),
  };
  t.chains = {in};
  return t;
}

inline Ruleset full_ruleset(const std::string& name = "surrogated") {
  Ruleset rs;
  rs.tables = {inet_table(name), arp_table(name)};
  return rs;
}

}  // namespace sg::netpolicy::sample
