// ConntrackListener and NflogListener against the real kernel, in private
// network namespaces: a "host" namespace with nftables rules that mark flows
// with VM id 7 and log drops, and a "guest" namespace on the other end of a
// veth named like a VM tap (sg7). The test thread enters the host namespace
// with setns() before opening the listeners and leaves it in TearDown; the
// machine's own namespace is never touched.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "netpolicy/conntrack_listener.h"
#include "netpolicy/nflog_listener.h"
#include "surrogated/flow_log.h"
#include "tests/integration/harness.h"

namespace sg {
namespace {

using test::EnterNetns;

using netpolicy::ConntrackListener;
using netpolicy::DropEvent;
using netpolicy::FlowEvent;
using netpolicy::NflogListener;

constexpr const char* kHostAddr = "192.0.2.1";
constexpr const char* kGuestAddr = "192.0.2.2";

// Rules of the test "host": new flows from the guest's tap get ct mark 7;
// UDP to port 9999 from it is dropped as "sg? no-chain " (VM from the
// interface); the host's own packets to 192.0.2.99 are dropped as
// "sg7 reserved ".
constexpr const char* kRules = R"(
table inet sgfltest {
  chain in {
    type filter hook input priority 0; policy accept;
    iifname "sg7" udp dport 9999 log group 5 prefix "sg? no-chain " drop
    iifname "sg7" ct state new ct mark set 7
  }
  chain out {
    type filter hook output priority 0; policy accept;
    ip daddr 192.0.2.99 log group 5 prefix "sg7 reserved " drop
  }
}
)";

class ListenersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto why = test::why_no_namespaces(); !why.empty()) GTEST_SKIP() << why;
    prefix_ = "sgfl" + std::to_string(getpid());
    test::remove_netns_with_prefix(prefix_);
    host_ = std::make_unique<test::Netns>(prefix_ + "h");
    guest_ = std::make_unique<test::Netns>(prefix_ + "g");
    must(test::run({"ip", "-n", host_->name(), "link", "add", "sg7", "type", "veth", "peer", "name", "eth0", "netns",
                    guest_->name()}));
    must(host_->exec({"ip", "addr", "add", std::string(kHostAddr) + "/24", "dev", "sg7"}));
    must(host_->exec({"ip", "link", "set", "sg7", "up"}));
    must(guest_->exec({"ip", "addr", "add", std::string(kGuestAddr) + "/24", "dev", "eth0"}));
    must(guest_->exec({"ip", "link", "set", "eth0", "up"}));
    dir_ = test::make_temp_dir();
    test::write_file(dir_ + "/rules.nft", kRules);
    must(host_->exec({"nft", "-f", dir_ + "/rules.nft"}));
    enter_ = std::make_unique<EnterNetns>(host_->name());
    ASSERT_TRUE(enter_->ok()) << "cannot enter namespace " << host_->name();
  }

  void TearDown() override {
    enter_.reset();  // back to our own namespace before the namespaces go
    guest_.reset();
    host_.reset();
    if (!prefix_.empty()) test::remove_netns_with_prefix(prefix_);
    if (!dir_.empty()) test::remove_tree(dir_);
  }

  static void must(const test::RunResult& r) { ASSERT_EQ(r.code, 0) << r.err << r.out; }

  // Sysctls of the host namespace only.
  void host_sysctl(const std::string& key, const std::string& value) {
    must(host_->exec({"sysctl", "-qw", key + "=" + value}));
  }

  void guest_sh(const std::string& script) { must(guest_->exec({"bash", "-c", script})); }

  template <class Listener, class Event, class Done>
  std::vector<Event> collect(Listener& l, Done done, std::chrono::seconds limit) {
    std::vector<Event> all;
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline && !done(all)) {
      pollfd p{l.fd(), POLLIN, 0};
      poll(&p, 1, 200);
      for (auto& e : l.read_events()) all.push_back(std::move(e));
    }
    return all;
  }

  std::string prefix_, dir_;
  std::unique_ptr<test::Netns> host_, guest_;
  std::unique_ptr<EnterNetns> enter_;
};

bool has(const std::vector<FlowEvent>& evs, FlowEvent::Kind kind, std::uint8_t proto) {
  return std::any_of(evs.begin(), evs.end(), [&](const FlowEvent& e) { return e.kind == kind && e.proto == proto; });
}

