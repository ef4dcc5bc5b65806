// Tier 2: NftBackend and NftMonitor against the real kernel, each test in its
// own network namespaces (named sgnft<pid>-*), never in the machine's own.
#include "netpolicy/nft_backend.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <regex>
#include <sstream>
#include <thread>

#include "common/raii/fd.h"
#include "netpolicy/compile.h"
#include "netpolicy/nft_monitor.h"
#include "netpolicy/ruleset.h"
#include "tests/integration/harness.h"
#include "tests/unit/netpolicy/sample_ruleset.h"
#include "tests/unit/netpolicy/test_vm.h"
#include "trust/parse.h"

namespace sg::netpolicy {
namespace {

using test::EnterNetns;

using test::Netns;
using test::RunResult;

std::string ns_prefix() { return "sgnft" + std::to_string(getpid()) + "-"; }

// Removes what differs between two loads of the same ruleset but is not
// policy: element expiry countdowns and rule handles.
std::string normalise_listing(const std::string& text) {
  static const std::regex expires(R"( expires [0-9dhms]+)");
  return std::regex_replace(text, expires, "");
}

// `nft --debug=netlink list` prints the expressions and elements the kernel
// holds. Rule headers carry handles; hash set elements come in hash order.
std::string normalise_netlink(const std::string& text) {
  static const std::regex rule_header(R"(^((inet|arp) \S+ \S+)( [0-9]+)+$)");
  static const std::regex expiration(R"( expiration [0-9]+ms)");
  std::istringstream in(text);
  std::vector<std::string> out;
  std::vector<std::string> elements;
  auto flush = [&] {
    std::sort(elements.begin(), elements.end());
    out.insert(out.end(), elements.begin(), elements.end());
    elements.clear();
  };
  std::string line;
  while (std::getline(in, line)) {
    line = normalise_listing(std::regex_replace(line, expiration, ""));
    if (line.rfind("\telement", 0) == 0) {
      elements.push_back(line);
      continue;
    }
    flush();
    out.push_back(std::regex_replace(line, rule_header, "$1"));
  }
  flush();
  std::string s;
  for (const auto& l : out) s += l + "\n";
  return s;
}

class NftBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto why = test::why_no_namespaces(); !why.empty()) GTEST_SKIP() << why;
    test::remove_netns_with_prefix(ns_prefix());
  }
  void TearDown() override { test::remove_netns_with_prefix(ns_prefix()); }

  static RunResult nft(const Netns& ns, const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"nft"};
    argv.insert(argv.end(), args.begin(), args.end());
    return ns.exec(argv);
  }

  static RunResult nft_load(const Netns& ns, const std::string& text) {
    test::RunOptions o;
    o.netns = ns.name();
    o.stdin_data = text;
    return test::run({"nft", "-f", "-"}, o);
  }

  static std::string list(const Netns& ns, const std::string& family, const std::string& table) {
    auto r = nft(ns, {"list", "table", family, table});
    EXPECT_EQ(r.code, 0) << r.err;
    return normalise_listing(r.out);
  }

  static std::string list_netlink(const Netns& ns, const std::string& family, const std::string& table) {
    auto r = nft(ns, {"--debug=netlink", "list", "table", family, table});
    EXPECT_EQ(r.code, 0) << r.err;
    return normalise_netlink(r.out);
  }

  // Applies a plan from inside ns through a fresh backend.
  static Status apply_in(const Netns& ns, const Plan& plan) {
    EnterNetns enter(ns.name());
    if (!enter.ok()) return make_sys_error("entering " + ns.name());
    auto backend = NftBackend::open();
    if (!backend) return backend.error();
    return backend->apply(plan);
  }
};

TEST_F(NftBackendTest, KernelStateEqualsWhatNftMakesOfTheText) {
  Netns ours(ns_prefix() + "ours");
  Netns theirs(ns_prefix() + "nft");
  const Ruleset rs = sample::full_ruleset();

  auto st = apply_in(ours, plan_replace(rs));
  ASSERT_TRUE(st.ok()) << st.error().describe();
  auto loaded = nft_load(theirs, to_nft_text(rs));
  ASSERT_EQ(loaded.code, 0) << loaded.err << "\n" << to_nft_text(rs);

  for (const std::string family : {"inet", "arp"}) {
    const std::string want = list(theirs, family, "surrogated");
    EXPECT_FALSE(want.empty());
    EXPECT_EQ(list(ours, family, "surrogated"), want) << family;
    EXPECT_EQ(list_netlink(ours, family, "surrogated"), list_netlink(theirs, family, "surrogated")) << family;
  }
}

