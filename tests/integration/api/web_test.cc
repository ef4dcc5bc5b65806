// The owner's web page in a real browser: Debian's chromium, headless,
// driven by playwright-core (tests/web/web_test.js) inside the daemon's
// network namespace. The page lists a running VM, the complaint lookup
// names it, and its Stop button cuts the VM's traffic at once (a ping from
// the guest namespace stops arriving) while its flows stay in the log.
#include <sys/stat.h>

#include <atomic>
#include <thread>

#include "tests/integration/api/api_fixture.h"

namespace sg::test {
namespace {

std::string why_no_browser() {
  if (run({"node", "--version"}).code != 0) return "node is not installed";
  struct stat st {};
  if (stat("/usr/bin/chromium", &st) != 0) return "chromium is not installed (scripts/install-deps)";
  if (stat(SG_WEB_TEST_DIR "/node_modules/playwright-core", &st) != 0) {
    return "playwright-core is missing: run 'npm ci' in tests/web (scripts/test does)";
  }
  return "";
}

class WebTest : public ApiTest {};

// The lab's documentation ranges are the "internet" here (as in the flow-log tests).
constexpr const char* kPolicy = R"(
[guardrails]
allow_reserved = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]
[levels.untrusted]
per_destination = { packets = 1000, kbit = 100000 }
syn_per_second = 1000
)";

TEST_F(WebTest, PageListsStopsAndLooksUp) {
  if (auto why = why_no_browser(); !why.empty()) GTEST_SKIP() << why;
  start(kPolicy);
  auto& t = *topo_;
  t.in_ns(t.host_ns(), {"sysctl", "-qw", "net.netfilter.nf_conntrack_icmp_timeout=1"});
  std::string key = t.keygen("alice");
  auto vm =
      t.ctl_json({"allocate", "--client", t.client.v4, "--contact", "alice@example.org", "--title", "web test VM"}, key)
          .value("name", "");
  ASSERT_FALSE(vm.empty());
  ASSERT_TRUE(t.ping(vm, t.client.v4)) << "the VM reaches its client before Stop";
  std::this_thread::sleep_for(std::chrono::seconds(2));  // the flow ends and is committed

  // A steady ping from the guest while the browser works: 5 a second.
  std::atomic<bool> pinging = true;
  std::jthread pinger([&] {
    t.in_guest(vm, {"ping", "-q", "-c", "100", "-i", "0.2", "-W", "1", t.client.v4});
    pinging = false;
  });
  std::this_thread::sleep_for(std::chrono::seconds(1));
  t.reset_sensors();
  std::this_thread::sleep_for(std::chrono::seconds(1));
  EXPECT_GT(t.sensor(t.client.ns), 2U) << "the guest's pings arrive before Stop";

  std::string token = read_file(t.dir() + "/web-token");
  while (!token.empty() && token.back() == '\n') token.pop_back();
  ASSERT_EQ(token.size(), 64U);
  RunOptions o;
  o.netns = t.host_ns();
  o.env = {{"SG_WEB_URL", kWeb},          {"SG_WEB_TOKEN", token},          {"SG_VM", vm},
           {"SG_LOOKUP_TO", t.client.v4}, {"SG_SHOT_DIR", SG_WEB_SHOT_DIR}, {"HOME", t.dir()}};
  auto r = run({"timeout", "120", "node", SG_WEB_TEST_DIR "/web_test.js"}, o);
  EXPECT_EQ(r.code, 0) << r.out << r.err;

  // Stopped: nothing more from the guest arrives, though its ping still runs.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  t.reset_sensors();
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(t.sensor(t.client.ns), 0U) << "the VM's traffic stops with Stop";
  EXPECT_TRUE(pinging) << "the ping ran through the Stop (else the check above proves nothing)";
  EXPECT_TRUE(t.ctl_json({"list"}).empty());
  auto audit = t.ctl_json({"audit", "list"});
  bool stopped = false;
  for (const auto& e : audit) stopped |= e.value("action", "") == "stop" && e.value("subject", "") == vm;
  EXPECT_TRUE(stopped) << audit.dump(1);
  auto flows = t.ctl_json({"flows", "--vm", vm});
  EXPECT_FALSE(flows.empty()) << "the stopped VM's flows are kept";
}

}  // namespace
}  // namespace sg::test
