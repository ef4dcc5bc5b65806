// FlowLog against a real SQLite file in a temporary directory: batching,
// start/end matching, drop rate limiting, gaps, retention, queries and a
// simulated full disk.
#include "surrogated/flow_log.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <time.h>

#include <filesystem>
#include <nlohmann/json.hpp>

namespace sg {
namespace {

using netpolicy::DropEvent;
using netpolicy::FlowEvent;

std::int64_t wall_ms() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

IpAddress ip(const char* text) { return IpAddress::parse(text).value(); }
Prefix prefix(const char* text) { return Prefix::parse(text).value(); }

FlowEvent flow(std::uint32_t ct_id, std::int64_t vm, const char* src, const char* dst, std::uint16_t dport,
               std::int64_t start_ms, std::uint8_t proto = IPPROTO_TCP) {
  FlowEvent ev;
  ev.kind = FlowEvent::Kind::start;
  ev.ct_id = ct_id;
  ev.mark = static_cast<std::uint32_t>(vm);
  ev.vm_id = vm;
  ev.src = ip(src);
  ev.dst = ip(dst);
  ev.family = ev.src.family;
  ev.proto = proto;
  ev.has_ports = true;
  ev.sport = 40000;
  ev.dport = dport;
  ev.start_ns = start_ms * 1'000'000;
  ev.observed_ns = ev.start_ns;
  ev.orig_packets = 1;
  ev.orig_bytes = 60;
  return ev;
}

FlowEvent ended(FlowEvent ev, std::int64_t end_ms, std::uint64_t bytes_out, std::uint64_t bytes_in) {
  ev.kind = FlowEvent::Kind::end;
  ev.stop_ns = end_ms * 1'000'000;
  ev.observed_ns = ev.stop_ns;
  ev.orig_packets = 10;
  ev.orig_bytes = bytes_out;
  ev.reply_packets = 8;
  ev.reply_bytes = bytes_in;
  return ev;
}

FlowContext context(std::int64_t vm, const std::string& client = "sha256:alice") {
  FlowContext c;
  c.vm_name = "sg" + std::to_string(vm);
  c.client_fp = client;
  c.trust_level = "semi-trusted";
  c.client_contact = "alice@example.org";
  return c;
}

DropEvent drop(const char* vm, const char* reason, const char* dst, std::int64_t time_ms) {
  DropEvent ev;
  ev.time_ns = time_ms * 1'000'000;
  ev.vm = vm;
  ev.vm_id = std::atoi(vm + 2);
  ev.reason = reason;
  ev.has_addresses = true;
  ev.dst = ip(dst);
  ev.family = ev.dst.family;
  ev.src = ev.family == Family::v4 ? ip("192.0.2.10") : ip("2001:db8::10");
  ev.proto = IPPROTO_UDP;
  ev.has_ports = true;
  ev.sport = 5000;
  ev.dport = 53;
  ev.length = 80;
  return ev;
}

class FlowLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/sg-flowlog-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/flows.db";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  FlowLog open(FlowLog::Options o = {}) {
    auto r = FlowLog::open(path_, o);
    EXPECT_TRUE(r.ok()) << r.error().describe();
    return std::move(r).value();
  }

  static std::vector<FlowRecord> all_flows(const FlowLog& log) {
    auto r = log.flows(FlowQuery{});
    EXPECT_TRUE(r.ok()) << r.error().describe();
    return r.ok() ? *r : std::vector<FlowRecord>{};
  }

  std::string dir_;
  std::string path_;
};

// Conntrack ids are 32-bit hashes: two open flows of one VM may share one.
// Each still gets its row, and each end closes its own.
TEST_F(FlowLogTest, OpenFlowsSharingACtIdAreToldApartByTheirTuple) {
  auto log = open();
  const auto t = wall_ms();
  auto a = flow(77, 3, "192.0.2.3", "198.51.100.1", 443, t);
  auto b = flow(77, 3, "192.0.2.3", "198.51.100.2", 80, t);
  log.record_flow_start(a, context(3));
  log.record_flow_start(b, context(3));
  log.record_flow_end(ended(b, t + 500, 2000, 100), context(3));
  ASSERT_TRUE(log.flush().ok());
  auto rows = all_flows(log);
  ASSERT_EQ(rows.size(), 2U);
  for (const auto& r : rows) {
    if (r.dst == ip("198.51.100.2")) {
      EXPECT_TRUE(r.end_ms.has_value());
      EXPECT_EQ(r.orig_bytes, 2000);
    } else {
      EXPECT_FALSE(r.end_ms.has_value()) << "the other flow's end closed this one";
    }
  }
}

