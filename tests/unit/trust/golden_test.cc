// The sample policy shipped in etc/ parses, and `policy show --json` of it is
// exactly tests/golden/trust/trust-policy.json. After an intended change,
// rewrite the golden file with SG_REGENERATE_GOLDEN=1 and review the diff.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "trust/explain.h"
#include "trust/parse.h"
#include "trust/render.h"

namespace sg::trust {
namespace {

const std::string kSourceDir = SG_SOURCE_DIR;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

bool regenerate() {
  const char* v = std::getenv("SG_REGENERATE_GOLDEN");
  return v != nullptr && std::string(v) == "1";
}

// Compares with the golden file, or rewrites it when asked to.
void expect_golden(const std::string& relative, const std::string& actual) {
  const std::string path = kSourceDir + "/" + relative;
  if (regenerate()) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << actual;
    ASSERT_TRUE(out.good()) << "cannot write " << path;
    return;
  }
  std::ifstream probe(path);
  ASSERT_TRUE(probe.good()) << path << " is missing; run with SG_REGENERATE_GOLDEN=1 to create it";
  EXPECT_EQ(read_file(path), actual) << relative << " differs; if the change is intended, rerun with "
                                     << "SG_REGENERATE_GOLDEN=1 and review the diff";
}

Policy sample_policy() {
  // A relative name, so the output does not depend on where the tree is checked out.
  auto outcome = parse_policy_detailed(read_file(kSourceDir + "/etc/trust-policy.toml"), "etc/trust-policy.toml");
  std::string all;
  for (const auto& d : outcome.diagnostics) all += d.to_string() + "\n";
  EXPECT_TRUE(outcome.ok()) << all;
  return outcome.ok() ? *outcome.policy : Policy{};
}

TEST(Golden, SamplePolicyAsJson) {
  expect_golden("tests/golden/trust/trust-policy.json", to_json(sample_policy()).dump(2) + "\n");
}

TEST(Golden, SamplePolicyAsText) { expect_golden("tests/golden/trust/trust-policy.txt", to_text(sample_policy())); }

TEST(Golden, EmptyPolicyAsJson) {
  auto outcome = parse_policy_detailed("", "empty.toml");
  ASSERT_TRUE(outcome.ok());
  expect_golden("tests/golden/trust/empty-policy.json", to_json(*outcome.policy).dump(2) + "\n");
}

TEST(Golden, SamplePolicyExplanations) {
  Policy p = sample_policy();
  ExplainContext ctx;
  ctx.vm_address = *IpAddress::parse("10.77.0.2");
  ctx.gateway = *IpAddress::parse("10.77.0.1");
  struct Case {
    TrustLevel level;
    const char* destination;
    Protocol protocol;
    std::optional<std::uint16_t> port;
  };
  const Case cases[] = {
      {TrustLevel::semi_trusted, "203.0.113.9", Protocol::tcp, 443},
      {TrustLevel::semi_trusted, "203.0.113.66", Protocol::tcp, 443},
      {TrustLevel::semi_trusted, "10.1.2.3", Protocol::tcp, 443},
      {TrustLevel::semi_trusted, "10.77.0.1", Protocol::udp, 53},
      {TrustLevel::trusted, "192.0.2.10", Protocol::tcp, 8443},
      {TrustLevel::trusted, "2001:db8::1", Protocol::tcp, 22},
      {TrustLevel::untrusted, "198.51.100.20", Protocol::tcp, 443},
  };
  std::string all;
  for (const Case& c : cases) {
    ExplainQuery q;
    q.destination = *IpAddress::parse(c.destination);
    q.protocol = c.protocol;
    q.port = c.port;
    all += "$ explain " + std::string(to_string(c.level)) + " " + c.destination + " " +
           std::string(to_string(c.protocol)) + (c.port ? " " + std::to_string(*c.port) : "") + "\n";
    all += to_text(explain(p, c.level, q, ctx)) + "\n";
  }
  expect_golden("tests/golden/trust/explain.txt", all);
}

}  // namespace
}  // namespace sg::trust