// What a restart does: the compiled table, VMs and holes in it, replaced by
// itself in one transaction; then one VM removed and added back by plans.
TEST_F(NftBackendTest, CompiledTableReplacesItselfAndVmsComeAndGo) {
  Netns ns(ns_prefix() + "compiled");
  auto policy = trust::parse_policy("[levels.untrusted]\ndaily_quota = \"1GB\"\n", "p.toml");
  ASSERT_TRUE(policy.ok()) << policy.error().message;
  Compiler c(*policy, CompileOptions{});
  std::vector<VmNet> vms;
  for (int id = 1; id <= 3; ++id) {
    VmNet v = test_vms::vm(id, id == 2 ? trust::TrustLevel::semi_trusted : trust::TrustLevel::untrusted);
    v.client.push_back(*Prefix::parse("2001:db8:77::/48"));  // a prefix: the interval map too
    vms.push_back(v);
  }
  std::vector<Hole> holes = {
      {7, "sg1", *Prefix::parse("203.0.113.9"), 6, trust::PortRange{443, 443}, 1790003600},
      {8, "sg1", *Prefix::parse("203.0.113.0/28"), 17, trust::PortRange{5000, 5010}, 0},
      {9, "sg1", *Prefix::parse("2001:db8:9::/64"), 6, trust::PortRange{22, 22}, 0},  // a /64: masked hash map
  };
  const Plan replace = plan_replace(c.compile(vms, holes, 1790000000));
  auto st = apply_in(ns, replace);
  ASSERT_TRUE(st.ok()) << st.error().describe();
  const std::string first = list(ns, "inet", "surrogated");
  st = apply_in(ns, replace);
  ASSERT_TRUE(st.ok()) << st.error().describe();
  EXPECT_EQ(list(ns, "inet", "surrogated"), first);
  // A VM goes (its holes with it, one of them already gone) and comes back.
  ASSERT_TRUE(apply_in(ns, c.plan_remove_hole(vms[0], holes[0], 1790000000)).ok());
  st = apply_in(ns, c.plan_remove_vm(vms[0], holes));
  ASSERT_TRUE(st.ok()) << st.error().describe();
  std::string gone = list(ns, "inet", "surrogated");
  EXPECT_EQ(gone.find("\"sg1\""), std::string::npos) << gone;
  EXPECT_EQ(gone.find("vm_sg1_quota"), std::string::npos) << gone;
  st = apply_in(ns, c.plan_add_vm(vms[0], holes, 1790000000));
  ASSERT_TRUE(st.ok()) << st.error().describe();
  const std::string back = list(ns, "inet", "surrogated");
  for (const char* part : {"\"sg1\" . 52:54:00:00:00:01", "quota vm_sg1_quota", "\"sg1\" : \"vm_sg1_quota\"",
                           "\"sg1\" . 203.0.113.0/28 . udp . 5000-5010", "\"sg1\" . 2001:db8:9:: . tcp . 22",
                           "\"sg1\" comment \"VM 1, untrusted\""}) {
    EXPECT_NE(back.find(part), std::string::npos) << part;
  }
}