TEST_F(ListenersTest, ConntrackSeesNewAndDestroyOfMarkedFlowsWithCounters) {
  // Short timeouts so flows end (and DESTROY comes) within the test.
  host_sysctl("net.netfilter.nf_conntrack_udp_timeout", "1");
  host_sysctl("net.netfilter.nf_conntrack_icmp_timeout", "1");
  auto listener = ConntrackListener::open();
  ASSERT_TRUE(listener.ok()) << listener.error().describe();
  EXPECT_TRUE(listener->warnings().empty());
  EXPECT_EQ(test::read_file("/proc/sys/net/netfilter/nf_conntrack_acct"), "1\n");

  guest_sh(std::string("ping -c 2 -i 0.2 -W 1 ") + kHostAddr + " >/dev/null");
  guest_sh(std::string("echo hello >/dev/udp/") + kHostAddr + "/5555");
  // Unmarked traffic: the host's own flow to the guest must not show up.
  must(host_->exec({"ping", "-c", "1", "-W", "1", kGuestAddr}));

  auto events = collect<ConntrackListener, FlowEvent>(
      *listener,
      [](const std::vector<FlowEvent>& evs) {
        return has(evs, FlowEvent::Kind::end, IPPROTO_ICMP) && has(evs, FlowEvent::Kind::end, IPPROTO_UDP);
      },
      std::chrono::seconds(90));
  ASSERT_TRUE(has(events, FlowEvent::Kind::start, IPPROTO_ICMP));
  ASSERT_TRUE(has(events, FlowEvent::Kind::start, IPPROTO_UDP));
  ASSERT_TRUE(has(events, FlowEvent::Kind::end, IPPROTO_ICMP)) << "no DESTROY for the ping within 90 s";
  ASSERT_TRUE(has(events, FlowEvent::Kind::end, IPPROTO_UDP)) << "no DESTROY for the UDP flow within 40 s";
  for (const auto& e : events) {
    EXPECT_EQ(e.mark, 7U);
    EXPECT_EQ(e.vm_id, 7);
    EXPECT_EQ(e.src.to_string(), kGuestAddr);
    EXPECT_EQ(e.dst.to_string(), kHostAddr);
    if (e.kind == FlowEvent::Kind::end) {
      // NEW events carry neither counters nor timestamps; DESTROY events both.
      EXPECT_GT(e.start_ns, 0) << "nf_conntrack_timestamp should be on";
      EXPECT_GT(e.orig_packets, 0U);
      EXPECT_GT(e.orig_bytes, 0U);
      EXPECT_GT(e.stop_ns, e.start_ns);
      if (e.proto == IPPROTO_ICMP) {
        EXPECT_EQ(e.orig_packets, 2U);
        EXPECT_EQ(e.reply_packets, 2U);
        EXPECT_EQ(e.icmp_type, 8);
      } else {
        EXPECT_EQ(e.dport, 5555);
      }
    }
  }

  // And through the flow log: one complete row per flow.
  auto log = FlowLog::open(dir_ + "/flows.db");
  ASSERT_TRUE(log.ok()) << log.error().describe();
  FlowContext ctx{"sg7", "sha256:test", "untrusted", std::nullopt, "", "direct"};
  for (const auto& e : events) {
    if (e.kind == FlowEvent::Kind::start) log->record_flow_start(e, ctx);
    if (e.kind == FlowEvent::Kind::end) log->record_flow_end(e, ctx);
  }
  ASSERT_TRUE(log->flush().ok());
  auto rows = log->who_sent(Prefix::parse(kHostAddr).value(), 0, INT64_MAX);
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 2U);
  for (const auto& r : *rows) {
    EXPECT_EQ(r.origin, "new");
    EXPECT_TRUE(r.end_ms.has_value());
    EXPECT_GT(r.orig_bytes, 0);
  }
}