TEST_F(FlowLogTest, NothingIsVisibleBeforeTheBatchIsDueAndEverythingAfter) {
  auto log = open();
  const auto t = wall_ms();
  for (std::uint32_t i = 1; i <= 5; ++i)
    log.record_flow_start(flow(i, 3, "192.0.2.3", "198.51.100.1", 443, t), context(3));
  ASSERT_TRUE(log.maybe_flush(t + 100).ok());  // neither 1 s nor 1000 records yet
  EXPECT_TRUE(all_flows(log).empty());
  EXPECT_EQ(log.stats().queued, 5U);
  ASSERT_TRUE(log.maybe_flush(t + 1500).ok());
  EXPECT_EQ(all_flows(log).size(), 5U);
  EXPECT_EQ(log.stats().queued, 0U);
}

TEST_F(FlowLogTest, ABatchIsCommittedWhenItReachesItsSize) {
  FlowLog::Options o;
  o.batch_records = 10;
  auto log = open(o);
  const auto t = wall_ms();
  for (std::uint32_t i = 1; i <= 9; ++i)
    log.record_flow_start(flow(i, 3, "192.0.2.3", "198.51.100.1", 443, t), context(3));
  ASSERT_TRUE(log.maybe_flush(t).ok());
  EXPECT_TRUE(all_flows(log).empty());
  log.record_flow_start(flow(10, 3, "192.0.2.3", "198.51.100.1", 443, t), context(3));
  ASSERT_TRUE(log.maybe_flush(t).ok());
  EXPECT_EQ(all_flows(log).size(), 10U);
}

TEST_F(FlowLogTest, ACleanStopLosesNothing) {
  const auto t = wall_ms();
  {
    auto log = open();
    log.record_flow_start(flow(1, 3, "192.0.2.3", "198.51.100.1", 443, t), context(3));
    log.record_drop(drop("sg3", "reserved", "10.0.0.1", t), context(3));
  }  // destructor flushes
  auto log = open();
  EXPECT_EQ(all_flows(log).size(), 1U);
  EXPECT_EQ(log.drops(DropQuery{})->size(), 1U);
}

TEST_F(FlowLogTest, TheEndUpdatesTheRowOfItsStart) {
  auto log = open();
  const auto t = wall_ms();
  const auto start = flow(77, 3, "192.0.2.3", "198.51.100.1", 443, t);
  log.record_flow_start(start, context(3));
  ASSERT_TRUE(log.flush().ok());
  log.record_flow_end(ended(start, t + 5000, 1234, 5678), context(3));
  ASSERT_TRUE(log.flush().ok());
  auto rows = all_flows(log);
  ASSERT_EQ(rows.size(), 1U);
  EXPECT_EQ(rows[0].origin, "new");
  EXPECT_EQ(rows[0].start_ms, t);
  ASSERT_TRUE(rows[0].end_ms.has_value());
  EXPECT_EQ(*rows[0].end_ms, t + 5000);
  EXPECT_EQ(rows[0].orig_bytes, 1234);
  EXPECT_EQ(rows[0].reply_bytes, 5678);
  EXPECT_EQ(rows[0].client_fp, "sha256:alice");
  EXPECT_EQ(rows[0].trust_level, "semi-trusted");
}

TEST_F(FlowLogTest, StartAndEndInTheSameBatchMakeOneRow) {
  auto log = open();
  const auto t = wall_ms();
  const auto start = flow(5, 3, "192.0.2.3", "198.51.100.1", 443, t);
  log.record_flow_start(start, context(3));
  log.record_flow_end(ended(start, t + 10, 1, 2), context(3));
  ASSERT_TRUE(log.flush().ok());
  auto rows = all_flows(log);
  ASSERT_EQ(rows.size(), 1U);
  EXPECT_TRUE(rows[0].end_ms.has_value());
}

