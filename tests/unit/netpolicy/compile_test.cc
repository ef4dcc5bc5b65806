// The pure compiler: what rules a VM gets for its trust level, in which
// order, and the plans that add or remove one VM or hole.
#include "netpolicy/compile.h"

#include <gtest/gtest.h>
#include <netinet/in.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

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

VmNet vm(std::int64_t id, trust::TrustLevel level) {
  VmNet v;
  v.id = id;
  v.name = "sg" + std::to_string(id);
  v.mac = "52:54:00:00:00:0" + std::to_string(id);
  v.v4 = *IpAddress::parse("198.51.100." + std::to_string(id * 4 + 2));
  v.gateway4 = *IpAddress::parse("198.51.100." + std::to_string(id * 4 + 1));
  v.v6 = *IpAddress::parse("2001:db8:5:" + std::to_string(id) + "::2");
  v.gateway6 = *IpAddress::parse("2001:db8:5:" + std::to_string(id) + "::1");
  v.level = level;
  v.client = {*Prefix::parse("192.0.2.77")};
  return v;
}

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
  auto rs = c.compile(
      {vm(1, trust::TrustLevel::untrusted), vm(2, trust::TrustLevel::semi_trusted), vm(3, trust::TrustLevel::trusted)},
      {h}, kNow);
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

TEST(Compiler, EveryVmChainEndsWithAVerdictAndEveryDropIsLoggedWithVmAndReason) {
  auto policy = test_policy();
  Compiler c(policy, CompileOptions{});
  for (auto level : trust::kAllLevels) {
    auto rs = c.compile({vm(4, level)}, {}, kNow);
    for (const char* suffix : {"_out", "_in", "_host"}) {
      const Chain* ch = find_chain(rs, std::string("vm_sg4") + suffix);
      ASSERT_NE(ch, nullptr);
      ASSERT_FALSE(ch->rules.empty());
      const Rule& last = ch->rules.back();
      EXPECT_TRUE(is_drop(last) || is_accept(last)) << suffix;
      EXPECT_TRUE(last.matches.empty()) << "the last rule must catch everything: " << suffix;
      for (const auto& r : ch->rules) {
        if (!is_drop(r)) continue;
        bool logged = false;
        for (const auto& s : r.statements) {
          if (const auto* l = std::get_if<Log>(&s)) {
            logged = l->prefix.rfind("sg4 ", 0) == 0 && l->prefix.size() > 4;
          }
        }
        EXPECT_TRUE(logged) << r.comment;
        EXPECT_EQ(r.comment.rfind("sg4: ", 0), 0U) << r.comment;
      }
    }
  }
}

