// Tier 1: the nft text of every Field, Match::Op, Statement, set kind and
// element kind, and the op order of plan_replace. The integration tests
// prove that the kernel agrees with this text; these pin the text itself.
#include <gtest/gtest.h>

#include <cstring>

#include "netpolicy/ruleset.h"
#include "tests/unit/netpolicy/sample_ruleset.h"

namespace sg::netpolicy {
namespace {

using namespace sample;  // NOLINT(google-build-using-namespace): test-only builders

std::string text(Match m) { return to_nft_text(Rule{{std::move(m)}, {}, ""}); }
std::string text(Statement s) { return to_nft_text(Rule{{}, {std::move(s)}, ""}); }

TEST(BytesTest, Helpers) {
  EXPECT_EQ(ifname_bytes("sg3"), (Bytes{'s', 'g', '3', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(ifname_bytes("a-very-long-interface-name").size(), 16U);
  EXPECT_EQ(ifname_bytes("a-very-long-interface-name")[15], 0);
  EXPECT_EQ(u8_bytes(6), Bytes{6});
  EXPECT_EQ(be16_bytes(0x1234), (Bytes{0x12, 0x34}));
  EXPECT_EQ(be32_bytes(0x01020304), (Bytes{1, 2, 3, 4}));
  std::uint32_t v = 0;
  auto h = host32_bytes(0x01020304);
  std::memcpy(&v, h.data(), 4);
  EXPECT_EQ(v, 0x01020304U);
  EXPECT_EQ(address_bytes(ip("198.51.100.7")), (Bytes{198, 51, 100, 7}));
  EXPECT_EQ(address_bytes(ip("2001:db8::1")).size(), 16U);
  EXPECT_EQ(mac_bytes("52:54:00:aa:bb:cc"), (Bytes{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc}));
  EXPECT_TRUE(mac_bytes("52:54:00:aa:bb").empty());
  EXPECT_TRUE(mac_bytes("52:54:00:aa:bb:cc:dd").empty());
}

TEST(RuleTextTest, EveryField) {
  EXPECT_EQ(text(eq(Field::iifname, ifname_bytes("sg3"))), "iifname \"sg3\"");
  EXPECT_EQ(text(eq(Field::oifname, ifname_bytes("eth0"))), "oifname \"eth0\"");
  EXPECT_EQ(text(eq(Field::nfproto, u8_bytes(2))), "meta nfproto ipv4");
  EXPECT_EQ(text(eq(Field::nfproto, u8_bytes(10))), "meta nfproto ipv6");
  EXPECT_EQ(text(eq(Field::l4proto, u8_bytes(6))), "meta l4proto tcp");
  EXPECT_EQ(text(eq(Field::l4proto, u8_bytes(17))), "meta l4proto udp");
  EXPECT_EQ(text(eq(Field::l4proto, u8_bytes(1))), "meta l4proto icmp");
  EXPECT_EQ(text(eq(Field::l4proto, u8_bytes(58))), "meta l4proto ipv6-icmp");
  EXPECT_EQ(text(eq(Field::l4proto, u8_bytes(200))), "meta l4proto 200");
  EXPECT_EQ(text(eq(Field::ether_saddr, vm_mac())), "ether saddr 52:54:00:00:00:03");
  EXPECT_EQ(text(eq(Field::ip_saddr, addr("198.51.100.3"))), "ip saddr 198.51.100.3");
  EXPECT_EQ(text(eq(Field::ip_daddr, addr("203.0.113.7"))), "ip daddr 203.0.113.7");
  EXPECT_EQ(text(eq(Field::ip6_saddr, addr("2001:db8::3"))), "ip6 saddr 2001:db8::3");
  EXPECT_EQ(text(eq(Field::ip6_daddr, addr("2001:db8::1"))), "ip6 daddr 2001:db8::1");
  EXPECT_EQ(text(neq(Field::ip_hdrlength, u8_bytes(5))), "ip hdrlength != 5");
  EXPECT_EQ(text(neq(Field::ip_frag_off, be16_bytes(0))), "ip frag-off & 0x1fff != 0");
  EXPECT_EQ(text(eq(Field::ip_frag_off, be16_bytes(0))), "ip frag-off & 0x1fff == 0");
  EXPECT_EQ(text(eq(Field::th_dport, be16_bytes(443))), "th dport 443");
  EXPECT_EQ(text(eq(Field::tcp_flags, u8_bytes(kTcpSyn))), "tcp flags == syn");
  EXPECT_EQ(text(eq(Field::icmp_type, u8_bytes(8))), "icmp type echo-request");
  EXPECT_EQ(text(eq(Field::icmp_type, u8_bytes(99))), "icmp type 99");
  EXPECT_EQ(text(eq(Field::icmpv6_type, u8_bytes(135))), "icmpv6 type nd-neighbor-solicit");
  EXPECT_EQ(text(eq(Field::icmpv6_type, u8_bytes(136))), "icmpv6 type nd-neighbor-advert");
  EXPECT_EQ(text(neq(Field::icmpv6_nd_target, addr("2001:db8::3"))),
            "@th,64,128 != 0x20010db8000000000000000000000003");
  EXPECT_EQ(text(eq(Field::ct_state, host32_bytes(kCtNew))), "ct state == new");
  EXPECT_EQ(text(eq(Field::ct_mark, host32_bytes(3))), "ct mark 0x00000003");
  EXPECT_EQ(text(eq(Field::arp_sip, addr("198.51.100.3"))), "arp saddr ip 198.51.100.3");
  EXPECT_EQ(text(eq(Field::arp_sha, vm_mac())), "arp saddr ether 52:54:00:00:00:03");
  EXPECT_EQ(text(eq(Field::ip6_exthdr_routing, u8_bytes(1))), "exthdr rt exists");
  EXPECT_EQ(text(eq(Field::ip6_exthdr_fragment, u8_bytes(1))), "exthdr frag exists");
  EXPECT_EQ(text(neq(Field::ip6_exthdr_fragment, u8_bytes(1))), "exthdr frag missing");
}

TEST(RuleTextTest, EveryOp) {
  EXPECT_EQ(text(neq(Field::ip_saddr, addr("198.51.100.3"))), "ip saddr != 198.51.100.3");
  EXPECT_EQ(text(prefix(Field::ip_daddr, addr("10.0.0.0"), 8)), "ip daddr 10.0.0.0/8");
  EXPECT_EQ(text(prefix(Field::ip6_saddr, addr("2001:db8::"), 32, true)), "ip6 saddr != 2001:db8::/32");
  EXPECT_EQ(text(prefix(Field::iifname, ifname_bytes("sg"), 16)), "iifname \"sg*\"");
  EXPECT_EQ(text(prefix(Field::oifname, ifname_bytes("sg"), 16, true)), "oifname != \"sg*\"");
  EXPECT_EQ(text(range(Field::th_dport, be16_bytes(1), be16_bytes(1023))), "th dport 1-1023");
  EXPECT_EQ(text(in_set({Field::ip_daddr}, "reserved_v4")), "ip daddr @reserved_v4");
  EXPECT_EQ(text(in_set({Field::ip_daddr}, "reserved_v4", true)), "ip daddr != @reserved_v4");
  EXPECT_EQ(text(in_set({Field::ip_daddr, Field::l4proto, Field::th_dport}, "holes_v4")),
            "ip daddr . meta l4proto . th dport @holes_v4");
  // A masked key field is parenthesized, so nft 1.0.6 parses it back.
  EXPECT_EQ(text(masked_in_set({Field::iifname, Field::ip_daddr, Field::th_dport}, "h", {0, 24})),
            "iifname . (ip daddr & 255.255.255.0) . th dport @h");
  EXPECT_EQ(text(masked_in_set({Field::ip6_saddr}, "h", {48})), "(ip6 saddr & ffff:ffff:ffff::) @h");
  EXPECT_EQ(text(masked_in_set({Field::ip_daddr}, "h", {32})), "ip daddr @h");  // the whole field
  EXPECT_EQ(text(vmap(Field::iifname, "from_vm")), "iifname vmap @from_vm");
  EXPECT_EQ(text(any_bits(Field::ct_state, host32_bytes(kCtEstablished | kCtRelated))), "ct state established,related");
  EXPECT_EQ(text(any_bits(Field::tcp_flags, u8_bytes(kTcpSyn))), "tcp flags syn");
  EXPECT_EQ(text(masked_eq(Field::tcp_flags, u8_bytes(kTcpSyn), u8_bytes(kTcpSyn | kTcpAck))),
            "tcp flags & (syn|ack) == syn");
  EXPECT_EQ(text(masked_eq(Field::tcp_flags, u8_bytes(0), u8_bytes(kTcpSyn))), "tcp flags & syn == 0");
  EXPECT_EQ(text(masked_eq(Field::tcp_flags, u8_bytes(kTcpSyn | kTcpAck), u8_bytes(kTcpSyn | kTcpAck))),
            "tcp flags & (syn|ack) == syn,ack");
}

TEST(RuleTextTest, EveryStatement) {
  EXPECT_EQ(text(Counter{}), "counter");
  EXPECT_EQ(text(Log{1, "sg3 spoof-mac "}), "log group 1 prefix \"sg3 spoof-mac \"");
  EXPECT_EQ(text(Log{4, ""}), "log group 4");
  EXPECT_EQ(text(Limit{10, false, 5, true}), "limit rate over 10/second burst 5 packets");
  EXPECT_EQ(text(Limit{10, false, 0, false}), "limit rate 10/second");
  EXPECT_EQ(text(Limit{1250000, true, 10000, true}), "limit rate over 1250000 bytes/second burst 10000 bytes");
  EXPECT_EQ(text(QuotaRef{"q3"}), "quota name \"q3\"");
  EXPECT_EQ(text(CtMarkSet{3}), "ct mark set 0x00000003");
  EXPECT_EQ(text(PrioritySet{(1U << 16U) | 0xaU}), "meta priority set 1:a");
  EXPECT_EQ(text(PrioritySet{(0x10U << 16U) | 0x11U}), "meta priority set 10:11");
  EXPECT_EQ(text(MeterUpdate{"m4", Field::ip_daddr, 24, Limit{2, false, 2, true}}),
            "update @m4 { ip daddr & 255.255.255.0 limit rate over 2/second burst 2 packets }");
  EXPECT_EQ(text(MeterUpdate{"m6", Field::ip6_daddr, 64, Limit{2, false, 2, true}}),
            "update @m6 { ip6 daddr & ffff:ffff:ffff:ffff:: limit rate over 2/second burst 2 packets }");
  EXPECT_EQ(text(MeterUpdate{"m4", Field::ip_saddr, 0, Limit{5, false, 0, true}}),
            "update @m4 { ip saddr limit rate over 5/second }");
  EXPECT_EQ(text(Verdict{Verdict::Kind::accept, ""}), "accept");
  EXPECT_EQ(text(Verdict{Verdict::Kind::drop, ""}), "drop");
  EXPECT_EQ(text(Verdict{Verdict::Kind::jump, "x"}), "jump x");
  EXPECT_EQ(text(Verdict{Verdict::Kind::go_to, "x"}), "goto x");
  EXPECT_EQ(text(Verdict{Verdict::Kind::ret, ""}), "return");
}

TEST(RuleTextTest, FullRuleAndComments) {
  Rule r = rule({neq(Field::ether_saddr, vm_mac())}, {Counter{}, Log{1, "sg3 spoof-mac "}, drop()},
                "sg3: source MAC is not the VM's");
  EXPECT_EQ(to_nft_text(r),
            "ether saddr != 52:54:00:00:00:03 counter log group 1 prefix \"sg3 spoof-mac \" drop comment \"sg3: "
            "source MAC is not the VM's\"");
  // Quotes cannot appear in nft strings, and comments stop at 127 bytes
  // without cutting a UTF-8 character in half.
  r = rule({}, {accept()}, "say \"hi\"");
  EXPECT_EQ(to_nft_text(r), "accept comment \"say 'hi'\"");
  r = rule({}, {accept()}, std::string(126, 'a') + "\xc3\xa9" + "tail");
  EXPECT_EQ(to_nft_text(r), "accept comment \"" + std::string(126, 'a') + "\"");
}

TEST(TableTextTest, SetsMapsQuotasChains) {
  const std::string t = to_nft_text(inet_table());
  auto has = [&t](const std::string& s) { EXPECT_NE(t.find(s), std::string::npos) << s << "\nin\n" << t; };
  has("table inet surrogated {\n\tquota q3 {\n\t\tover 1073741824 bytes\n\t}\n");
  has("\tquota q4 {\n\t\tover 5000000 bytes used 1000 bytes\n\t}\n");
  has("\tset reserved_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.0.0.0/8, 100.64.0.0/10, "
      "198.51.100.10-198.51.100.20, 203.0.113.5, 240.0.0.0/4 }\n\t}\n");
  has("elements = { ::ffff:0.0.0.0/96, fc00::/7 }");
  has("\t\ttype ipv4_addr . inet_proto . inet_service\n\t\tflags interval,timeout\n\t\telements = { 198.51.100.0/24 . "
      "tcp . 80-90 timeout 1h30m comment \"authcert 7\", 203.0.113.7 . udp . 53 }");
  has("\t\ttype ipv6_addr . inet_proto . inet_service\n\t\tflags timeout\n\t\telements = { 2001:db8::7 . tcp . 443 "
      "timeout 10m }");
  has("\tset meter_v4 {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 1m\n\t}\n");
  has("\tset meter_v6 {\n\t\ttype ipv6_addr\n\t\tsize 1024\n\t\tflags dynamic\n\t}\n");
  has("\t\ttype ether_addr\n\t\telements = { 52:54:00:00:00:03 }");
  has("\t\ttype ifname\n\t\telements = { \"sg3\", \"sg4\" }");
  has("\t\ttype inet_proto\n\t\telements = { tcp, udp }");
  has("\t\ttype inet_service\n\t\tflags interval\n\t\telements = { 1-52, 31337 }");
  has("\tmap from_vm {\n\t\ttype ifname : verdict\n\t\telements = { \"sg3\" : goto vm_sg3_out }\n\t}\n");
  has("\tchain forward {\n\t\ttype filter hook forward priority -10; policy accept;\n\t\tct state "
      "established,related accept\n\t\tiifname vmap @from_vm\n");
  has("\tchain vm_common {\n\t\tmeta l4proto gre drop\n\t\treturn\n\t}\n}\n");
  EXPECT_EQ(to_nft_text(arp_table()),
            "table arp surrogated {\n\tchain arp_in {\n\t\ttype filter hook input priority 0; policy drop;\n"
            "\t\tarp saddr ip 198.51.100.3 arp saddr ether 52:54:00:00:00:03 iifname \"sg3\" accept comment \"sg3: "
            "own ARP\"\n\t\tarp saddr ether != 52:54:00:00:00:03 log group 2 prefix \"arp spoof \" drop\n"
            "\t\tarp saddr ip 198.51.100.0/24 counter accept\n\t}\n}\n");
}

TEST(TableTextTest, ElementTimeouts) {
  Set s{"t", {KeyType::ipv4_addr}, false, true};
  for (auto [ms, want] : std::vector<std::pair<std::uint64_t, std::string>>{
           {1000, "1s"}, {5400000, "1h30m"}, {90061001, "1d1h1m1s1ms"}, {250, "250ms"}, {0, "0s"}}) {
    SetElement e = elem({part(addr("192.0.2.1"))});
    e.timeout_ms = ms;
    s.elements = {e};
    Table t{TableFamily::inet, "x", {s}, {}, {}};
    EXPECT_NE(to_nft_text(t).find("192.0.2.1 timeout " + want + " }"), std::string::npos) << to_nft_text(t);
  }
}

TEST(PlanTest, ReplaceOrdersChainsBeforeQuotasBeforeSetsBeforeRules) {
  const Ruleset rs = full_ruleset();
  const Plan p = plan_replace(rs);
  std::vector<std::string> kinds;
  for (const auto& op : p.ops) {
    switch (op.kind) {
      case Op::Kind::add_table: kinds.push_back("T+"); break;
      case Op::Kind::delete_table: kinds.push_back("T-"); break;
      case Op::Kind::add_chain:
        kinds.push_back("C");
        EXPECT_TRUE(op.chain.rules.empty()) << "chains are added empty; rules follow once every set exists";
        break;
      case Op::Kind::add_set: kinds.push_back("S"); break;
      case Op::Kind::add_quota: kinds.push_back("Q"); break;
      case Op::Kind::add_rule: kinds.push_back("R"); break;
      default: kinds.push_back("?");
    }
  }
  // Quotas before sets: a quota map's elements name them.
  std::vector<std::string> want = {"T+", "T-", "T+", "C", "C", "C"};
  want.insert(want.end(), 2, "Q");
  want.insert(want.end(), 21, "S");
  want.insert(want.end(), 4 + 45 + 2, "R");
  want.insert(want.end(), {"T+", "T-", "T+", "C", "R", "R", "R"});
  EXPECT_EQ(kinds, want);
  EXPECT_EQ(p.ops[3].chain.base->priority, -10);
  EXPECT_EQ(p.ops.back().family, TableFamily::arp);
  EXPECT_EQ(p.ops.back().name, "arp_in");
  // Rules keep their chain order.
  EXPECT_EQ(p.ops[29].name, "forward");
  EXPECT_EQ(to_nft_text(p.ops[29].rule), to_nft_text(rs.tables[0].chains[0].rules[0]));
}

TEST(PlanTest, Text) {
  Plan p;
  Op add_el;
  add_el.kind = Op::Kind::add_elements;
  add_el.table = "surrogated";
  add_el.name = "holes_v4";
  add_el.set = Set{"holes_v4", {KeyType::ipv4_addr, KeyType::inet_proto, KeyType::inet_service}, true, true};
  SetElement e = elem({part(addr("192.0.2.0"), addr("192.0.2.255")), part(u8_bytes(6)), part(be16_bytes(22))});
  e.timeout_ms = 3600000;
  add_el.elements = {e};
  Op del_el = add_el;
  del_el.kind = Op::Kind::delete_elements;
  Op flush;
  flush.kind = Op::Kind::flush_set;
  flush.table = "surrogated";
  flush.name = "holes_v4";
  Op del_chain = flush;
  del_chain.kind = Op::Kind::delete_chain;
  del_chain.name = "vm_sg3_out";
  Op flush_chain = del_chain;
  flush_chain.kind = Op::Kind::flush_chain;
  Op del_set = flush;
  del_set.kind = Op::Kind::delete_set;
  Op del_quota = flush;
  del_quota.kind = Op::Kind::delete_quota;
  del_quota.name = "q3";
  Op add_rule = del_chain;
  add_rule.kind = Op::Kind::add_rule;
  add_rule.rule = rule({eq(Field::l4proto, u8_bytes(17))}, {drop()});
  p.ops = {add_el, del_el, flush, flush_chain, add_rule, del_chain, del_set, del_quota};
  EXPECT_EQ(to_nft_text(p),
            "add element inet surrogated holes_v4 { 192.0.2.0/24 . tcp . 22 timeout 1h }\n"
            "delete element inet surrogated holes_v4 { 192.0.2.0/24 . tcp . 22 }\n"
            "flush set inet surrogated holes_v4\n"
            "flush chain inet surrogated vm_sg3_out\n"
            "add rule inet surrogated vm_sg3_out meta l4proto udp drop\n"
            "delete chain inet surrogated vm_sg3_out\n"
            "delete set inet surrogated holes_v4\n"
            "delete quota inet surrogated q3\n");
}

}  // namespace
}  // namespace sg::netpolicy