TEST_F(ListenersTest, NflogSeesDropsWithVmReasonAndAddresses) {
  NflogListener::Options o;
  o.group = 5;
  auto listener = NflogListener::open(o);
  ASSERT_TRUE(listener.ok()) << listener.error().describe();
  // A second listener on the same group is refused with a hint.
  auto second = NflogListener::open(o);
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.error().describe().find("another process"), std::string::npos) << second.error().describe();

  guest_sh(std::string("echo hello >/dev/udp/") + kHostAddr + "/9999");
  host_->exec({"ping", "-c", "1", "-W", "1", "192.0.2.99"});  // fails: dropped

  auto events = collect<NflogListener, DropEvent>(
      *listener, [](const std::vector<DropEvent>& evs) { return evs.size() >= 2; }, std::chrono::seconds(10));
  ASSERT_EQ(events.size(), 2U);
  const DropEvent* udp = nullptr;
  const DropEvent* icmp = nullptr;
  for (const auto& e : events) (e.proto == IPPROTO_UDP ? udp : icmp) = &e;
  ASSERT_NE(udp, nullptr);
  ASSERT_NE(icmp, nullptr);

  EXPECT_EQ(udp->kind, DropEvent::Kind::drop);
  EXPECT_EQ(udp->vm, "sg7");  // from the input interface
  EXPECT_EQ(udp->vm_id, 7);
  EXPECT_EQ(udp->reason, "no-chain");
  EXPECT_EQ(udp->indev, "sg7");
  EXPECT_EQ(udp->src.to_string(), kGuestAddr);
  EXPECT_EQ(udp->dst.to_string(), kHostAddr);
  EXPECT_EQ(udp->dport, 9999);
  EXPECT_EQ(udp->length, 20U + 8U + 6U);

  EXPECT_EQ(icmp->vm, "sg7");  // from the prefix
  EXPECT_EQ(icmp->reason, "reserved");
  EXPECT_EQ(icmp->family, Family::v4);
  EXPECT_EQ(icmp->proto, IPPROTO_ICMP);
  EXPECT_EQ(icmp->dst.to_string(), "192.0.2.99");
  EXPECT_TRUE(icmp->has_icmp);
  EXPECT_EQ(icmp->icmp_type, 8);
  EXPECT_GT(icmp->time_ns, 0);

  auto log = FlowLog::open(dir_ + "/flows.db");
  ASSERT_TRUE(log.ok());
  for (const auto& e : events) log->record_drop(e, std::nullopt);
  ASSERT_TRUE(log->flush().ok());
  DropQuery q;
  q.vm = "sg7";
  q.reason = "reserved";
  auto rows = log->drops(q);
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 1U);
  EXPECT_EQ((*rows)[0].dst->to_string(), "192.0.2.99");
}

TEST_F(ListenersTest, AnOverrunIsReportedAndTheTableDumpResyncs) {
  host_sysctl("net.netfilter.nf_conntrack_udp_timeout", "120");
  auto listener = ConntrackListener::open();
  ASSERT_TRUE(listener.ok()) << listener.error().describe();
  ASSERT_TRUE(listener->set_receive_buffer(4096).ok());
  // Many flows while nobody reads: the kernel must drop events.
  guest_sh(std::string("for i in $(seq 1 2000); do echo x >/dev/udp/") + kHostAddr +
           "/$((20000 + i)); done 2>/dev/null");
  auto events = listener->read_events();
  const auto gaps =
      std::count_if(events.begin(), events.end(), [](const FlowEvent& e) { return e.kind == FlowEvent::Kind::gap; });
  EXPECT_EQ(gaps, 1);
  EXPECT_GE(listener->overruns(), 1U);

  auto open_flows = listener->dump_table();
  ASSERT_TRUE(open_flows.ok()) << open_flows.error().describe();
  EXPECT_GE(open_flows->size(), 2000U);
  for (const auto& f : *open_flows) {
    EXPECT_EQ(f.kind, FlowEvent::Kind::open);
    EXPECT_EQ(f.vm_id, 7);
  }
  // A second dump works as well (the socket is left clean).
  ASSERT_TRUE(listener->dump_table().ok());

  auto log = FlowLog::open(dir_ + "/flows.db");
  ASSERT_TRUE(log.ok());
  FlowContext ctx{"sg7", "sha256:test", "untrusted", std::nullopt, "", "direct"};
  for (const auto& e : events) {
    if (e.kind == FlowEvent::Kind::start) log->record_flow_start(e, ctx);
  }
  std::vector<std::pair<FlowEvent, FlowContext>> with_ctx;
  for (const auto& f : *open_flows) with_ctx.emplace_back(f, ctx);
  log->record_resync("ENOBUFS on conntrack socket", with_ctx, open_flows->front().observed_ns / 1'000'000);
  ASSERT_TRUE(log->flush().ok());
  FlowQuery q;
  q.limit = 100000;
  EXPECT_EQ(log->flows(q)->size(), open_flows->size());  // no duplicates, none missing
  auto g = log->gaps(std::nullopt);
  ASSERT_EQ(g->size(), 1U);
  EXPECT_NE((*g)[0].detail.find("resynced " + std::to_string(open_flows->size()) + " open flows"), std::string::npos)
      << (*g)[0].detail;
}

}  // namespace
}  // namespace sg