TEST(Compiler, LevelsEndAsTheyShould) {
  auto policy = test_policy();
  Compiler c(policy, CompileOptions{});
  auto rs = c.compile(
      {vm(1, trust::TrustLevel::untrusted), vm(2, trust::TrustLevel::semi_trusted), vm(3, trust::TrustLevel::trusted)},
      {}, kNow);
  EXPECT_TRUE(is_drop(find_chain(rs, "vm_sg1_out")->rules.back()));
  EXPECT_TRUE(is_drop(find_chain(rs, "vm_sg2_out")->rules.back()));
  EXPECT_TRUE(is_accept(find_chain(rs, "vm_sg3_out")->rules.back()));
  // Only the semi-trusted VM consults the allowlists.
  auto uses = [&](const char* chain, const char* set) {
    for (const auto& r : find_chain(rs, chain)->rules) {
      for (const auto& m : r.matches) {
        if (m.set == set) return true;
      }
    }
    return false;
  };
  EXPECT_TRUE(uses("vm_sg2_out", "semi_tcp_v4"));
  EXPECT_FALSE(uses("vm_sg1_out", "semi_tcp_v4"));
  EXPECT_FALSE(uses("vm_sg3_out", "semi_tcp_v4"));
  // Guardrails hold for every level, before anything accepts.
  for (const char* chain : {"vm_sg1_out", "vm_sg2_out", "vm_sg3_out"}) {
    EXPECT_TRUE(uses(chain, "reserved_v4")) << chain;
    EXPECT_TRUE(uses(chain, "reserved_v6")) << chain;
    EXPECT_TRUE(uses(chain, "block_v6")) << chain;
    EXPECT_TRUE(uses(chain, "closed_ports")) << chain;
    bool seen_accept = false;
    for (const auto& r : find_chain(rs, chain)->rules) {
      bool guard = false;
      for (const auto& m : r.matches) guard = guard || m.set == "reserved_v4" || m.set == "closed_ports";
      if (guard) {
        EXPECT_FALSE(seen_accept) << chain << ": a guardrail after an accept";
      }
      seen_accept = seen_accept || is_accept(r);
    }
  }
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
  Hole h{9, "sg1", *Prefix::parse("203.0.113.0/28"), IPPROTO_UDP, trust::PortRange{5000, 5010}, kNow + 90};
  auto plan = c.plan_add_hole(vm(1, trust::TrustLevel::untrusted), h, kNow);
  ASSERT_EQ(plan.ops.size(), 1U);
  EXPECT_EQ(plan.ops[0].kind, Op::Kind::add_elements);
  EXPECT_EQ(plan.ops[0].name, "vm_sg1_holes_v4");
  ASSERT_EQ(plan.ops[0].elements.size(), 1U);
  const auto& e = plan.ops[0].elements[0];
  EXPECT_EQ(e.timeout_ms, 90000U);
  ASSERT_EQ(e.key.size(), 3U);
  EXPECT_EQ(e.key[1].value, u8_bytes(IPPROTO_UDP));
  EXPECT_EQ(e.key[2].value, be16_bytes(5000));
  EXPECT_EQ(e.key[2].value_hi, be16_bytes(5010));
  auto rm = c.plan_remove_hole(vm(1, trust::TrustLevel::untrusted), h, kNow);
  ASSERT_EQ(rm.ops.size(), 1U);
  EXPECT_EQ(rm.ops[0].kind, Op::Kind::delete_elements);
}

TEST(Compiler, AddVmDispatchesLastRemoveVmUndispatchesFirst) {
  auto policy = test_policy();
  Compiler c(policy, CompileOptions{});
  auto v = vm(5, trust::TrustLevel::untrusted);
  auto add = c.plan_add_vm(v, {}, kNow);
  ASSERT_FALSE(add.ops.empty());
  std::size_t last_chain = 0, first_dispatch = add.ops.size();
  for (std::size_t i = 0; i < add.ops.size(); ++i) {
    if (add.ops[i].kind == Op::Kind::add_chain) last_chain = i;
    if (add.ops[i].kind == Op::Kind::add_elements && add.ops[i].name != "arp_ok") {
      first_dispatch = std::min(first_dispatch, i);
    }
  }
  EXPECT_LT(last_chain, first_dispatch);
  auto rm = c.plan_remove_vm(v);
  ASSERT_FALSE(rm.ops.empty());
  EXPECT_EQ(rm.ops[0].kind, Op::Kind::delete_elements);
  EXPECT_EQ(rm.ops[0].name, "from_vm");
}

TEST(Compiler, OwnerIpv4OnlyDropsIpv6OfEveryVm) {
  auto p = trust::parse_policy("[owner]\naddress_families = \"ipv4\"\n", "p.toml");
  ASSERT_TRUE(p.ok()) << p.error().message;
  Compiler c(*p, CompileOptions{});
  auto rs = c.compile({vm(1, trust::TrustLevel::trusted)}, {}, kNow);
  bool dropped = false;
  for (const auto& r : find_chain(rs, "vm_sg1_out")->rules) {
    if (is_drop(r) && r.comment.find("IPv6 is not enabled") != std::string::npos) dropped = true;
  }
  EXPECT_TRUE(dropped);
}

}  // namespace
}  // namespace sg::netpolicy