// A batch is built in 64 KiB pages; a message that does not fit is moved to
// the next page. Whatever the size, the batch's last message must carry the
// ack request, or a batch the kernel committed reads as unanswered.
TEST_F(NftBackendTest, EveryBatchSizeIsAcknowledged) {
  Netns ns(ns_prefix() + "pages");
  EnterNetns enter(ns.name());
  ASSERT_TRUE(enter.ok());
  auto backend = NftBackend::open();
  ASSERT_TRUE(backend.ok()) << backend.error().describe();
  for (int n = 600; n < 1000; ++n) {
    Plan plan;
    for (Op::Kind k : {Op::Kind::add_table, Op::Kind::delete_table, Op::Kind::add_table}) {
      Op o;
      o.kind = k;
      o.table = "pages";
      plan.ops.push_back(o);
    }
    for (int i = 0; i < n; ++i) {
      Op q;
      q.kind = Op::Kind::add_quota;
      q.table = "pages";
      q.quota = QuotaObject{"q" + std::to_string(i), 1000U + static_cast<std::uint64_t>(i), 0};
      q.name = q.quota.name;
      plan.ops.push_back(q);
    }
    auto st = backend->apply(plan);
    ASSERT_TRUE(st.ok()) << n << " quotas: " << st.error().describe();
  }
}

TEST_F(NftBackendTest, PlanTextLoadsIntoNftToo) {
  Netns ns(ns_prefix() + "plan");
  auto r = nft_load(ns, to_nft_text(plan_replace(sample::full_ruleset())));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nft(ns, {"list", "chain", "inet", "surrogated", "vm_common"}).code, 0);
}

TEST_F(NftBackendTest, ReplaceTwiceIsIdempotentAndTableExists) {
  Netns ns(ns_prefix() + "twice");
  EnterNetns enter(ns.name());
  ASSERT_TRUE(enter.ok());
  auto backend = NftBackend::open();
  ASSERT_TRUE(backend.ok()) << backend.error().describe();
  auto exists = backend->table_exists(TableFamily::inet, "surrogated");
  ASSERT_TRUE(exists.ok()) << exists.error().describe();
  EXPECT_FALSE(*exists);

  const Plan plan = plan_replace(sample::full_ruleset());
  ASSERT_TRUE(backend->apply(plan).ok());
  const std::string first = list(ns, "inet", "surrogated");
  auto st = backend->apply(plan);
  ASSERT_TRUE(st.ok()) << st.error().describe();
  EXPECT_EQ(list(ns, "inet", "surrogated"), first);

  exists = backend->table_exists(TableFamily::inet, "surrogated");
  ASSERT_TRUE(exists.ok());
  EXPECT_TRUE(*exists);
  exists = backend->table_exists(TableFamily::arp, "surrogated");
  ASSERT_TRUE(exists.ok());
  EXPECT_TRUE(*exists);
  exists = backend->table_exists(TableFamily::arp, "other");
  ASSERT_TRUE(exists.ok());
  EXPECT_FALSE(*exists);
}

TEST_F(NftBackendTest, BadOpFailsTheWholePlanAndNamesTheOp) {
  Netns ns(ns_prefix() + "bad");
  EnterNetns enter(ns.name());
  ASSERT_TRUE(enter.ok());
  auto backend = NftBackend::open();
  ASSERT_TRUE(backend.ok());
  ASSERT_TRUE(backend->apply(plan_replace(sample::full_ruleset())).ok());
  const std::string before = list(ns, "inet", "surrogated");

  Ruleset changed = sample::full_ruleset();
  changed.tables[0].chains[1].rules.push_back(
      sample::rule({sample::eq(Field::l4proto, u8_bytes(17))}, {Verdict{Verdict::Kind::jump, "no_such_chain"}}));
  auto st = backend->apply(plan_replace(changed));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().describe().find("kernel refused 'add rule inet surrogated vm_sg3_out meta l4proto udp jump "
                                       "no_such_chain'"),
            std::string::npos)
      << st.error().describe();
  EXPECT_EQ(st.error().sys_errno, ENOENT);
  EXPECT_EQ(list(ns, "inet", "surrogated"), before);

  // A backend-side error (wrong value width) is caught before anything is sent.
  Plan bad;
  Op op;
  op.kind = Op::Kind::add_rule;
  op.table = "surrogated";
  op.name = "vm_common";
  op.rule = sample::rule({sample::eq(Field::ip_saddr, u8_bytes(1))}, {sample::drop()});
  bad.ops.push_back(op);
  st = backend->apply(bad);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().describe().find("has 1 bytes, the field has 4"), std::string::npos) << st.error().describe();
}

