// The pure compiler: what rules a VM gets for its trust level, in which
// order, and the plans that add or remove one VM or hole.
#include "netpolicy/compile.h"

#include <gtest/gtest.h>
#include <netinet/in.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "tests/unit/netpolicy/test_vm.h"
#include "trust/parse.h"

namespace sg::netpolicy {
namespace {

constexpr std::int64_t kNow = 1790000000;

trust::Policy test_policy() {
  auto p = trust::parse_policy(R"(
[guardrails]
allow_reserved = ["203.0.113.0/24", "2001:db8::/32"]
block = ["203.0.113.128/25"]

[levels.semi-trusted]
tcp = ["203.0.113.0/25:80,443", "[2001:db8:77::/48]:8022"]
udp = ["203.0.113.53:53"]
icmp = ["echo-request"]
tcp_syn_only_ports = ["80"]
)",
                               "test-policy.toml");
  EXPECT_TRUE(p.ok()) << p.error().message;
  return *p;
}

using test_vms::vm;

const Chain* find_chain(const Ruleset& rs, const std::string& name) {
  for (const auto& c : rs.tables[0].chains) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

const Set* find_set(const Ruleset& rs, const std::string& name) {
  for (const auto& s : rs.tables[0].sets) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

bool is_drop(const Rule& r) {
  return !r.statements.empty() && std::holds_alternative<Verdict>(r.statements.back()) &&
         std::get<Verdict>(r.statements.back()).kind == Verdict::Kind::drop;
}
bool is_accept(const Rule& r) {
  return !r.statements.empty() && std::holds_alternative<Verdict>(r.statements.back()) &&
         std::get<Verdict>(r.statements.back()).kind == Verdict::Kind::accept;
}

TEST(Compiler, GoldenRuleset) {
  auto policy = test_policy();
  Compiler c(policy, CompileOptions{});
  Hole h{7, "sg1", *Prefix::parse("203.0.113.9"), IPPROTO_TCP, trust::PortRange{443, 443}, kNow + 3600};
  Hole subnet{8, "sg2", *Prefix::parse("198.51.100.0/24"), IPPROTO_UDP, trust::PortRange{53, 53}, kNow + 3600};
  Hole site{9, "sg3", *Prefix::parse("2001:db8:7::/48"), IPPROTO_TCP, trust::PortRange{22, 22}, 0};
  auto rs = c.compile(
      {vm(1, trust::TrustLevel::untrusted), vm(2, trust::TrustLevel::semi_trusted), vm(3, trust::TrustLevel::trusted)},
      {h, subnet, site}, kNow);
  std::string text = to_nft_text(rs);
  std::string path = std::string(SG_SOURCE_DIR) + "/tests/golden/netpolicy/ruleset.nft";
  if (std::getenv("SG_REGENERATE_GOLDEN") != nullptr) {
    std::ofstream(path) << text;
  }
  std::ifstream in(path);
  std::stringstream golden;
  golden << in.rdbuf();
  EXPECT_EQ(text, golden.str()) << "rerun with SG_REGENERATE_GOLDEN=1 and review the diff";
}

std::string goto_target(const Rule& r) {
  if (r.statements.empty()) return "";
  const auto* v = std::get_if<Verdict>(&r.statements.back());
  return v != nullptr && v->kind == Verdict::Kind::go_to ? v->chain : "";
}

bool elements_name(const Set& s, const std::string& ifname) {
  for (const auto& e : s.elements) {
    if (!e.key.empty() && e.key[0].value == ifname_bytes(ifname)) return true;
  }
  return false;
}

TEST(Compiler, EveryChainEndsWithAVerdictAndEveryDropIsCountedPerVmAndLogged) {
  auto policy = test_policy();
  Compiler c(policy, CompileOptions{});
  auto rs = c.compile({vm(4, trust::TrustLevel::untrusted)}, {}, kNow);
  for (const char* name : {"vm_out", "not_own_v4", "not_own_v6", "vm_out_plain", "untrusted_out", "semi_out",
                           "trusted_out", "vm_in", "vm_host"}) {
    const Chain* ch = find_chain(rs, name);
    ASSERT_NE(ch, nullptr) << name;
    ASSERT_FALSE(ch->rules.empty());
    const Rule& last = ch->rules.back();
    EXPECT_TRUE(is_drop(last) || is_accept(last) || !goto_target(last).empty()) << name;
    EXPECT_TRUE(last.matches.empty()) << "the last rule must catch everything: " << name;
    for (const auto& r : ch->rules) {
      EXPECT_FALSE(is_drop(r)) << name << ": drops go through a drop chain: " << r.comment;
      const std::string target = goto_target(r);
      if (target.empty()) continue;
      EXPECT_NE(find_chain(rs, target), nullptr) << name << " goes to a missing chain " << target;
    }
  }
  // Each drop chain counts the packet for the VM it belongs to (a rule of
  // its own, so a full counter set cannot skip the drop), then logs with
  // its reason and drops whatever comes.
  int drop_chains = 0;
  for (const auto& ch : rs.tables[0].chains) {
    if (ch.name.rfind("drop_", 0) != 0) continue;
    ++drop_chains;
    ASSERT_EQ(ch.rules.size(), 2U) << ch.name;
    const auto* count = std::get_if<CountUpdate>(&ch.rules[0].statements.at(0));
    ASSERT_NE(count, nullptr) << ch.name;
    EXPECT_EQ(count->set, "drops");
    EXPECT_EQ(Compiler::drop_chain(count->tag), ch.name);
    EXPECT_EQ(count->key, count->tag == "inbound" ? Field::oifname : Field::iifname);
    EXPECT_TRUE(is_drop(ch.rules[1]));
    EXPECT_TRUE(ch.rules[1].matches.empty());
    bool logged = false;
    for (const auto& st : ch.rules[1].statements) {
      if (const auto* l = std::get_if<Log>(&st)) logged = l->prefix == "sg? " + count->tag + " ";
    }
    EXPECT_TRUE(logged) << ch.name;
  }
  EXPECT_GE(drop_chains, 15);
}

TEST(Compiler, AVmIsElementsOnlyNoRuleOfItsOwn) {
  // What makes adding or removing a VM cost the same at any scale: the
  // chains are the same with 1 VM or 3, only the sets' elements differ.
  auto policy = test_policy();
  Compiler c(policy, CompileOptions{});
  auto one = c.compile({vm(1, trust::TrustLevel::untrusted)}, {}, kNow);
  auto three = c.compile(
      {vm(1, trust::TrustLevel::untrusted), vm(2, trust::TrustLevel::semi_trusted), vm(3, trust::TrustLevel::trusted)},
      {}, kNow);
  ASSERT_EQ(one.tables[0].chains.size(), three.tables[0].chains.size());
  for (std::size_t i = 0; i < one.tables[0].chains.size(); ++i) {
    EXPECT_EQ(to_nft_text(one.tables[0].chains[i]), to_nft_text(three.tables[0].chains[i]));
  }
  auto plan = c.plan_add_vm(vm(9, trust::TrustLevel::semi_trusted), {}, kNow);
  for (const auto& op : plan.ops) {
    EXPECT_TRUE(op.kind == Op::Kind::add_elements || op.kind == Op::Kind::add_quota) << to_nft_text(plan);
    if (op.kind == Op::Kind::add_elements) {
      EXPECT_FALSE(op.set.key.empty()) << op.name << ": the op must carry the set's layout";
    }
  }
  // Its identity, in the sets the chains look up.
  EXPECT_TRUE(elements_name(*find_set(three, "vm_mac"), "sg2"));
  EXPECT_TRUE(elements_name(*find_set(three, "vm_addr_v4"), "sg2"));
  EXPECT_TRUE(elements_name(*find_set(three, "vm_client_v4"), "sg2"));
  EXPECT_TRUE(elements_name(*find_set(three, "level_semi"), "sg2"));
  EXPECT_FALSE(elements_name(*find_set(three, "level_semi"), "sg1"));
  EXPECT_TRUE(elements_name(*find_set(three, "level_trusted"), "sg3"));
  EXPECT_TRUE(elements_name(*find_set(three, "vm_quota"), "sg1"));
  const Set* mark = find_set(three, "vm_mark");
  ASSERT_EQ(mark->elements.size(), 3U);
  EXPECT_EQ(mark->elements[1].data, host32_bytes(2));
  const Set* syn = find_set(three, "vm_mark_synonly");
  ASSERT_EQ(syn->elements.size(), 1U);
  EXPECT_EQ(syn->elements[0].data, host32_bytes(2U | kSynOnlyMark));
}

TEST(Compiler, LevelsEndAsTheyShould) {
  auto policy = test_policy();
  Compiler c(policy, CompileOptions{});
  auto rs = c.compile(
      {vm(1, trust::TrustLevel::untrusted), vm(2, trust::TrustLevel::semi_trusted), vm(3, trust::TrustLevel::trusted)},
      {}, kNow);
  EXPECT_EQ(goto_target(find_chain(rs, "untrusted_out")->rules.back()), "drop_not_allowed");
  EXPECT_EQ(goto_target(find_chain(rs, "semi_out")->rules.back()), "drop_not_allowed");
  EXPECT_TRUE(is_accept(find_chain(rs, "trusted_out")->rules.back()));
  // vm_out picks the level chain by the level sets, untrusted by default.
  const auto& out = find_chain(rs, "vm_out")->rules;
  ASSERT_GE(out.size(), 3U);
  EXPECT_EQ(out[out.size() - 3].matches.at(0).set, "level_trusted");
  EXPECT_EQ(goto_target(out[out.size() - 3]), "trusted_out");
  EXPECT_EQ(out[out.size() - 2].matches.at(0).set, "level_semi");
  EXPECT_EQ(goto_target(out[out.size() - 2]), "semi_out");
  EXPECT_EQ(goto_target(out.back()), "untrusted_out");
  // Only the semi-trusted chain consults the allowlists.
  auto uses = [&](const char* chain, const char* set) {
    for (const auto& r : find_chain(rs, chain)->rules) {
      for (const auto& m : r.matches) {
        if (m.set == set) return true;
      }
    }
    return false;
  };
  EXPECT_TRUE(uses("semi_out", "semi_tcp_v4"));
  EXPECT_FALSE(uses("untrusted_out", "semi_tcp_v4"));
  EXPECT_FALSE(uses("trusted_out", "semi_tcp_v4"));
  // Guardrails hold for every level: in vm_out, before anything accepts or
  // goes on to a level chain.
  EXPECT_TRUE(uses("vm_out", "reserved_v4"));
  EXPECT_TRUE(uses("vm_out", "reserved_v6"));
  EXPECT_TRUE(uses("vm_out", "block_v6"));
  EXPECT_TRUE(uses("vm_out", "closed_ports"));
  bool seen_accept = false;
  for (const auto& r : out) {
    bool guard = false;
    for (const auto& m : r.matches) guard = guard || m.set == "reserved_v4" || m.set == "closed_ports";
    if (guard) {
      EXPECT_FALSE(seen_accept) << "a guardrail after an accept";
    }
    const std::string target = goto_target(r);
    if (target == "vm_out_plain") continue;  // established flows only: below
    seen_accept = seen_accept || is_accept(r) || target.find("_out") != std::string::npos;
  }
  // The short path of established plain flows keeps what acts on every
  // packet: the quota, then accept. The guardrails (block list, reserved
  // destinations, closed ports) are properties of the flow, checked on its
  // first packet; when they change, the daemon ends the flows they now
  // forbid (Enforcer::end_flows_now_forbidden). IP options and IPv6 routing
  // headers keep a packet off it (below).
  const auto& plain = find_chain(rs, "vm_out_plain")->rules;
  ASSERT_EQ(plain.size(), 2U);
  EXPECT_NE(std::get_if<QuotaMap>(&plain[0].statements.at(0)), nullptr);
  EXPECT_TRUE(is_accept(plain.back()));
  // It is entered from from_vm only by an established TCP or UDP flow
  // (established pings still meet the level's meters) without IPv4 options
  // or an IPv6 routing header, in its original direction, whose mark, tap
  // and MAC are one VM's plain-flow element.
  std::vector<std::string> entries;
  for (const auto& c : rs.tables[0].chains) {
    for (const auto& r : c.rules) {
      if (goto_target(r) != "vm_out_plain") continue;
      EXPECT_EQ(c.name, "from_vm");
      entries.push_back(to_nft_text(r));
    }
  }
  ASSERT_EQ(entries.size(), 4U);
  const char* const heads[] = {"@nh,0,8 0x45 meta l4proto tcp", "@nh,0,8 0x45 meta l4proto udp",
                               "meta nfproto ipv6 meta l4proto tcp exthdr rt missing",
                               "meta nfproto ipv6 meta l4proto udp exthdr rt missing"};
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(entries[i].rfind(std::string(heads[i]) +
                                   " meta priority set iifname . ether saddr . ct mark . ct state . ct direction "
                                   "map @vm_plain goto vm_out_plain",
                               0),
              0U)
        << entries[i];
  }
  // Every packet from a tap is taken to from_vm first, and from_vm gives a
  // verdict for all of them but a tunnel device's: replies are passed early
  // only after that, so a VM cannot slip a spoofed "reply" into another
  // VM's flow.
  const auto& fwd = find_chain(rs, "forward")->rules;
  ASSERT_FALSE(fwd.empty());
  EXPECT_EQ(to_nft_text(fwd[0]).rfind("iifname \"sg*\" jump from_vm", 0), 0U) << to_nft_text(fwd[0]);
  std::size_t replies = fwd.size();
  for (std::size_t i = 0; i < fwd.size(); ++i) {
    if (to_nft_text(fwd[i]).find("@vm_plain_in") != std::string::npos) replies = i;
  }
  ASSERT_LT(replies, fwd.size());
  EXPECT_GT(replies, 0U);
  EXPECT_EQ(to_nft_text(fwd[replies])
                .rfind("meta priority set oifname . ct mark . ct state . ct direction map "
                       "@vm_plain_in accept",
                       0),
            0U)
      << to_nft_text(fwd[replies]);
  const auto& from_vm = find_chain(rs, "from_vm")->rules;
  ASSERT_FALSE(from_vm.empty());
  EXPECT_EQ(
      to_nft_text(from_vm.back()).rfind("iifname != \"sgt*\" counter log group 1 prefix \"sg? no-chain \" drop", 0), 0U)
      << to_nft_text(from_vm.back());
  // The element is the VM's id with the plain bit, not a SYN-only probe's,
  // established, in the original direction; its reply element the same in
  // the reply direction.
  // (Each key ends in mark . state . direction.)
  auto expect_plain_element = [&](const char* set, std::size_t parts, std::uint8_t direction) {
    SCOPED_TRACE(set);
    const Set* ps = find_set(rs, set);
    ASSERT_NE(ps, nullptr);
    ASSERT_FALSE(ps->elements.empty());
    const auto& key = ps->elements[0].key;
    ASSERT_EQ(key.size(), parts);
    EXPECT_EQ(key.at(parts - 3).value, host32_bytes(1U | kPlainFlowMark));
    EXPECT_EQ(key.at(parts - 2).value, host32_bytes(kCtEstablished));
    EXPECT_EQ(key.at(parts - 1).value, u8_bytes(direction));
  };
  expect_plain_element("vm_plain", 5U, 0);
  expect_plain_element("vm_plain_in", 4U, 1);
}

TEST(Compiler, SharedSetsCarryThePolicy) {
  auto policy = test_policy();
  Compiler c(policy, CompileOptions{});
  auto rs = c.compile({}, {}, kNow);
  const Set* block = find_set(rs, "block_v4");
  ASSERT_NE(block, nullptr);
  ASSERT_EQ(block->elements.size(), 1U);
  EXPECT_EQ(block->elements[0].key[0].value, address_bytes(*IpAddress::parse("203.0.113.128")));
  EXPECT_EQ(block->elements[0].key[0].value_hi, address_bytes(*IpAddress::parse("203.0.113.255")));
  const Set* semi = find_set(rs, "semi_tcp_v4");
  ASSERT_NE(semi, nullptr);
  EXPECT_EQ(semi->elements.size(), 2U);  // two port ranges of one prefix
  EXPECT_EQ(find_set(rs, "semi_tcp_v6")->elements.size(), 1U);
  // The fail-closed catch-all exists with no VM at all.
  const Chain* fwd = find_chain(rs, "forward");
  ASSERT_NE(fwd, nullptr);
  ASSERT_TRUE(fwd->base.has_value());
  EXPECT_TRUE(is_drop(fwd->rules.back()));
  EXPECT_TRUE(is_drop(find_chain(rs, "input")->rules.back()));
}

TEST(Compiler, HoleBecomesATimedElementOfItsVm) {
  auto policy = test_policy();
  Compiler c(policy, CompileOptions{});
  // A prefix and a port range: the interval map.
  Hole h{9, "sg1", *Prefix::parse("203.0.113.0/28"), IPPROTO_UDP, trust::PortRange{5000, 5010}, kNow + 90};
  auto plan = c.plan_add_hole(vm(1, trust::TrustLevel::untrusted), h, kNow);
  ASSERT_EQ(plan.ops.size(), 1U);
  EXPECT_EQ(plan.ops[0].kind, Op::Kind::add_elements);
  EXPECT_EQ(plan.ops[0].name, "holes_v4_range");
  EXPECT_TRUE(plan.ops[0].set.interval);
  ASSERT_EQ(plan.ops[0].elements.size(), 1U);
  const auto& e = plan.ops[0].elements[0];
  EXPECT_EQ(e.timeout_ms, 90000U);
  ASSERT_EQ(e.key.size(), 4U);
  EXPECT_EQ(e.key[0].value, ifname_bytes("sg1"));
  EXPECT_EQ(e.key[1].value_hi, address_bytes(*IpAddress::parse("203.0.113.15")));
  EXPECT_EQ(e.key[2].value, u8_bytes(IPPROTO_UDP));
  EXPECT_EQ(e.key[3].value, be16_bytes(5000));
  EXPECT_EQ(e.key[3].value_hi, be16_bytes(5010));
  auto rm = c.plan_remove_hole(vm(1, trust::TrustLevel::untrusted), h, kNow);
  ASSERT_EQ(rm.ops.size(), 1U);
  EXPECT_EQ(rm.ops[0].kind, Op::Kind::delete_elements);
  // One address, one protocol, one port: the hash map, no range anywhere.
  Hole exact{10, "sg1", *Prefix::parse("203.0.113.9"), IPPROTO_TCP, trust::PortRange{443, 443}, 0};
  auto plan2 = c.plan_add_hole(vm(1, trust::TrustLevel::untrusted), exact, kNow);
  ASSERT_EQ(plan2.ops.size(), 1U);
  EXPECT_EQ(plan2.ops[0].name, "holes_v4");
  EXPECT_FALSE(plan2.ops[0].set.interval);
  for (const auto& part : plan2.ops[0].elements.at(0).key) EXPECT_TRUE(part.value_hi.empty());
  EXPECT_FALSE(plan2.ops[0].elements[0].timeout_ms.has_value());
  // Any protocol: every protocol and port.
  Hole any{11, "sg1", *Prefix::parse("2001:db8:9::1"), 0, trust::PortRange{0, 0}, 0};
  auto plan3 = c.plan_add_hole(vm(1, trust::TrustLevel::untrusted), any, kNow);
  ASSERT_EQ(plan3.ops.size(), 1U);
  EXPECT_EQ(plan3.ops[0].name, "holes_v6_range");
  EXPECT_EQ(plan3.ops[0].elements.at(0).key[2].value_hi, u8_bytes(255));
}

// A prefix of a common length with one protocol and one port: the hash map
// of that length, keyed by the network address; the rule masks the packet's
// destination to the same length. Other lengths keep the interval map.
TEST(Compiler, PrefixHoleOfACommonLengthGoesToTheHashMapOfThatLength) {
  auto policy = test_policy();
  Compiler c(policy, CompileOptions{});
  const VmNet v = vm(1, trust::TrustLevel::untrusted);
  struct Case {
    const char* prefix;
    const char* map;
    const char* key_address;  // empty: an interval
  };
  const Case cases[] = {
      {"198.51.100.7/32", "holes_v4", "198.51.100.7"},
      {"198.51.100.0/24", "holes_v4_p24", "198.51.100.0"},
      {"198.51.0.0/16", "holes_v4_p16", "198.51.0.0"},
      {"198.51.100.0/25", "holes_v4_range", ""},
      {"2001:db8::1/128", "holes_v6", "2001:db8::1"},
      {"2001:db8:1:2::/64", "holes_v6_p64", "2001:db8:1:2::"},
      {"2001:db8:1:200::/56", "holes_v6_p56", "2001:db8:1:200::"},
      {"2001:db8:1::/48", "holes_v6_p48", "2001:db8:1::"},
      {"2001:db8:1::/60", "holes_v6_range", ""},
  };
  for (const Case& k : cases) {
    auto p = Prefix::parse(k.prefix);
    ASSERT_TRUE(p.ok()) << k.prefix;
    Hole h{20, "sg1", *p, IPPROTO_TCP, trust::PortRange{443, 443}, kNow + 60};
    auto plan = c.plan_add_hole(v, h, kNow);
    ASSERT_EQ(plan.ops.size(), 1U) << k.prefix;
    EXPECT_EQ(plan.ops[0].name, k.map) << k.prefix;
    const auto& key = plan.ops[0].elements.at(0).key;
    ASSERT_EQ(key.size(), 4U);
    if (*k.key_address != 0) {
      EXPECT_FALSE(plan.ops[0].set.interval) << k.prefix;
      EXPECT_EQ(key[1].value, address_bytes(*IpAddress::parse(k.key_address))) << k.prefix;
      for (const auto& part : key) EXPECT_TRUE(part.value_hi.empty()) << k.prefix;
    } else {
      EXPECT_TRUE(plan.ops[0].set.interval) << k.prefix;
      EXPECT_FALSE(key[1].value_hi.empty()) << k.prefix;
    }
    // Removal takes the element out of the same map.
    auto rm = c.plan_remove_hole(v, h, kNow);
    ASSERT_EQ(rm.ops.size(), 1U);
    EXPECT_EQ(rm.ops[0].name, k.map) << k.prefix;
  }
  // A port range or any protocol keeps a /24 in the interval map.
  Hole ports{21, "sg1", *Prefix::parse("198.51.100.0/24"), IPPROTO_TCP, trust::PortRange{80, 81}, 0};
  EXPECT_EQ(c.plan_add_hole(v, ports, kNow).ops.at(0).name, "holes_v4_range");
  Hole any{22, "sg1", *Prefix::parse("198.51.100.0/24"), 0, trust::PortRange{0, 0}, 0};
  EXPECT_EQ(c.plan_add_hole(v, any, kNow).ops.at(0).name, "holes_v4_range");
  // The rule that reads the /24 map masks the destination to 24 bits.
  const std::string text = to_nft_text(c.compile({v}, {}, kNow));
  EXPECT_NE(text.find("set iifname . (ip daddr & 255.255.255.0) . meta l4proto . th dport map @holes_v4_p24 accept"),
            std::string::npos)
      << text;
  EXPECT_NE(
      text.find("iifname . (ip6 daddr & ffff:ffff:ffff:ffff::) . meta l4proto . th dport map @holes_v6_p64 accept"),
      std::string::npos);
}

TEST(Compiler, AddVmJoinsVmsLastRemoveVmLeavesItFirst) {
  auto policy = test_policy();
  Compiler c(policy, CompileOptions{});
  auto v = vm(5, trust::TrustLevel::untrusted);
  Hole h{12, "sg5", *Prefix::parse("203.0.113.9"), IPPROTO_TCP, trust::PortRange{443, 443}, kNow + 60};
  auto add = c.plan_add_vm(v, {h}, kNow);
  ASSERT_FALSE(add.ops.empty());
  EXPECT_EQ(add.ops.back().name, "vms");
  for (std::size_t i = 0; i + 1 < add.ops.size(); ++i) EXPECT_NE(add.ops[i].name, "vms");
  // The quota object exists before the map element that names it.
  EXPECT_EQ(add.ops[0].kind, Op::Kind::add_quota);
  auto rm = c.plan_remove_vm(v, {h});
  ASSERT_FALSE(rm.ops.empty());
  EXPECT_EQ(rm.ops[0].kind, Op::Kind::delete_elements);
  EXPECT_EQ(rm.ops[0].name, "vms");
  // Its holes go too, without failing on those the kernel already expired;
  // the quota goes after the element that names it.
  bool holes_destroyed = false;
  for (const auto& op : rm.ops) {
    if (op.name == "holes_v4") holes_destroyed = op.kind == Op::Kind::destroy_elements;
  }
  EXPECT_TRUE(holes_destroyed) << to_nft_text(rm);
  EXPECT_EQ(rm.ops.back().kind, Op::Kind::delete_quota);
}

// What a release purges of the sets the packet path fills: each as
// declared, keyed by the interface first.
TEST(Compiler, PacketPathSetsAreTheDynamicOnesKeyedByInterface) {
  auto policy = test_policy();
  Compiler c(policy, CompileOptions{});
  std::vector<std::string> names;
  for (const Set& s : c.packet_path_sets()) {
    names.push_back(s.name);
    EXPECT_TRUE(s.dynamic) << s.name;
    ASSERT_FALSE(s.key.empty());
    EXPECT_EQ(s.key[0], KeyType::ifname) << s.name;
  }
  EXPECT_EQ(names,
            (std::vector<std::string>{"dst_pps_v4", "dst_bps_v4", "dst_pps_v6", "dst_bps_v6", "syn_rate", "drops"}));
}

TEST(Compiler, OwnerIpv4OnlyDropsIpv6OfEveryVm) {
  auto p = trust::parse_policy("[owner]\naddress_families = \"ipv4\"\n", "p.toml");
  ASSERT_TRUE(p.ok()) << p.error().message;
  Compiler c(*p, CompileOptions{});
  auto rs = c.compile({vm(1, trust::TrustLevel::trusted)}, {}, kNow);
  EXPECT_TRUE(elements_name(*find_set(rs, "vm_ipv4"), "sg1"));
  EXPECT_FALSE(elements_name(*find_set(rs, "vm_ipv6"), "sg1"));
  EXPECT_FALSE(elements_name(*find_set(rs, "vm_addr_v6"), "sg1"));
  // Its IPv6 is not its own address (no element): the miss chain tells a
  // family the VM has no address in from a spoofed one.
  bool checked = false;
  for (const auto& r : find_chain(rs, "vm_out")->rules) {
    if (goto_target(r) == "not_own_v6") checked = true;
  }
  EXPECT_TRUE(checked);
  const auto& miss = find_chain(rs, "not_own_v6")->rules;
  ASSERT_EQ(miss.size(), 2U);
  EXPECT_EQ(goto_target(miss[0]), "drop_family");
  EXPECT_EQ(miss[0].matches.at(0).set, "vm_ipv6");
  EXPECT_EQ(goto_target(miss[1]), "drop_spoof_ip");
}

}  // namespace
}  // namespace sg::netpolicy
