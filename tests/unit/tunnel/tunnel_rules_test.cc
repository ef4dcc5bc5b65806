// The tunnel's rules from the pure compiler: where the mark is set, that
// guardrails come before the tunnel accept, the GRE drop, the dispatch and
// guard elements, and the client's masquerade table.
#include <gtest/gtest.h>

#include "netpolicy/compile.h"
#include "trust/parse.h"
#include "tunnel/client.h"

namespace sg::netpolicy {
namespace {

constexpr std::int64_t kNow = 1790000000;

VmNet vm(std::int64_t id, trust::TrustLevel level) {
  VmNet v;
  v.id = id;
  v.name = "sg" + std::to_string(id);
  v.mac = "52:54:00:00:00:01";
  v.v4 = *IpAddress::parse("198.51.100.6");
  v.gateway4 = *IpAddress::parse("198.51.100.5");
  v.v6 = *IpAddress::parse("2001:db8:5:1::2");
  v.gateway6 = *IpAddress::parse("2001:db8:5:1::1");
  v.level = level;
  v.client = {*Prefix::parse("203.0.113.2")};
  return v;
}

trust::Policy defaults() {
  auto p = trust::parse_policy("", "empty.toml");
  EXPECT_TRUE(p.ok());
  return *p;
}

CompileOptions with_tunnel(const std::string& vm_name) {
  CompileOptions o;
  o.tunnel_of = [vm_name](const std::string& n) -> std::optional<TunnelNet> {
    if (n == vm_name) return TunnelNet{"sgt1", 1472};
    return std::nullopt;
  };
  return o;
}

const Chain* chain(const Ruleset& rs, const std::string& name) {
  for (const auto& c : rs.tables[0].chains) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

std::size_t index_of(const Chain& c, const std::string& comment_part) {
  for (std::size_t i = 0; i < c.rules.size(); ++i) {
    if (c.rules[i].comment.find(comment_part) != std::string::npos) return i;
  }
  return c.rules.size();
}

TEST(TunnelRules, UntrustedEgressDropsGreBeforeTheClientAndAcceptsTheTunnelOnlyAfterEveryGuardrail) {
  trust::Policy policy = defaults();
  Compiler c(policy, with_tunnel("sg1"));
  auto rs = c.compile({vm(1, trust::TrustLevel::untrusted)}, {}, kNow);
  const Chain* out = chain(rs, "vm_out");
  ASSERT_NE(out, nullptr);
  auto gre = index_of(*out, "untrusted: drop GRE sent by the guest");
  auto client = index_of(*out, "its own client");
  ASSERT_LT(gre, out->rules.size());
  EXPECT_LT(gre, client);
  for (const char* guard : {"own address", "reserved", "block list", "closed ports"}) {
    EXPECT_LT(index_of(*out, guard), out->rules.size() - 3) << guard << ": before the level chains";
  }
  // The tunnel accept is in the untrusted chain, after its meters, right
  // before the final drop, and only for the VM's own tap, device and mark.
  const Chain* lvl = chain(rs, "untrusted_out");
  ASSERT_NE(lvl, nullptr);
  auto tunnel = index_of(*lvl, "into its own GRE tunnel");
  ASSERT_LT(tunnel, lvl->rules.size());
  for (const char* guard : {"TCP SYN/s", "per VM and destination"}) {
    EXPECT_LT(index_of(*lvl, guard), tunnel) << guard;
  }
  EXPECT_EQ(tunnel + 1, lvl->rules.size() - 1) << "the tunnel accept sits right before the final drop";
  EXPECT_EQ(to_nft_text(lvl->rules[tunnel]),
            "iifname . oifname . meta mark @tunnel_out ct mark set ct mark | 0x40000000 accept comment \"untrusted: "
            "everything else into its own GRE tunnel to its client\"");
  EXPECT_NE(to_nft_text(rs).find("\"sg1\" . \"sgt1\" . 0x40000001"), std::string::npos) << to_nft_text(rs);
}

TEST(TunnelRules, TrustedVmsKeepGreAndHaveNoTunnel) {
  trust::Policy policy = defaults();
  Compiler c(policy, with_tunnel("sg1"));
  auto rs = c.compile({vm(1, trust::TrustLevel::trusted)}, {}, kNow);
  const Chain* out = chain(rs, "vm_out");
  for (const auto& r : out->rules) {
    if (r.comment.find("GRE") == std::string::npos) continue;
    bool untrusted_only = false;
    for (const auto& m : r.matches)
      untrusted_only = untrusted_only || m.set == "level_untrusted" || m.set == "level_semi";
    EXPECT_TRUE(untrusted_only) << to_nft_text(r);
  }
  EXPECT_EQ(chain(rs, "vm_sg1_pre"), nullptr) << "only untrusted VMs are tunnelled";
  EXPECT_EQ(to_nft_text(rs).find("\"sgt1\""), std::string::npos);
  // No tunnel, no prerouting hook: no packet pays for a chain with nothing to do.
  EXPECT_EQ(chain(rs, "prerouting"), nullptr);
}

TEST(TunnelRules, ThePreroutingChainMarksOnlyWhatIsNeitherClientNorHoleAndClampsBothDirections) {
  trust::Policy policy = defaults();
  Compiler c(policy, with_tunnel("sg1"));
  auto rs = c.compile({vm(1, trust::TrustLevel::untrusted), vm(2, trust::TrustLevel::untrusted)}, {}, kNow);
  const Chain* pre = chain(rs, "vm_sg1_pre");
  ASSERT_NE(pre, nullptr);
  EXPECT_EQ(chain(rs, "vm_sg2_pre"), nullptr);
  std::string text = to_nft_text(*pre);
  EXPECT_NE(text.find("iifname \"sgt1\" meta nfproto ipv4 tcp flags & (syn|rst) == syn tcp option maxseg size set "
                      "1432"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("tcp option maxseg size set 1412"), std::string::npos) << text;
  auto mark = index_of(*pre, "is routed into sgt1");
  EXPECT_LT(index_of(*pre, "its own client: direct"), mark);
  EXPECT_LT(index_of(*pre, "authorized nodes: direct"), mark);
  EXPECT_LT(index_of(*pre, "from its tunnel: routed normally"), mark);
  EXPECT_NE(text.find("meta mark set 0x40000001"), std::string::npos);
  // Dispatch: the prerouting base chain, the VM's tap and tunnel device, the guard set.
  const Chain* base = chain(rs, "prerouting");
  ASSERT_NE(base, nullptr);
  ASSERT_TRUE(base->base.has_value());
  EXPECT_EQ(base->base->hook, BaseHook::Hook::prerouting);
  std::string all = to_nft_text(rs);
  EXPECT_NE(all.find("\"sg1\" : goto vm_sg1_pre"), std::string::npos) << all;
  EXPECT_NE(all.find("\"sgt1\" : goto vm_sg1_pre"), std::string::npos);
  EXPECT_NE(all.find("\"sgt1\" . \"sg1\""), std::string::npos);
  EXPECT_NE(all.find("iifname \"sgt*\" iifname . oifname != @tunnel_ok"), std::string::npos);
}

TEST(TunnelRules, UpAndDownPlansAreEachOthersInverseAndDispatchComesLastOnTheWayUp) {
  trust::Policy policy = defaults();
  Compiler c(policy, CompileOptions{});
  TunnelNet t{"sgt1", 1476};
  auto up = c.plan_tunnel_up(vm(1, trust::TrustLevel::untrusted), t);
  ASSERT_EQ(up.ops.size(), 7U);
  // First the prerouting hook, put in whether or not it is there already
  // (another VM's tunnel): the chain, emptied, its one dispatch rule.
  EXPECT_EQ(up.ops[0].kind, Op::Kind::add_chain);
  EXPECT_EQ(up.ops[0].chain.name, "prerouting");
  ASSERT_TRUE(up.ops[0].chain.base.has_value());
  EXPECT_EQ(up.ops[0].chain.base->hook, BaseHook::Hook::prerouting);
  EXPECT_TRUE(up.ops[0].chain.rules.empty());
  EXPECT_EQ(up.ops[1].kind, Op::Kind::flush_chain);
  EXPECT_EQ(up.ops[1].name, "prerouting");
  EXPECT_EQ(up.ops[2].kind, Op::Kind::add_rule);
  EXPECT_EQ(to_nft_text(up.ops[2].rule).rfind("iifname \"sg*\" iifname vmap @vm_pre", 0), 0U);
  EXPECT_EQ(up.ops[3].kind, Op::Kind::add_chain);
  EXPECT_EQ(up.ops[3].chain.name, "vm_sg1_pre");
  for (std::size_t i = 4; i < up.ops.size(); ++i) EXPECT_EQ(up.ops[i].kind, Op::Kind::add_elements);
  auto down = c.plan_tunnel_down(vm(1, trust::TrustLevel::untrusted), t);
  ASSERT_EQ(down.ops.size(), 5U);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(down.ops[i].kind, Op::Kind::delete_elements);
  EXPECT_EQ(down.ops[3].kind, Op::Kind::flush_chain);
  EXPECT_EQ(down.ops[4].kind, Op::Kind::delete_chain);
  // The hook itself goes after the last tunnel (Tunnels::down), on its own.
  auto off = c.plan_prerouting_off();
  ASSERT_EQ(off.ops.size(), 2U);
  EXPECT_EQ(off.ops[0].kind, Op::Kind::flush_chain);
  EXPECT_EQ(off.ops[1].kind, Op::Kind::delete_chain);
  EXPECT_EQ(off.ops[1].name, "prerouting");
  // Removing the VM with its tunnel up also removes the tunnel's pieces.
  Compiler with(policy, with_tunnel("sg1"));
  std::string rm = to_nft_text(with.plan_remove_vm(vm(1, trust::TrustLevel::untrusted)));
  EXPECT_NE(rm.find("vm_sg1_pre"), std::string::npos) << rm;
}

TEST(TunnelRules, ClientTableMasqueradesOnlyTheVmsAddressesOutOfTheUplink) {
  tunnel::ClientSetup s;
  s.vm = "sg1";
  s.host = *IpAddress::parse("203.0.113.1");
  s.vm_addresses = {*IpAddress::parse("198.51.100.6"), *IpAddress::parse("2001:db8:5:1::2")};
  s.key = 1;
  s.uplink = "eth1";
  std::string text = to_nft_text(tunnel::client_ruleset(s));
  EXPECT_NE(text.find("type nat hook postrouting priority 100"), std::string::npos) << text;
  EXPECT_NE(text.find("ip saddr 198.51.100.6 oifname \"eth1\" counter masquerade"), std::string::npos) << text;
  EXPECT_NE(text.find("ip6 saddr 2001:db8:5:1::2 oifname \"eth1\" counter masquerade"), std::string::npos) << text;
  EXPECT_NE(text.find("iifname \"sgc-sg1\" meta nfproto ipv4 ip saddr != 198.51.100.6 counter drop"), std::string::npos)
      << text;
  std::string cmds = tunnel::client_commands(s);
  EXPECT_NE(cmds.find("ip link add sgc-sg1 type gre remote 203.0.113.1 key 1 ttl 64"), std::string::npos) << cmds;
  EXPECT_NE(cmds.find("ip link set sgc-sg1 mtu 1472 up"), std::string::npos) << cmds;
  EXPECT_NE(cmds.find("ip -6 route add 2001:db8:5:1::2/128 dev sgc-sg1"), std::string::npos) << cmds;
}

}  // namespace
}  // namespace sg::netpolicy