TEST_F(NftBackendTest, AddAndDeleteElements) {
  Netns ns(ns_prefix() + "elems");
  EnterNetns enter(ns.name());
  ASSERT_TRUE(enter.ok());
  auto backend = NftBackend::open();
  ASSERT_TRUE(backend.ok());
  const Ruleset rs = sample::full_ruleset();
  ASSERT_TRUE(backend->apply(plan_replace(rs)).ok());
  const Table& t = rs.tables[0];
  auto decl = [&](const std::string& name) {
    for (const auto& s : t.sets) {
      if (s.name == name) return s;
    }
    return Set{};
  };
  // Ops without op.set make the backend read the set's layout from the kernel.
  auto op_for = [&](Op::Kind kind, const std::string& set, std::vector<SetElement> elements, bool with_decl = true) {
    Op op;
    op.kind = kind;
    op.table = "surrogated";
    op.name = set;
    if (with_decl) op.set = decl(set);
    op.set.elements.clear();
    op.elements = std::move(elements);
    return op;
  };
  using sample::addr;
  using sample::elem;
  using sample::part;
  SetElement hole = elem({part(addr("192.0.2.0"), addr("192.0.2.127")), part(u8_bytes(6)), part(be16_bytes(22))});
  hole.timeout_ms = 3600000;
  Plan add;
  add.ops = {op_for(Op::Kind::add_elements, "holes_v4", {hole}),
             op_for(Op::Kind::add_elements, "reserved_v4", {elem({part(addr("192.168.0.0"), addr("192.168.255.255"))})},
                    false),
             op_for(Op::Kind::add_elements, "vm_ifs", {elem({part(ifname_bytes("sg9"))})}, false)};
  auto st = backend->apply(add);
  ASSERT_TRUE(st.ok()) << st.error().describe();
  std::string text = list(ns, "inet", "surrogated");
  EXPECT_NE(text.find("192.0.2.0/25 . tcp . 22 timeout 1h"), std::string::npos) << text;
  EXPECT_NE(text.find("192.168.0.0/16"), std::string::npos) << text;
  EXPECT_NE(text.find("\"sg9\""), std::string::npos) << text;

  Plan del;
  del.ops = {
      op_for(Op::Kind::delete_elements, "holes_v4", {hole}, false),
      op_for(Op::Kind::delete_elements, "reserved_v4", {elem({part(addr("192.168.0.0"), addr("192.168.255.255"))})}),
      op_for(Op::Kind::delete_elements, "vm_ifs", {elem({part(ifname_bytes("sg9"))})})};
  st = backend->apply(del);
  ASSERT_TRUE(st.ok()) << st.error().describe();
  text = list(ns, "inet", "surrogated");
  EXPECT_EQ(text.find("192.0.2.0/25"), std::string::npos) << text;
  EXPECT_EQ(text.find("192.168.0.0/16"), std::string::npos) << text;
  EXPECT_EQ(text.find("\"sg9\""), std::string::npos) << text;
  EXPECT_NE(text.find("10.0.0.0/8"), std::string::npos) << text;

  Op flush;
  flush.kind = Op::Kind::flush_set;
  flush.table = "surrogated";
  flush.name = "vm_ifs";
  st = backend->apply(Plan{{flush}});
  ASSERT_TRUE(st.ok()) << st.error().describe();
  EXPECT_EQ(list(ns, "inet", "surrogated").find("\"sg4\""), std::string::npos);
}

TEST_F(NftBackendTest, ElementTimeoutExpires) {
  Netns ns(ns_prefix() + "expire");
  EnterNetns enter(ns.name());
  ASSERT_TRUE(enter.ok());
  auto backend = NftBackend::open();
  ASSERT_TRUE(backend.ok());
  Ruleset rs = sample::full_ruleset();
  SetElement quick = sample::elem(
      {sample::part(sample::addr("2001:db8::99")), sample::part(u8_bytes(17)), sample::part(be16_bytes(5353))});
  quick.timeout_ms = 1000;
  rs.tables[0].sets[3].elements.push_back(quick);  // holes_v6
  ASSERT_TRUE(backend->apply(plan_replace(rs)).ok());
  EXPECT_NE(list(ns, "inet", "surrogated").find("2001:db8::99 . udp . 5353 timeout 1s"), std::string::npos);
  std::this_thread::sleep_for(std::chrono::milliseconds(2200));
  const std::string after = list(ns, "inet", "surrogated");
  EXPECT_EQ(after.find("2001:db8::99"), std::string::npos) << after;
  EXPECT_NE(after.find("2001:db8::7 . tcp . 443"), std::string::npos) << after;
}