TEST_F(FlowLogTest, AReusedConntrackIdWithAnotherStartIsAnotherFlow) {
  auto log = open();
  const auto t = wall_ms();
  const auto first = flow(9, 3, "192.0.2.3", "198.51.100.1", 443, t);
  const auto second = flow(9, 3, "192.0.2.3", "198.51.100.2", 443, t + 1000);
  log.record_flow_start(first, context(3));
  log.record_flow_start(second, context(3));
  log.record_flow_end(ended(first, t + 2000, 100, 0), context(3));
  ASSERT_TRUE(log.flush().ok());
  auto rows = all_flows(log);
  ASSERT_EQ(rows.size(), 2U);
  EXPECT_TRUE(rows[0].end_ms.has_value());   // the first
  EXPECT_FALSE(rows[1].end_ms.has_value());  // the second is still open
}

TEST_F(FlowLogTest, AnEndWithoutItsStartIsACompleteRow) {
  auto log = open();
  const auto t = wall_ms();
  log.record_flow_end(ended(flow(8, 4, "192.0.2.4", "203.0.113.9", 80, t), t + 3000, 999, 111), context(4));
  ASSERT_TRUE(log.flush().ok());
  auto rows = all_flows(log);
  ASSERT_EQ(rows.size(), 1U);
  EXPECT_EQ(rows[0].origin, "end");
  EXPECT_EQ(rows[0].start_ms, t);
  EXPECT_EQ(*rows[0].end_ms, t + 3000);
  EXPECT_EQ(rows[0].orig_bytes, 999);
  EXPECT_EQ(rows[0].vm_name, "sg4");
}

TEST_F(FlowLogTest, AnEndWithATimestampMatchesAStartThatHadNone) {
  // The kernel's shape: NEW events carry no timestamp (the row starts at the
  // time the event was read), DESTROY events carry the exact start.
  auto log = open();
  const auto t = wall_ms();
  auto start = flow(21, 3, "192.0.2.3", "198.51.100.1", 443, t);
  start.start_ns = 0;
  start.observed_ns = (t + 3) * 1'000'000;
  log.record_flow_start(start, context(3));
  ASSERT_TRUE(log.flush().ok());
  auto end = ended(start, t + 900, 5, 6);
  end.start_ns = t * 1'000'000;
  log.record_flow_end(end, context(3));
  // A resync that finds it open again must not duplicate it either.
  auto open_again = end;
  open_again.kind = FlowEvent::Kind::open;
  ASSERT_TRUE(log.flush().ok());
  auto rows = all_flows(log);
  ASSERT_EQ(rows.size(), 1U);
  EXPECT_EQ(rows[0].start_ms, t);  // corrected to the kernel's start
  EXPECT_EQ(*rows[0].end_ms, t + 900);
  EXPECT_EQ(rows[0].origin, "new");
}

TEST_F(FlowLogTest, AResyncDoesNotDuplicateAFlowWhoseStartHadNoTimestamp) {
  auto log = open();
  const auto t = wall_ms();
  auto start = flow(22, 3, "192.0.2.3", "198.51.100.1", 443, t);
  start.start_ns = 0;
  start.observed_ns = (t + 3) * 1'000'000;
  log.record_flow_start(start, context(3));
  auto dumped = flow(22, 3, "192.0.2.3", "198.51.100.1", 443, t);  // the dump has the timestamp
  dumped.kind = FlowEvent::Kind::open;
  log.record_resync("ENOBUFS on conntrack socket", {{dumped, context(3)}}, t + 100);
  ASSERT_TRUE(log.flush().ok());
  EXPECT_EQ(all_flows(log).size(), 1U);
}

