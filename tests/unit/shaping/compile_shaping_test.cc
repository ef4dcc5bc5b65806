// The compiler's part of shaping: the shared chains select each VM's HTB
// class with `meta priority set ... map` (the VM's classes are elements of
// vm_class, vm_client_* and the hole maps), and the quota drop comes after
// the client accept (at 100% of its quota a VM still reaches its client) but
// before the holes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include "netpolicy/compile.h"
#include "trust/parse.h"

namespace sg::netpolicy {
namespace {

trust::Policy policy() {
  auto p = trust::parse_policy("[levels.untrusted]\ndaily_quota = \"2MB\"\n", "p.toml");
  EXPECT_TRUE(p.ok()) << p.error().message;
  return *p;
}

VmNet vm3() {
  VmNet v;
  v.id = 3;
  v.name = "sg3";
  v.mac = "52:54:00:00:00:03";
  v.v4 = *IpAddress::parse("198.51.100.14");
  v.level = trust::TrustLevel::untrusted;
  v.client = {*Prefix::parse("192.0.2.77")};
  return v;
}

const Chain& chain(const Ruleset& rs, const std::string& name) {
  for (const auto& c : rs.tables[0].chains) {
    if (c.name == name) return c;
  }
  ADD_FAILURE() << "no chain " << name;
  static Chain none;
  return none;
}

std::ptrdiff_t index_of(const Chain& c, const std::string& comment_part) {
  auto it = std::find_if(c.rules.begin(), c.rules.end(),
                         [&](const Rule& r) { return r.comment.find(comment_part) != std::string::npos; });
  return it == c.rules.end() ? -1 : it - c.rules.begin();
}

std::string priority_map_of(const Rule& r) {
  for (const auto& s : r.statements) {
    if (const auto* p = std::get_if<PriorityMap>(&s)) return p->map;
  }
  return "";
}

TEST(CompileShaping, QuotaAfterClientBeforeHoles) {
  auto p = policy();
  Compiler c(p, CompileOptions{});
  auto rs = c.compile({vm3()}, {}, 0);
  const Chain& out = chain(rs, "vm_out");
  auto client = index_of(out, "its own client");
  auto quota = index_of(out, "daily byte quota");
  auto holes = index_of(out, "nodes that signed");
  ASSERT_GE(client, 0);
  ASSERT_GE(quota, 0);
  ASSERT_GE(holes, 0);
  EXPECT_LT(client, quota);
  EXPECT_LT(quota, holes);
  // Guardrails still come first: a closed port stays closed even to the client.
  EXPECT_LT(index_of(out, "closed ports"), client);
}

const Set& set_of(const Ruleset& rs, const std::string& name);
std::uint32_t data_of(const SetElement& e);

TEST(CompileShaping, ChainsSelectTheVmsClasses) {
  auto p = policy();
  Compiler c(p, CompileOptions{});
  auto rs = c.compile({vm3()}, {}, 0);
  const Chain& out = chain(rs, "vm_out");
  EXPECT_EQ(priority_map_of(out.rules[index_of(out, "shape as everything else")]), "vm_class");
  EXPECT_EQ(priority_map_of(out.rules[index_of(out, "its own client")]), "vm_client_v4");
  // The VM's classes are the maps' values.
  EXPECT_EQ(data_of(set_of(rs, "vm_class").elements.at(0)), tc_handle(kTcMajorDefault, 3, FlowClass::other));
  EXPECT_EQ(data_of(set_of(rs, "vm_client_v4").elements.at(0)), tc_handle(kTcMajorDefault, 3, FlowClass::client));
  // Authorized nodes: the hole map gives each hole its class.
  const Rule& nodes = out.rules[index_of(out, "nodes that signed")];
  const auto* lookup = std::get_if<PriorityMap>(&nodes.statements.at(0));
  ASSERT_NE(lookup, nullptr) << to_nft_text(nodes);
  EXPECT_EQ(lookup->map, "holes_v4");
  EXPECT_EQ(to_nft_text(nodes),
            "meta nfproto ipv4 meta priority set iifname . ip daddr . meta l4proto . th dport map @holes_v4 accept "
            "comment \"nodes that signed an authcert for this client, each in its class\"");
  // The default class is set before anything can accept the packet.
  EXPECT_LT(index_of(out, "shape as everything else"), index_of(out, "its own client"));
  const Chain& in = chain(rs, "vm_in");
  EXPECT_EQ(index_of(in, "shape as everything else"), 0);
  EXPECT_LT(index_of(in, "shape as its client"), index_of(in, "replies and related"));
  EXPECT_NE(to_nft_text(in).find("meta priority set oifname . ip saddr map @vm_client_v4"), std::string::npos)
      << to_nft_text(in);
}

const Set& set_of(const Ruleset& rs, const std::string& name) {
  for (const auto& s : rs.tables[0].sets) {
    if (s.name == name) return s;
  }
  ADD_FAILURE() << "no set " << name;
  static Set none;
  return none;
}

std::uint32_t data_of(const SetElement& e) {
  EXPECT_EQ(e.data.size(), 4U);
  std::uint32_t x = 0;
  std::memcpy(&x, e.data.data(), std::min<std::size_t>(4, e.data.size()));
  return x;
}

TEST(CompileShaping, EachHoleMapsToItsClassOrTheSharedNodesClass) {
  auto p = policy();
  Compiler c(p, CompileOptions{});
  Hole rated{7, "sg3", *Prefix::parse("203.0.113.9"), 6, {443, 443}, 0, 0x8007};
  Hole plain{8, "sg3", *Prefix::parse("203.0.113.10"), 0, {}, 0, 0};
  auto rs = c.compile({vm3()}, {rated, plain}, 0);
  const Set& holes = set_of(rs, "holes_v4");
  ASSERT_TRUE(holes.data_type.has_value());
  EXPECT_EQ(*holes.data_type, KeyType::classid);
  ASSERT_EQ(holes.elements.size(), 1U);
  EXPECT_EQ(data_of(holes.elements[0]), tc_handle(kTcMajorDefault, 0x8007));
  // Any protocol: a range, so the interval map.
  const Set& ranges = set_of(rs, "holes_v4_range");
  ASSERT_EQ(ranges.elements.size(), 1U);
  EXPECT_EQ(data_of(ranges.elements[0]), tc_handle(kTcMajorDefault, 3, FlowClass::nodes));
  // The plan that opens one hole carries the map's layout and the class.
  auto plan = c.plan_add_hole(vm3(), rated, 0);
  ASSERT_EQ(plan.ops.size(), 1U);
  EXPECT_EQ(plan.ops[0].set.data_type, KeyType::classid);
  EXPECT_EQ(data_of(plan.ops[0].elements.at(0)), tc_handle(kTcMajorDefault, 0x8007));
  EXPECT_NE(to_nft_text(plan).find("\"sg3\" . 203.0.113.9 . tcp . 443 comment \"hole 7\" : 53:8007"), std::string::npos)
      << to_nft_text(plan);
}

TEST(CompileShaping, OffMeansNoPriorityStatements) {
  auto p = policy();
  CompileOptions o;
  o.shaping = false;
  Compiler c(p, o);
  auto text = to_nft_text(c.compile({vm3()}, {}, 0));
  EXPECT_EQ(text.find("meta priority"), std::string::npos);
  EXPECT_EQ(text.find("classid"), std::string::npos) << "without shaping the holes are a plain set";
}

}  // namespace
}  // namespace sg::netpolicy