// Packets from a veth named like a VM's tap go through the verdict map into
// that VM's chain; another interface does not.
TEST_F(NftBackendTest, VerdictMapDispatchesByInterfaceName) {
  Netns host(ns_prefix() + "host");
  Netns guest(ns_prefix() + "guest");
  Netns other(ns_prefix() + "other");
  Netns dst(ns_prefix() + "dst");
  auto sh = [](const std::vector<std::string>& argv) {
    auto r = test::run(argv);
    EXPECT_EQ(r.code, 0) << argv[0] << " " << argv[1] << ": " << r.err;
  };
  // guest --sg3-- host --sgx-- other; host --sgd-- dst.
  sh({"ip", "link", "add", "sg3", "netns", host.name(), "type", "veth", "peer", "g0", "netns", guest.name()});
  sh({"ip", "link", "add", "sgx", "netns", host.name(), "type", "veth", "peer", "o0", "netns", other.name()});
  sh({"ip", "link", "add", "up0", "netns", host.name(), "type", "veth", "peer", "d0", "netns", dst.name()});
  auto cfg = [&](const Netns& ns, const std::string& dev, const std::string& addr, const std::string& gw) {
    sh({"ip", "-n", ns.name(), "addr", "add", addr, "dev", dev});
    sh({"ip", "-n", ns.name(), "link", "set", dev, "up"});
    if (!gw.empty()) sh({"ip", "-n", ns.name(), "route", "add", "default", "via", gw});
  };
  cfg(host, "sg3", "192.0.2.1/30", "");
  cfg(host, "sgx", "192.0.2.5/30", "");
  cfg(host, "up0", "192.0.2.9/30", "");
  cfg(guest, "g0", "192.0.2.2/30", "192.0.2.1");
  cfg(other, "o0", "192.0.2.6/30", "192.0.2.5");
  cfg(dst, "d0", "192.0.2.10/30", "192.0.2.9");
  sh({"ip", "netns", "exec", host.name(), "sysctl", "-qw", "net.ipv4.ip_forward=1"});

  Table t;
  t.name = "surrogated";
  Set map{"from_vm", {KeyType::ifname}};
  map.verdict_map = true;
  SetElement e = sample::elem({sample::part(ifname_bytes("sg3"))});
  e.verdict_chain = "vm_sg3_out";
  map.elements = {e};
  t.sets = {map};
  Chain fwd{"forward", BaseHook{BaseHook::Hook::forward, 0, false}, {}};
  fwd.rules = {sample::rule({sample::vmap(Field::iifname, "from_vm")}, {})};
  Chain vm{"vm_sg3_out", std::nullopt, {}};
  vm.rules = {sample::rule({sample::eq(Field::l4proto, u8_bytes(1))}, {Counter{}, sample::drop()}, "sg3: no ping")};
  t.chains = {fwd, vm};
  auto st = apply_in(host, plan_replace(Ruleset{{t}}));
  ASSERT_TRUE(st.ok()) << st.error().describe();

  auto ping = [](const Netns& from) { return from.exec({"ping", "-c", "1", "-W", "1", "192.0.2.10"}).code; };
  EXPECT_NE(ping(guest), 0) << "sg3's ping must be dropped by its own chain";
  EXPECT_EQ(ping(other), 0) << "sgx has no map entry, its ping passes";
  auto counters = host.exec({"nft", "list", "chain", "inet", "surrogated", "vm_sg3_out"});
  EXPECT_NE(counters.out.find("counter packets 1 "), std::string::npos) << counters.out;
}