TEST_F(FlowLogTest, WithoutKernelTimestampsAnEndStillFindsItsOpenRow) {
  auto log = open();
  const auto t = wall_ms();
  auto start = flow(12, 3, "192.0.2.3", "198.51.100.1", 443, t);
  start.start_ns = 0;  // nf_conntrack_timestamp was off
  log.record_flow_start(start, context(3));
  auto end = ended(start, t + 700, 5, 6);
  end.stop_ns = 0;
  log.record_flow_end(end, context(3));
  ASSERT_TRUE(log.flush().ok());
  auto rows = all_flows(log);
  ASSERT_EQ(rows.size(), 1U);
  EXPECT_EQ(rows[0].start_ms, t);
  EXPECT_EQ(*rows[0].end_ms, t + 700);
}

TEST_F(FlowLogTest, DropsAreRateLimitedPerVmAndReasonWithSuppressedCounts) {
  FlowLog::Options o;
  o.drops_per_second = 3;
  auto log = open(o);
  const auto t = (wall_ms() / 1000) * 1000;  // the start of a second
  for (int i = 0; i < 10; ++i) log.record_drop(drop("sg3", "reserved", "10.0.0.1", t + i * 10), context(3));
  // Another pair is limited on its own.
  for (int i = 0; i < 2; ++i) log.record_drop(drop("sg3", "spoof-ip", "10.0.0.1", t + i), context(3));
  // The next second of the first pair closes its window.
  log.record_drop(drop("sg3", "reserved", "10.0.0.2", t + 1000), context(3));
  ASSERT_TRUE(log.flush().ok());

  DropQuery q;
  q.vm = "sg3";
  q.reason = "reserved";
  auto rows = log.drops(q);
  ASSERT_TRUE(rows.ok());
  std::int64_t packets = 0, suppressed = 0, summaries = 0;
  for (const auto& r : *rows) {
    if (r.kind == "packet") ++packets;
    if (r.kind == "summary") {
      ++summaries;
      suppressed += r.suppressed;
      EXPECT_EQ(r.time_ms, t + 90);  // the last suppressed drop
    }
  }
  EXPECT_EQ(packets, 4);  // 3 in the first second, 1 in the next
  EXPECT_EQ(summaries, 1);
  EXPECT_EQ(suppressed, 7);
  EXPECT_EQ(packets + suppressed, 11);  // every drop is accounted for
  q.reason = "spoof-ip";
  EXPECT_EQ(log.drops(q)->size(), 2U);
  EXPECT_EQ(log.stats().suppressed_total, 7U);
}

TEST_F(FlowLogTest, MaybeFlushWritesTheSummaryOfAWindowThatIsOver) {
  FlowLog::Options o;
  o.drops_per_second = 1;
  auto log = open(o);
  const auto t = (wall_ms() / 1000) * 1000;
  for (int i = 0; i < 5; ++i) log.record_drop(drop("sg5", "no-chain", "198.51.100.9", t + i), std::nullopt);
  ASSERT_TRUE(log.maybe_flush(t + 2500).ok());  // flood over: no next drop will come
  DropQuery q;
  q.vm = "sg5";
  auto rows = log.drops(q);
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 2U);
  EXPECT_EQ((*rows)[1].kind, "summary");
  EXPECT_EQ((*rows)[1].suppressed, 4);
  EXPECT_EQ((*rows)[0].client_fp, "");  // unknown VM context
}

TEST_F(FlowLogTest, GapsAreRecorded) {
  auto log = open();
  const auto t = wall_ms();
  log.record_gap("nflog", "ENOBUFS on nflog socket of group 1: drop logs lost", 17, t);
  ASSERT_TRUE(log.flush().ok());
  auto gaps = log.gaps(std::nullopt);
  ASSERT_TRUE(gaps.ok());
  ASSERT_EQ(gaps->size(), 1U);
  EXPECT_EQ((*gaps)[0].source, "nflog");
  EXPECT_EQ((*gaps)[0].lost, 17);
  nlohmann::json j = (*gaps)[0];
  EXPECT_EQ(j["detail"], "ENOBUFS on nflog socket of group 1: drop logs lost");
}

