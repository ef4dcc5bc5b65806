#include "surrogated/config.h"

#include <gtest/gtest.h>

namespace sg {
namespace {

constexpr const char* kGood = R"(
[daemon]
state_dir = "/var/lib/sg"
socket = "/run/sg/control.sock"
admin_group = "wheel"
log_level = "debug"

[libvirt]
uri = "test:///default"
simulate_guest_network = true

[pool]
ipv4 = "198.51.100.0/24"
ipv6 = "2001:db8:5::/56"
max_vms = 10

[templates.small]
vcpus = 2
memory_mib = 512
max_lifetime = "12h"
default_lifetime = "30m"

[templates.tiny]
memory_mib = 64
)";

TEST(DaemonConfig, ParsesEveryKey) {
  auto c = parse_daemon_config(kGood, "s.toml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->state_dir, "/var/lib/sg");
  EXPECT_EQ(c->socket_path, "/run/sg/control.sock");
  EXPECT_EQ(c->admin_group, "wheel");
  EXPECT_EQ(c->log_level, "debug");
  EXPECT_TRUE(c->simulate_guest_network);
  EXPECT_EQ(c->pool_v4->to_string(), "198.51.100.0/24");
  EXPECT_EQ(c->pool_v6->to_string(), "2001:db8:5::/56");
  EXPECT_EQ(c->max_vms, 10);
  ASSERT_EQ(c->templates.size(), 2U);
  EXPECT_EQ(c->templates["small"].vcpus, 2);
  EXPECT_EQ(c->templates["small"].max_lifetime_s, 12 * 3600);
  EXPECT_EQ(c->templates["small"].default_lifetime_s, 1800);
  EXPECT_EQ(c->templates["tiny"].memory_mib, 64);
  EXPECT_EQ(c->default_template, "small");
}

TEST(DaemonConfig, MinimalFileGetsDefaults) {
  auto c = parse_daemon_config("[pool]\nipv4 = \"198.51.100.0/24\"\n", "min.toml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->libvirt_uri, "test:///default");
  EXPECT_EQ(c->templates.count("small"), 1U);
  EXPECT_FALSE(c->pool_v6.has_value());
}

// Each bad file must name file, line and column of the offending value.
struct BadCase {
  const char* text;
  const char* expect;  // substring of the message, including line:col
};

class BadConfig : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadConfig, ReportsFileLineColumnAndAdvice) {
  auto c = parse_daemon_config(GetParam().text, "bad.toml");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find(GetParam().expect), std::string::npos) << c.error().message;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BadConfig,
    ::testing::Values(
        BadCase{"[pool]\nipv4 = \"198.51.100.0/24\"\nmax_vms = \"ten\"\n",
                "bad.toml:3:11: 'max_vms' must be a whole number"},
        BadCase{"[pool]\nipv4 = \"198.51.100.0/24\"\nmax_vms = 0\n", "bad.toml:3:11: 'max_vms' = 0 is out of range"},
        BadCase{"[pool]\nipv4 = \"198.51.100.0/24\"\nmaxvms = 3\n", "bad.toml:3:1: unknown key 'maxvms' in [pool]"},
        BadCase{"[pool]\nipv4 = \"198.51.100.7/24\"\n",
                "bad.toml:2:8: '198.51.100.7/24' has host bits set; write 198.51.100.0/24"},
        BadCase{"[pool]\nipv4 = \"2001:db8::/48\"\n", "bad.toml:2:8: 'ipv4' must be an IPv4 prefix"},
        BadCase{"[pool]\nipv4 = \"198.51.100.0/31\"\n",
                "bad.toml:2:8: 'ipv4' = 198.51.100.0/31: prefix length must be between"},
        BadCase{"[pool\nipv4 = 1\n", "bad.toml:1:"},
        BadCase{"[daemon]\nstate_dir = \"/x\"\n", "no address pool; add [pool]"},
        BadCase{"[pool]\nipv4 = \"198.51.100.0/24\"\n[templates.a]\nmax_lifetime = \"5y\"\n",
                "bad.toml:4:16: duration '5y' has unknown unit"},
        BadCase{"[pool]\nipv4 = \"198.51.100.0/24\"\n[templates.a]\nmax_lifetime = \"1h\"\ndefault_lifetime = \"2h\"\n",
                "default_lifetime is longer than max_lifetime"},
        BadCase{
            "[pool]\nipv4 = \"198.51.100.0/24\"\n[libvirt]\nuri = \"qemu:///system\"\nsimulate_guest_network = true\n",
            "bad.toml:5:26: simulate_guest_network only works with the test:// driver"},
        BadCase{"[pool]\nipv4 = \"198.51.100.0/24\"\n[daemon]\nlog_level = \"loud\"\n",
                "bad.toml:4:13: log_level must be one of"},
        BadCase{"pool = 3\n", "bad.toml:1:8: 'pool' must be a section"}));

TEST(DaemonConfig, ReportsAllErrorsAtOnce) {
  auto c = parse_daemon_config("[pool]\nipv4 = \"x\"\nmax_vms = -1\nfoo = 1\n", "bad.toml");
  ASSERT_FALSE(c.ok());
  const std::string& m = c.error().message;
  EXPECT_NE(m.find("bad.toml:2:"), std::string::npos) << m;
  EXPECT_NE(m.find("bad.toml:3:"), std::string::npos) << m;
  EXPECT_NE(m.find("bad.toml:4:"), std::string::npos) << m;
}

TEST(DaemonConfig, MissingFileSaysWhichAndWhatToDo) {
  auto c = load_daemon_config("/nonexistent/surrogated.toml");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().describe().find("--config"), std::string::npos);
}

}  // namespace
}  // namespace sg