TEST_F(NftBackendTest, MonitorSeesOthersButNotUs) {
  Netns ns(ns_prefix() + "mon");
  EnterNetns enter(ns.name());
  ASSERT_TRUE(enter.ok());
  auto backend = NftBackend::open();
  ASSERT_TRUE(backend.ok());
  auto monitor = NftMonitor::open("surrogated");
  ASSERT_TRUE(monitor.ok()) << monitor.error().describe();
  monitor->ignore_port(backend->port_id());

  const Plan plan = plan_replace(sample::full_ruleset());
  ASSERT_TRUE(backend->apply(plan).ok());
  ASSERT_TRUE(backend->apply(plan).ok());
  auto events = monitor->read_events();
  EXPECT_TRUE(events.empty()) << events.size() << " events, first: " << to_string(events.front().kind) << " "
                              << events.front().detail;

  auto wait_events = [&] {
    std::vector<NftEvent> all;
    for (int i = 0; i < 20; ++i) {
      pollfd p{monitor->fd(), POLLIN, 0};
      if (poll(&p, 1, 100) <= 0 && !all.empty()) break;
      auto more = monitor->read_events();
      all.insert(all.end(), more.begin(), more.end());
    }
    return all;
  };
  auto has = [](const std::vector<NftEvent>& ev, NftEvent::Kind kind, TableFamily family) {
    return std::any_of(ev.begin(), ev.end(), [&](const NftEvent& e) {
      return e.kind == kind && e.family == family && e.table == "surrogated" && !e.from_our_pid;
    });
  };

  ASSERT_EQ(nft(ns, {"delete", "rule", "inet", "surrogated", "vm_common", "handle",
                     std::regex_replace(nft(ns, {"-a", "list", "chain", "inet", "surrogated", "vm_common"}).out,
                                        std::regex(R"([\s\S]*return # handle ([0-9]+)[\s\S]*)"), "$1")})
                .code,
            0);
  auto ev = wait_events();
  EXPECT_TRUE(has(ev, NftEvent::Kind::rule_deleted, TableFamily::inet));
  ASSERT_FALSE(ev.empty());
  EXPECT_NE(ev.front().describe().find("rule deleted from chain vm_common handle "), std::string::npos)
      << ev.front().describe();

  ASSERT_EQ(nft(ns, {"delete", "table", "inet", "surrogated"}).code, 0);
  ev = wait_events();
  EXPECT_TRUE(has(ev, NftEvent::Kind::table_deleted, TableFamily::inet));
  EXPECT_FALSE(has(ev, NftEvent::Kind::table_deleted, TableFamily::arp));

  ASSERT_TRUE(backend->apply(plan).ok());
  EXPECT_TRUE(monitor->read_events().empty());
  ASSERT_EQ(nft(ns, {"flush", "ruleset"}).code, 0);
  ev = wait_events();
  EXPECT_TRUE(has(ev, NftEvent::Kind::table_deleted, TableFamily::inet));
  EXPECT_TRUE(has(ev, NftEvent::Kind::table_deleted, TableFamily::arp));

  // Someone adding to our table is reported too.
  ASSERT_TRUE(backend->apply(plan).ok());
  ASSERT_EQ(nft(ns, {"add", "rule", "inet", "surrogated", "forward", "accept"}).code, 0);
  ev = wait_events();
  EXPECT_TRUE(has(ev, NftEvent::Kind::changed, TableFamily::inet));
}

TEST_F(NftBackendTest, MonitorTagsChangesFromAnotherSocketOfThisProcess) {
  Netns ns(ns_prefix() + "mon2");
  EnterNetns enter(ns.name());
  ASSERT_TRUE(enter.ok());
  auto backend = NftBackend::open();
  ASSERT_TRUE(backend.ok());
  auto monitor = NftMonitor::open("surrogated");
  ASSERT_TRUE(monitor.ok());
  ASSERT_TRUE(backend->apply(plan_replace(sample::full_ruleset())).ok());
  std::vector<NftEvent> ev;
  for (int i = 0; i < 10 && ev.empty(); ++i) {
    pollfd p{monitor->fd(), POLLIN, 0};
    poll(&p, 1, 100);
    ev = monitor->read_events();
  }
  ASSERT_FALSE(ev.empty());
  EXPECT_TRUE(std::all_of(ev.begin(), ev.end(), [](const NftEvent& e) { return e.from_our_pid && e.from_us; }));
}

}  // namespace
}  // namespace sg::netpolicy