TEST_F(FlowLogTest, AResyncRecordsOpenFlowsAndClosesTheOnesThatEndedUnseen) {
  auto log = open();
  const auto t = wall_ms();
  const auto kept = flow(1, 3, "192.0.2.3", "198.51.100.1", 443, t);
  const auto gone = flow(2, 3, "192.0.2.3", "198.51.100.2", 443, t);
  log.record_flow_start(kept, context(3));
  log.record_flow_start(gone, context(3));
  ASSERT_TRUE(log.flush().ok());
  // Events were lost: the dump shows `kept` and a flow whose NEW was lost.
  auto unseen = flow(3, 3, "192.0.2.3", "198.51.100.3", 22, t + 10);
  unseen.kind = FlowEvent::Kind::open;
  auto kept_open = kept;
  kept_open.kind = FlowEvent::Kind::open;
  log.record_resync("ENOBUFS on conntrack socket", {{kept_open, context(3)}, {unseen, context(3)}}, t + 100);
  // A NEW event of `unseen` read after the overrun must not make a second row.
  log.record_flow_start(unseen, context(3));
  ASSERT_TRUE(log.flush().ok());

  auto rows = all_flows(log);
  ASSERT_EQ(rows.size(), 3U);
  EXPECT_FALSE(rows[0].end_ms.has_value());
  EXPECT_TRUE(rows[1].end_lost);
  EXPECT_EQ(*rows[1].end_ms, t + 100);
  EXPECT_EQ(rows[2].origin, "resync");
  auto gaps = log.gaps(std::nullopt);
  ASSERT_EQ(gaps->size(), 1U);
  EXPECT_NE((*gaps)[0].detail.find("ENOBUFS on conntrack socket, resynced 2 open flows"), std::string::npos)
      << (*gaps)[0].detail;
  EXPECT_NE((*gaps)[0].detail.find("1 flows ended unseen"), std::string::npos) << (*gaps)[0].detail;
}

TEST_F(FlowLogTest, RetentionByAgeKeepsOpenAndRecentRows) {
  auto log = open();
  const auto now = wall_ms();
  const auto old_t = now - 10 * 86400 * 1000LL;
  const auto old_flow = flow(1, 3, "192.0.2.3", "198.51.100.1", 443, old_t);
  log.record_flow_start(old_flow, context(3));
  log.record_flow_end(ended(old_flow, old_t + 1000, 1, 1), context(3));
  log.record_flow_start(flow(2, 3, "192.0.2.3", "198.51.100.2", 443, old_t), context(3));  // still open
  log.record_flow_start(flow(3, 3, "192.0.2.3", "198.51.100.3", 443, now), context(3));
  log.record_drop(drop("sg3", "reserved", "10.0.0.1", old_t), context(3));
  log.record_drop(drop("sg3", "reserved", "10.0.0.1", now), context(3));
  log.record_gap("nflog", "old", 0, old_t);
  ASSERT_TRUE(log.flush().ok());

  auto report = log.apply_retention(7 * 86400, 0, now);
  ASSERT_TRUE(report.ok()) << report.error().describe();
  EXPECT_EQ(report->flows_deleted, 1);
  EXPECT_EQ(report->drops_deleted, 1);
  EXPECT_EQ(report->gaps_deleted, 1);
  auto rows = all_flows(log);
  ASSERT_EQ(rows.size(), 2U);
  EXPECT_EQ(rows[0].ct_id, 2);
  EXPECT_EQ(rows[1].ct_id, 3);
}

TEST_F(FlowLogTest, RetentionBySizeDeletesTheOldestRows) {
  FlowLog::Options o;
  o.batch_records = 100000;
  auto log = open(o);
  const auto t = wall_ms() - 100000;
  for (std::uint32_t i = 0; i < 20000; ++i) {
    log.record_flow_start(flow(i + 1, 3, "192.0.2.3", "198.51.100.1", static_cast<std::uint16_t>(i), t + i),
                          context(3));
  }
  ASSERT_TRUE(log.flush().ok());
  auto before = log.apply_retention(0, 0, wall_ms());
  ASSERT_TRUE(before.ok());
  const auto limit = before->bytes_in_use / 2;
  auto report = log.apply_retention(0, limit, wall_ms());
  ASSERT_TRUE(report.ok()) << report.error().describe();
  EXPECT_LE(report->bytes_in_use, limit);
  EXPECT_GT(report->flows_deleted, 0);
  FlowQuery q;
  q.limit = 1;
  auto oldest = log.flows(q);
  ASSERT_EQ(oldest->size(), 1U);
  EXPECT_EQ((*oldest)[0].start_ms, t + report->flows_deleted);  // exactly the oldest ones went
}

