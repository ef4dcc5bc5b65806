// Tier 2: the tunnel's nftables statements (meta mark, tcp option maxseg,
// masquerade in a nat chain) reach the kernel as the same expressions nft
// itself makes of the printed text.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <regex>
#include <sstream>

#include "common/raii/fd.h"
#include "netpolicy/compile.h"
#include "netpolicy/nft_backend.h"
#include "tests/integration/harness.h"
#include "trust/parse.h"
#include "tunnel/client.h"

namespace sg::netpolicy {
namespace {

using test::EnterNetns;

// Rule handles and element order differ between two loads; the rest must not.
std::string netlink_listing(const test::Netns& ns, const std::string& table) {
  auto r = ns.exec({"nft", "--debug=netlink", "list", "table", "inet", table});
  EXPECT_EQ(r.code, 0) << r.err;
  static const std::regex header(R"(^(inet \S+ \S+)( [0-9]+)+$)");
  std::istringstream in(r.out);
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(std::regex_replace(line, header, "$1"));
  std::sort(lines.begin(), lines.end());
  std::string s;
  for (const auto& l : lines) s += l + "\n";
  return s;
}

Ruleset tunnel_ruleset() {
  auto policy = trust::parse_policy("", "empty.toml");
  CompileOptions o;
  o.tunnel_of = [](const std::string& n) -> std::optional<TunnelNet> {
    if (n == "sg1") return TunnelNet{"sgt1", 1476};
    return std::nullopt;
  };
  Compiler c(*policy, o);
  VmNet v;
  v.id = 1;
  v.name = "sg1";
  v.mac = "52:54:00:00:00:01";
  v.v4 = *IpAddress::parse("198.51.100.6");
  v.v6 = *IpAddress::parse("2001:db8:5:1::2");
  v.client = {*Prefix::parse("203.0.113.2")};
  Ruleset rs = c.compile({v}, {}, 1790000000);
  tunnel::ClientSetup s;
  s.vm = "sg1";
  s.host = *IpAddress::parse("203.0.113.1");
  s.vm_addresses = {*v.v4, *v.v6};
  s.uplink = "up0";
  rs.tables.push_back(tunnel::client_ruleset(s).tables[0]);
  return rs;
}

TEST(TunnelNft, KernelHoldsWhatNftMakesOfTheText) {
  if (auto why = test::why_no_namespaces(); !why.empty()) GTEST_SKIP() << why;
  std::string prefix = "sgtn" + std::to_string(getpid()) + "-";
  test::remove_netns_with_prefix(prefix);
  {
    test::Netns ours(prefix + "ours");
    test::Netns theirs(prefix + "nft");
    const Ruleset rs = tunnel_ruleset();
    {
      EnterNetns enter(ours.name());
      ASSERT_TRUE(enter.ok());
      auto backend = NftBackend::open();
      ASSERT_TRUE(backend.ok());
      auto st = backend->apply(plan_replace(rs));
      ASSERT_TRUE(st.ok()) << st.error().describe();
    }
    test::RunOptions o;
    o.netns = theirs.name();
    o.stdin_data = to_nft_text(rs);
    auto loaded = test::run({"nft", "-f", "-"}, o);
    ASSERT_EQ(loaded.code, 0) << loaded.err;
    auto set = ours.exec({"nft", "list", "set", "inet", "surrogated", "tunnel_ok"});
    EXPECT_NE(set.out.find("\"sgt1\" . \"sg1\""), std::string::npos) << set.out;
    auto map = ours.exec({"nft", "list", "map", "inet", "surrogated", "vm_pre"});
    EXPECT_NE(map.out.find("\"sgt1\" : goto vm_sg1_pre"), std::string::npos) << map.out;
    for (const std::string table : {"surrogated", "surrogate_tunnel_sg1"}) {
      EXPECT_EQ(netlink_listing(ours, table), netlink_listing(theirs, table)) << table;
    }
  }
  test::remove_netns_with_prefix(prefix);
}

}  // namespace
}  // namespace sg::netpolicy