class FlowLogQueryTest : public FlowLogTest {
 protected:
  void SetUp() override {
    FlowLogTest::SetUp();
    log_.emplace(open());
    t_ = wall_ms() - 3600 * 1000;
    auto ctx7 = context(7, "sha256:bob");
    ctx7.authcert_id = "ac-42";
    ctx7.trust_level = "untrusted";
    // sg3 (alice): v4 flows to 203.0.113.0/24 and one to 198.51.100.1; sg7 (bob): v6.
    add(flow(1, 3, "192.0.2.3", "203.0.113.7", 443, t_), context(3), t_ + 60'000, 1000, 100);
    add(flow(2, 3, "192.0.2.3", "203.0.113.200", 80, t_ + 120'000), context(3), t_ + 180'000, 2000, 200);
    add(flow(3, 3, "192.0.2.3", "198.51.100.1", 443, t_ + 130'000), context(3), std::nullopt, 0, 0);
    add(flow(4, 7, "2001:db8:7::2", "2001:db8:beef::1", 443, t_ + 10'000), ctx7, t_ + 20'000, 50000, 5000);
    add(flow(5, 7, "2001:db8:7::2", "2001:db8:cafe::1", 25, t_ + 30'000), ctx7, t_ + 40'000, 10, 1);
    // v4-mapped v6 destination must not match a v4 prefix query.
    add(flow(6, 7, "2001:db8:7::2", "::ffff:203.0.113.7", 443, t_), ctx7, t_ + 60'000, 1, 1);
    ASSERT_TRUE(log_->flush().ok());
  }

  void add(const FlowEvent& start, const FlowContext& ctx, std::optional<std::int64_t> end_ms, std::uint64_t out,
           std::uint64_t in) {
    log_->record_flow_start(start, ctx);
    if (end_ms) log_->record_flow_end(ended(start, *end_ms, out, in), ctx);
  }

  std::vector<std::int64_t> ct_ids(const FlowQuery& q) {
    auto r = log_->flows(q);
    EXPECT_TRUE(r.ok()) << r.error().describe();
    std::vector<std::int64_t> out;
    for (const auto& f : *r) out.push_back(f.ct_id);
    std::sort(out.begin(), out.end());
    return out;
  }

  std::optional<FlowLog> log_;
  std::int64_t t_ = 0;
};

TEST_F(FlowLogQueryTest, FlowsByVmClientPortAndTime) {
  FlowQuery q;
  q.vm = "sg3";
  EXPECT_EQ(ct_ids(q), (std::vector<std::int64_t>{1, 2, 3}));
  q = {};
  q.client_fp = "sha256:bob";
  EXPECT_EQ(ct_ids(q), (std::vector<std::int64_t>{4, 5, 6}));
  q = {};
  q.port = 25;
  EXPECT_EQ(ct_ids(q), (std::vector<std::int64_t>{5}));
  q = {};
  q.since_ms = t_ + 150'000;  // still open then: 2 (ends at 180 s) and 3 (open)
  EXPECT_EQ(ct_ids(q), (std::vector<std::int64_t>{2, 3}));
  q = {};
  q.until_ms = t_ + 5'000;
  EXPECT_EQ(ct_ids(q), (std::vector<std::int64_t>{1, 6}));
  q = {};
  q.limit = 2;
  EXPECT_EQ(ct_ids(q).size(), 2U);
}

TEST_F(FlowLogQueryTest, PrefixQueriesForBothFamilies) {
  FlowQuery q;
  q.to = prefix("203.0.113.0/24");
  EXPECT_EQ(ct_ids(q), (std::vector<std::int64_t>{1, 2}));
  q.to = prefix("203.0.113.0/25");
  EXPECT_EQ(ct_ids(q), (std::vector<std::int64_t>{1}));
  q.to = prefix("203.0.113.7");
  EXPECT_EQ(ct_ids(q), (std::vector<std::int64_t>{1}));
  q.to = prefix("0.0.0.0/0");
  EXPECT_EQ(ct_ids(q), (std::vector<std::int64_t>{1, 2, 3}));
  q.to = prefix("2001:db8::/32");
  EXPECT_EQ(ct_ids(q), (std::vector<std::int64_t>{4, 5}));
  q.to = prefix("2001:db8:beef::/48");
  EXPECT_EQ(ct_ids(q), (std::vector<std::int64_t>{4}));
  q.to = prefix("2001:db8:cafe::1");
  EXPECT_EQ(ct_ids(q), (std::vector<std::int64_t>{5}));
  q.to = prefix("::ffff:0:0/96");
  EXPECT_EQ(ct_ids(q), (std::vector<std::int64_t>{6}));
  q.to = prefix("2001:db8:beef::/48");
  q.port = 443;
  q.vm = "sg7";
  EXPECT_EQ(ct_ids(q), (std::vector<std::int64_t>{4}));
}

TEST_F(FlowLogQueryTest, WhoSentFindsFlowsOverlappingTheTime) {
  // At t+30 s only flow 1 (t..t+60 s) was talking to 203.0.113.7.
  auto r = log_->who_sent(prefix("203.0.113.7"), t_ + 30'000, t_ + 30'000);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 1U);
  EXPECT_EQ((*r)[0].vm_name, "sg3");
  EXPECT_EQ((*r)[0].client_fp, "sha256:alice");
  EXPECT_EQ((*r)[0].orig_bytes, 1000);
  // After it ended: nothing.
  EXPECT_TRUE(log_->who_sent(prefix("203.0.113.7"), t_ + 61'000, t_ + 61'000)->empty());
  // A window that only overlaps the flow's tail.
  EXPECT_EQ(log_->who_sent(prefix("203.0.113.0/24"), t_ + 50'000, t_ + 125'000)->size(), 2U);
  // v6 with the authcert that allowed it.
  auto v6 = log_->who_sent(prefix("2001:db8:beef::1"), t_ + 15'000, t_ + 15'000);
  ASSERT_EQ(v6->size(), 1U);
  EXPECT_EQ((*v6)[0].authcert_id, std::optional<std::string>("ac-42"));
  EXPECT_EQ((*v6)[0].trust_level, "untrusted");
  // An open flow overlaps any later time.
  EXPECT_EQ(log_->who_sent(prefix("198.51.100.1"), t_ + 3'000'000, t_ + 3'000'000)->size(), 1U);
  nlohmann::json j = (*v6)[0];
  EXPECT_EQ(j["dst"], "2001:db8:beef::1");
  EXPECT_EQ(j["authcert_id"], "ac-42");
  EXPECT_EQ(j["vm"], "sg7");
}

TEST_F(FlowLogQueryTest, TopByBytesAndByFlows) {
  TopQuery q;
  q.by = TopBy::bytes;
  auto r = log_->top(q);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 2U);
  EXPECT_EQ((*r)[0].vm_name, "sg7");
  EXPECT_EQ((*r)[0].bytes_out, 50011);
  EXPECT_EQ((*r)[0].flows, 3);
  q.by = TopBy::flows;
  q.since_ms = t_ + 100'000;
  r = log_->top(q);
  ASSERT_EQ(r->size(), 1U);
  EXPECT_EQ((*r)[0].vm_name, "sg3");
  EXPECT_EQ((*r)[0].flows, 2);
  nlohmann::json j = (*r)[0];
  EXPECT_EQ(j["client_fp"], "sha256:alice");
}

TEST_F(FlowLogTest, DropQueries) {
  auto log = open();
  const auto t = wall_ms() - 10'000;
  log.record_drop(drop("sg3", "reserved", "10.1.2.3", t), context(3));
  log.record_drop(drop("sg3", "spoof-ip", "198.51.100.4", t + 1000), context(3));
  log.record_drop(drop("sg9", "reserved", "fc00::1", t + 2000), context(9));
  ASSERT_TRUE(log.flush().ok());
  DropQuery q;
  q.reason = "reserved";
  EXPECT_EQ(log.drops(q)->size(), 2U);
  q = {};
  q.to = prefix("10.0.0.0/8");
  auto r = log.drops(q);
  ASSERT_EQ(r->size(), 1U);
  EXPECT_EQ((*r)[0].dst->to_string(), "10.1.2.3");
  EXPECT_EQ(*(*r)[0].dport, 53);
  q = {};
  q.to = prefix("fc00::/7");
  r = log.drops(q);
  ASSERT_EQ(r->size(), 1U);
  EXPECT_EQ((*r)[0].vm_name, "sg9");
  q = {};
  q.since_ms = t + 500;
  q.until_ms = t + 1500;
  r = log.drops(q);
  ASSERT_EQ(r->size(), 1U);
  EXPECT_EQ((*r)[0].reason, "spoof-ip");
  nlohmann::json j = (*r)[0];
  EXPECT_EQ(j["vm"], "sg3");
  EXPECT_EQ(j["dst"], "198.51.100.4");
}

TEST_F(FlowLogTest, ADiskFullKeepsRunningCountsLossAndRecordsAGapOnceSpaceIsBack) {
  FlowLog::Options o;
  o.max_backlog = 200;
  o.batch_records = 100000;
  auto log = open(o);
  const auto t = wall_ms();
  // Freeze the file at its current size: every new page is "disk full".
  auto pages = [&] {
    sqlite3_stmt* s = nullptr;
    sqlite3_prepare_v2(log.handle(), "PRAGMA page_count", -1, &s, nullptr);
    sqlite3_step(s);
    auto n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return n;
  };
  ASSERT_EQ(sqlite3_exec(log.handle(), ("PRAGMA max_page_count=" + std::to_string(pages())).c_str(), nullptr, nullptr,
                         nullptr),
            SQLITE_OK);
  auto ctx = context(3);
  ctx.client_contact = std::string(500, 'x');  // fill pages fast
  for (std::uint32_t i = 1; i <= 150; ++i) log.record_flow_start(flow(i, 3, "192.0.2.3", "198.51.100.1", 443, t), ctx);
  auto st = log.flush();
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("records kept"), std::string::npos) << st.error().message;
  EXPECT_EQ(log.stats().queued, 150U);
  EXPECT_EQ(log.stats().failed_commits, 1U);
  // Still failing: the backlog is bounded, the rest is counted.
  for (std::uint32_t i = 151; i <= 300; ++i)
    log.record_flow_start(flow(i, 3, "192.0.2.3", "198.51.100.1", 443, t), ctx);
  EXPECT_FALSE(log.maybe_flush(t + 5000).ok());
  EXPECT_EQ(log.stats().queued, 200U);
  EXPECT_EQ(log.stats().lost_unreported, 100U);

  // Space is back.
  ASSERT_EQ(sqlite3_exec(log.handle(), "PRAGMA max_page_count=1000000", nullptr, nullptr, nullptr), SQLITE_OK);
  ASSERT_TRUE(log.maybe_flush(t + 10000).ok());
  EXPECT_EQ(all_flows(log).size(), 200U);
  auto gaps = log.gaps(std::nullopt);
  ASSERT_TRUE(gaps.ok());
  ASSERT_EQ(gaps->size(), 1U);
  EXPECT_EQ((*gaps)[0].source, "flowlog");
  EXPECT_EQ((*gaps)[0].lost, 100);
  EXPECT_NE((*gaps)[0].detail.find("disk full or write error: 100 records lost"), std::string::npos)
      << (*gaps)[0].detail;
  EXPECT_EQ(log.stats().lost_total, 100U);
  EXPECT_EQ(log.stats().lost_unreported, 0U);
}

TEST_F(FlowLogTest, ANewerSchemaIsRefusedWithAHint) {
  { auto log = open(); }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  sqlite3_exec(db, "UPDATE meta SET value='99' WHERE key='flowlog_schema'", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  auto r = FlowLog::open(path_);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("upgrade surrogated"), std::string::npos);
}

}  // namespace
}  // namespace sg
