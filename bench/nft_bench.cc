// nft_bench: the nftables enforcement benchmark of GitHub issue 4.
//
// Measures, against the real kernel inside private network namespaces (never
// the machine's own):
//   1. one change (add / remove a VM, add / remove a hole) applied through
//      NftBackend with 10, 100 and 1,000 VMs present, each VM with 100 holes;
//   2. reconciling 1,000 VMs from scratch: plan_replace(compile(...)) in one
//      transaction;
//   3. forwarding throughput (iperf3) through a VM's chain with 1,000 VMs'
//      rules loaded, against no rules at all, alternating runs.
// Targets are printed as PASS / MISS; a miss never fails the program (these
// machines are noisy). The last line of output is one JSON object.
//
// Run it through bench/run-nft-bench (root, release build, cleanup of
// namespaces even on failure). Namespaces are named "<prefix>-...".
#include <fcntl.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_main.h"
#include "common/raii/fd.h"
#include "netpolicy/compile.h"
#include "netpolicy/nft_backend.h"
#include "netpolicy/ruleset.h"
#include "tests/integration/harness.h"
#include "trust/parse.h"

namespace sg::bench {
namespace {

using netpolicy::Compiler;
using netpolicy::Hole;
using netpolicy::NftBackend;
using netpolicy::Plan;
using netpolicy::VmNet;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string prefix = "sgbench" + std::to_string(getpid());
  std::vector<int> sizes = {10, 100, 1000};
  int holes_per_vm = 100;
  int reps = 50;
  int batch_vms = 50;  // VMs per plan while building up the ruleset
  int reconcile_runs = 3;
  int iperf_seconds = 5;
  int iperf_rounds = 3;  // each round: with rules, without, conntrack only; order rotates
  bool iperf = true;
  // iperf3's client on CPU 0 and its server on CPU 1 (with 2 CPUs or more):
  // without it, where the scheduler puts them moves a run by 10 %.
  bool pin = true;
  // What-if: the size (element cap, and the kernel's hash-table size hint)
  // given to the compiler's meter sets in every plan; 0 = as compiled.
  std::uint32_t meter_size = 0;
};

[[noreturn]] void usage(const char* argv0) {
  std::cerr << "usage: " << argv0
            << " [--prefix NAME] [--sizes 10,100,1000] [--holes N] [--reps N] [--batch N]\n"
               "       [--reconcile-runs N] [--iperf-seconds N] [--iperf-rounds N] [--no-iperf] [--no-pin]\n"
               "       [--meter-size N]   (what-if: meter sets of N elements instead of the compiler's)\n";
  std::exit(2);
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage(argv[0]);
      return argv[++i];
    };
    auto next_int = [&]() {
      std::string v = next();
      try {
        int n = std::stoi(v);
        if (n < 0) usage(argv[0]);
        return n;
      } catch (const std::exception&) {
        usage(argv[0]);
      }
    };
    if (a == "--prefix") {
      o.prefix = next();
    } else if (a == "--sizes") {
      o.sizes.clear();
      std::string v = next();
      std::size_t pos = 0;
      while (pos <= v.size()) {
        std::size_t comma = v.find(',', pos);
        if (comma == std::string::npos) comma = v.size();
        o.sizes.push_back(std::stoi(v.substr(pos, comma - pos)));
        pos = comma + 1;
      }
      std::sort(o.sizes.begin(), o.sizes.end());
    } else if (a == "--holes") {
      o.holes_per_vm = next_int();
    } else if (a == "--reps") {
      o.reps = std::max(1, next_int());
    } else if (a == "--batch") {
      o.batch_vms = std::max(1, next_int());
    } else if (a == "--reconcile-runs") {
      o.reconcile_runs = std::max(1, next_int());
    } else if (a == "--iperf-seconds") {
      o.iperf_seconds = std::max(1, next_int());
    } else if (a == "--iperf-rounds") {
      o.iperf_rounds = std::max(1, next_int());
    } else if (a == "--meter-size") {
      o.meter_size = static_cast<std::uint32_t>(next_int());
    } else if (a == "--no-iperf") {
      o.iperf = false;
    } else if (a == "--no-pin") {
      o.pin = false;
    } else {
      usage(argv[0]);
    }
  }
  if (o.sizes.empty() || o.sizes.front() < 1) usage(argv[0]);
  if (std::thread::hardware_concurrency() < 2) o.pin = false;
  return o;
}

// ---------------------------------------------------------------------------
// Statistics

struct Stats {
  double median_ms = 0, p99_ms = 0, min_ms = 0, max_ms = 0;
  std::size_t n = 0;
};

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  // Nearest rank: with 50 samples p99 is the largest one.
  auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size())));
  rank = std::clamp<std::size_t>(rank, 1, v.size());
  return v[rank - 1];
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// A 90 % interval for the median of `v` (percentile bootstrap, fixed seed so
// that the same figures give the same interval). With per-round ratios that
// move by +-10 % on a shared machine, it says whether a median a little
// above or below a target is told apart from it at all.
std::pair<double, double> median_interval(const std::vector<double>& v) {
  if (v.size() < 2) return {v.empty() ? 0 : v[0], v.empty() ? 0 : v[0]};
  std::mt19937 rng(20261126);
  std::uniform_int_distribution<std::size_t> pick(0, v.size() - 1);
  std::vector<double> medians;
  std::vector<double> sample(v.size());
  for (int k = 0; k < 4000; ++k) {
    for (double& x : sample) x = v[pick(rng)];
    medians.push_back(median(sample));
  }
  return {percentile(medians, 0.05), percentile(medians, 0.95)};
}

Stats stats_of(const std::vector<double>& ms) {
  Stats s;
  s.n = ms.size();
  if (ms.empty()) return s;
  s.median_ms = median(ms);
  s.p99_ms = percentile(ms, 0.99);
  s.min_ms = *std::min_element(ms.begin(), ms.end());
  s.max_ms = *std::max_element(ms.begin(), ms.end());
  return s;
}

nlohmann::json to_json(const Stats& s) {
  auto r3 = [](double x) { return std::round(x * 1000) / 1000; };
  return {{"median_ms", r3(s.median_ms)},
          {"p99_ms", r3(s.p99_ms)},
          {"min_ms", r3(s.min_ms)},
          {"max_ms", r3(s.max_ms)},
          {"n", s.n}};
}

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// ---------------------------------------------------------------------------
// Namespaces and processes

// Runs `fn` with the calling thread inside a named namespace, then returns
// to the original one (aborts rather than carry on in the wrong namespace).
template <class F>
auto in_netns(const std::string& name, F&& fn) {
  test::EnterNetns enter(name);
  if (!enter.ok()) throw std::runtime_error("cannot enter network namespace " + name);
  return fn();
}

using test::must;

// A background process (the iperf3 server) started by us, stopped by its PID.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::string& ns) {
    std::vector<std::string> full = {"nsenter", "--net=/run/netns/" + ns, "--"};
    full.insert(full.end(), argv.begin(), argv.end());
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the benchmark
      int devnull = ::open("/dev/null", O_RDWR);
      dup2(devnull, 0);
      dup2(devnull, 1);
      dup2(devnull, 2);
      std::vector<char*> args;
      args.reserve(full.size() + 1);
      for (auto& a : full) args.push_back(a.data());
      args.push_back(nullptr);
      execvp(args[0], args.data());
      _exit(127);
    }
    if (pid_ < 0) throw std::runtime_error("fork failed");
  }
  ~Child() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int st = 0;
      for (int i = 0; i < 50 && waitpid(pid_, &st, WNOHANG) == 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      if (waitpid(pid_, &st, WNOHANG) == 0) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &st, 0);
      }
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

 private:
  pid_t pid_ = -1;
};

// ---------------------------------------------------------------------------
// The workload

// Addresses: VMs and the throughput destination live in 198.18.0.0/15 (the
// benchmarking range, RFC 2544), clients and holes in the other documentation
// ranges; none of them is routed by the machine (its uplink is elsewhere),
// and everything stays inside the benchmark's namespaces anyway.
constexpr const char* kGateway4 = "198.19.255.1";
constexpr const char* kGateway6 = "2001:db8:4::1";
constexpr const char* kDestHost4 = "198.19.0.1";
constexpr const char* kDest4 = "198.19.0.2";

constexpr const char* kPolicy = R"(# nft_bench: every level exercised, lab addresses allowed.
[clients]
default = "trusted"

[levels.trusted]
daily_quota = "1000TiB"
per_destination = { kbit = 10000000, packets = 100000 }
syn_per_second = 1000
dns = { resolvers = ["gateway"] }

[levels.semi-trusted]
tcp = ["203.0.113.0/24:80,443", "198.51.100.7:1000-2000", "[2001:db8::/32]:443"]
udp = ["203.0.113.0/24:443"]
icmp = ["echo-request", "time-exceeded", "destination-unreachable"]
icmpv6 = ["echo-request", "packet-too-big", "time-exceeded", "destination-unreachable"]
tcp_syn_only_ports = [80, 443]
dns = { resolvers = ["gateway"], names = ["example.org"] }

[guardrails]
allow_reserved = ["198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]
block = ["203.0.113.66", "2001:db8:bad::/48"]
)";

IpAddress addr(const std::string& text) {
  auto a = IpAddress::parse(text);
  if (!a) throw std::runtime_error("bad address " + text);
  return *a;
}
Prefix prefix(const std::string& text) {
  auto p = Prefix::parse(text);
  if (!p) throw std::runtime_error("bad prefix " + text + ": " + p.error().describe());
  return *p;
}

std::string hex(unsigned v) {
  char buf[16];
  (void)std::snprintf(buf, sizeof buf, "%x", v);
  return buf;
}

// VM number i (1-based). Levels rotate trusted / semi-trusted / untrusted so
// all three chain shapes are present; VM 1 (the throughput VM) is trusted.
VmNet make_vm(int i) {
  VmNet vm;
  vm.id = i;
  vm.name = "sg" + std::to_string(i);
  const auto u = static_cast<unsigned>(i);
  vm.mac = format_mac({0x52, 0x54, 0x00, static_cast<std::uint8_t>((u >> 16U) & 0xffU),
                       static_cast<std::uint8_t>((u >> 8U) & 0xffU), static_cast<std::uint8_t>(u & 0xffU)});
  vm.v4 = addr("198.18." + std::to_string((u >> 8U) & 0xffU) + "." + std::to_string(u & 0xffU));
  vm.v6 = addr("2001:db8:5::" + hex(u >> 16U) + ":" + hex(u & 0xffffU));
  vm.gateway4 = addr(kGateway4);
  vm.gateway6 = addr(kGateway6);
  static constexpr trust::TrustLevel kLevels[] = {trust::TrustLevel::trusted, trust::TrustLevel::semi_trusted,
                                                  trust::TrustLevel::untrusted};
  vm.level = kLevels[(u - 1) % 3];
  vm.client = {prefix("203.0.113." + std::to_string(u % 250 + 1) + "/32"),
               prefix("2001:db8:c::" + hex(u >> 16U) + ":" + hex(u & 0xffffU) + "/128")};
  return vm;
}

// Hole j of VM i: four in five IPv4 (a node's /32, TCP, one port); one in
// ten an IPv6 /64 with UDP 443 (the /64 hash map); one in ten an IPv6 /64
// with a port range (the interval map). All expire in a day.
Hole make_hole(const VmNet& vm, int j, std::int64_t now) {
  Hole h;
  h.id = vm.id * 100000 + j;
  h.vm = vm.name;
  if (j % 5 != 4) {
    h.destination = prefix((j % 2 == 0 ? "198.51.100." : "203.0.113.") + std::to_string(j % 250 + 1) + "/32");
    h.protocol = 6;
    h.ports = {static_cast<std::uint16_t>(1000 + j), static_cast<std::uint16_t>(1000 + j)};
  } else {
    h.destination = prefix("2001:db8:a:" + hex(static_cast<unsigned>(j)) + "::/64");
    h.protocol = 17;
    h.ports = j % 10 == 4 ? trust::PortRange{443, 443} : trust::PortRange{443, 444};
  }
  h.expires = now + 86400;
  return h;
}

std::vector<Hole> holes_of(const VmNet& vm, int count, std::int64_t now) {
  std::vector<Hole> out;
  out.reserve(static_cast<std::size_t>(count));
  for (int j = 0; j < count; ++j) out.push_back(make_hole(vm, j, now));
  return out;
}

void apply_or_throw(NftBackend& nft, const Plan& plan, const std::string& what) {
  if (auto st = nft.apply(plan); !st) throw std::runtime_error(what + ": " + st.error().describe());
}

Plan delete_tables_plan(const std::string& table) {
  Plan p;
  for (auto fam : {netpolicy::TableFamily::inet, netpolicy::TableFamily::arp}) {
    // add first, so delete cannot fail on a missing table (same as plan_replace).
    for (auto kind : {netpolicy::Op::Kind::add_table, netpolicy::Op::Kind::delete_table}) {
      netpolicy::Op op;
      op.kind = kind;
      op.family = fam;
      op.table = table;
      p.ops.push_back(op);
    }
  }
  return p;
}

// The --meter-size what-if, applied to a plan the compiler made.
Plan with_meter_size(Plan plan, const Options& o) {
  if (o.meter_size == 0) return plan;
  for (auto& op : plan.ops) {
    if (op.kind == netpolicy::Op::Kind::add_set && op.set.dynamic) op.set.size = o.meter_size;
  }
  return plan;
}

// MemAvailable in MiB: kernel memory the rules take shows up here (the
// machine is shared, so differences are approximate).
double mem_available_mib() {
  auto text = test::read_file("/proc/meminfo");
  auto pos = text.find("MemAvailable:");
  if (pos == std::string::npos) return 0;
  return std::stod(text.substr(pos + 13)) / 1024;
}

struct ChangeResult {
  int vms = 0;
  double table_mib = 0;  // approximate kernel memory of the whole ruleset
  Stats add_vm, remove_vm, add_hole, remove_hole;
  Stats add_prefix_hole, remove_prefix_hole;  // an IPv6 /64, one port: the /64 hash map
  // A /64 with a port range: the interval map, which the kernel copies whole
  // on each change (its cost grows with the number of such holes).
  Stats add_range_hole, remove_range_hole;
};

// One change measured end to end: plan built by the compiler, then applied.
ChangeResult measure_changes(const Options& o, const Compiler& compiler, NftBackend& nft, const std::string& host_ns,
                             int vms_present, std::int64_t now) {
  const int reps = o.reps;
  ChangeResult r;
  r.vms = vms_present;
  // A new semi-trusted VM (the longest chains), without holes, as at allocation.
  VmNet extra = make_vm(90001);
  extra.level = trust::TrustLevel::semi_trusted;
  // A new hole for a VM in the middle of those present.
  const VmNet target = make_vm(std::max(1, vms_present / 2));
  Hole hole;
  hole.id = 999999;
  hole.vm = target.name;
  hole.destination = prefix("198.51.100.200/32");
  hole.protocol = 6;
  hole.ports = {8443, 8443};
  hole.expires = now + 3600;

  // A prefix hole of a common length (the /64 hash map), and one with a
  // port range (the interval map).
  Hole wide = hole;
  wide.id = 999998;
  wide.destination = prefix("2001:db8:ff::/64");
  wide.protocol = 17;
  wide.ports = {443, 443};
  Hole ranged = wide;
  ranged.id = 999997;
  ranged.ports = {443, 444};
  std::vector<double> add_vm, remove_vm, add_hole, remove_hole, add_wide, remove_wide, add_ranged, remove_ranged;
  // One change, timed from building its plan to the kernel's answer.
  auto timed = [&](std::vector<double>& into, const auto& make_plan, const char* what) {
    const auto t0 = Clock::now();
    apply_or_throw(nft, make_plan(), what);
    into.push_back(ms_since(t0));
  };
  for (int k = 0; k < reps; ++k) {
    check_interrupt();
    timed(
        add_vm, [&] { return with_meter_size(compiler.plan_add_vm(extra, {}, now), o); }, "adding a VM");
    timed(
        remove_vm, [&] { return compiler.plan_remove_vm(extra); }, "removing a VM");
    timed(
        add_hole, [&] { return compiler.plan_add_hole(target, hole, now); }, "adding a hole");
    if (k == 0) {
      // Once, outside the timing: the kernel really holds the new element.
      auto listed = must({"nft", "list", "map", "inet", compiler.options().table, "holes_v4"}, host_ns);
      if (listed.out.find("\"" + target.name + "\" . 198.51.100.200") == std::string::npos) {
        throw std::runtime_error("the added hole is not in the kernel's set");
      }
    }
    timed(
        remove_hole, [&] { return compiler.plan_remove_hole(target, hole, now); }, "removing a hole");
    timed(
        add_wide, [&] { return compiler.plan_add_hole(target, wide, now); }, "adding a prefix hole");
    timed(
        remove_wide, [&] { return compiler.plan_remove_hole(target, wide, now); }, "removing a prefix hole");
  }
  // Apart, so that the kernel's deferred work after an interval-map change
  // (it frees the map's old copy) is not counted in the changes above.
  for (int k = 0; k < reps; ++k) {
    check_interrupt();
    timed(
        add_ranged, [&] { return compiler.plan_add_hole(target, ranged, now); }, "adding a port-range hole");
    timed(
        remove_ranged, [&] { return compiler.plan_remove_hole(target, ranged, now); }, "removing a port-range hole");
  }
  r.add_prefix_hole = stats_of(add_wide);
  r.remove_prefix_hole = stats_of(remove_wide);
  r.add_range_hole = stats_of(add_ranged);
  r.remove_range_hole = stats_of(remove_ranged);
  r.add_vm = stats_of(add_vm);
  r.remove_vm = stats_of(remove_vm);
  r.add_hole = stats_of(add_hole);
  r.remove_hole = stats_of(remove_hole);
  return r;
}

// ---------------------------------------------------------------------------
// Throughput

struct Throughput {
  std::vector<double> with_gbps, without_gbps;
  // Reference point: conntrack alone (one rule accepting established flows),
  // to tell the cost of connection tracking from that of the VM's chain.
  std::vector<double> ct_only_gbps;
  std::uint64_t quota_used_bytes = 0;  // proof that the VM's chain saw the traffic
  std::string error;
};

// The command, on one CPU when pinning.
std::vector<std::string> on_cpu(bool pin, int cpu, std::vector<std::string> cmd) {
  if (!pin) return cmd;
  cmd.insert(cmd.begin(), {"taskset", "-c", std::to_string(cpu)});
  return cmd;
}

double iperf_gbps(const std::string& guest_ns, int seconds, bool pin) {
  auto r = must(on_cpu(pin, 0, {"iperf3", "-c", kDest4, "-t", std::to_string(seconds), "-J"}), guest_ns);
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  if (j.is_discarded() || !j.contains("end")) throw std::runtime_error("iperf3 printed no result: " + r.out);
  if (j.contains("error")) throw std::runtime_error("iperf3: " + j["error"].get<std::string>());
  return j["end"]["sum_received"]["bits_per_second"].get<double>() / 1e9;
}

std::uint64_t quota_used(const std::string& host_ns, const std::string& table, const std::string& vm) {
  auto r = must({"nft", "-j", "list", "quota", "inet", table, "vm_" + vm + "_quota"}, host_ns);
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  if (j.is_discarded()) return 0;
  for (const auto& item : j["nftables"]) {
    if (item.contains("quota")) return item["quota"].value("used", std::uint64_t{0});
  }
  return 0;
}

// guest ns --(veth "sg1" / eth0)--> host ns (the rules) --(d0 / eth0)--> dest ns
Throughput measure_throughput(const Options& o, const Compiler& compiler, NftBackend& nft, const Plan& full,
                              const std::string& host_ns) {
  Throughput t;
  const VmNet vm = make_vm(1);
  if (vm.level != trust::TrustLevel::trusted) throw std::logic_error("VM 1 must be trusted");
  test::Netns guest(o.prefix + "-guest");
  test::Netns dest(o.prefix + "-dest");
  const std::string gw = kGateway4;
  const std::string v4 = vm.v4->to_string();
  must({"ip", "link", "add", vm.name, "type", "veth", "peer", "name", "eth0", "netns", guest.name()}, host_ns);
  must({"ip", "addr", "add", gw + "/32", "dev", vm.name}, host_ns);
  must({"ip", "link", "set", vm.name, "up"}, host_ns);
  must({"ip", "route", "add", v4 + "/32", "dev", vm.name}, host_ns);
  must({"ip", "link", "set", "eth0", "address", vm.mac}, guest.name());
  must({"ip", "addr", "add", v4 + "/32", "dev", "eth0"}, guest.name());
  must({"ip", "link", "set", "eth0", "up"}, guest.name());
  must({"ip", "route", "add", gw, "dev", "eth0"}, guest.name());
  must({"ip", "route", "add", "default", "via", gw}, guest.name());
  must({"ip", "link", "add", "d0", "type", "veth", "peer", "name", "eth0", "netns", dest.name()}, host_ns);
  must({"ip", "addr", "add", std::string(kDestHost4) + "/24", "dev", "d0"}, host_ns);
  must({"ip", "link", "set", "d0", "up"}, host_ns);
  must({"ip", "addr", "add", std::string(kDest4) + "/24", "dev", "eth0"}, dest.name());
  must({"ip", "link", "set", "eth0", "up"}, dest.name());
  must({"ip", "route", "add", "default", "via", kDestHost4}, dest.name());
  must({"sysctl", "-qw", "net.ipv4.ip_forward=1"}, host_ns);

  Child server(on_cpu(o.pin, 1, {"iperf3", "-s", "-B", kDest4}), dest.name());
  // Wait for the server and check the path with the rules loaded.
  bool up = false;
  for (int i = 0; i < 50 && !up; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    test::RunOptions ro;
    ro.netns = guest.name();
    up = test::run({"iperf3", "-c", kDest4, "-t", "1", "-J"}, ro).code == 0;
  }
  if (!up) throw std::runtime_error("iperf3 through the VM's chain did not run (rules or topology wrong)");
  if (quota_used(host_ns, compiler.options().table, vm.name) == 0) {
    throw std::runtime_error("the VM's quota counted nothing: traffic did not go through the VM chains (vm_out)");
  }

  // Deleting the table frees its memory in kernel workers after the
  // transaction returns; let that finish so it does not run during (and
  // slow down) the "without rules" measurement.
  auto settle = [] {
    double last = mem_available_mib();
    for (int i = 0; i < 60; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      const double now_mib = mem_available_mib();
      const bool stable = std::abs(now_mib - last) < 16;
      last = now_mib;
      if (stable) break;
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
  };
  enum class Arm { with_rules, without_rules, ct_only };
  const std::string ct_table = "sgbench_ct";
  Arm state = Arm::with_rules;
  auto set_arm = [&](Arm want) {
    if (want == state) return;
    if (state == Arm::with_rules) apply_or_throw(nft, delete_tables_plan(compiler.options().table), "unloading");
    if (state == Arm::ct_only) must({"nft", "delete", "table", "inet", ct_table}, host_ns);
    if (want == Arm::with_rules) apply_or_throw(nft, full, "loading");
    if (want == Arm::ct_only) {
      test::RunOptions ro;
      ro.netns = host_ns;
      ro.stdin_data = "table inet " + ct_table +
                      " {\n chain forward {\n  type filter hook forward priority -10; policy accept;\n"
                      "  ct state established,related accept\n }\n}\n";
      if (auto r = test::run({"nft", "-f", "-"}, ro); r.code != 0) throw std::runtime_error("ct-only table: " + r.err);
    }
    state = want;
  };
  for (int round = 0; round < o.iperf_rounds; ++round) {
    // Rotate the order, so no arm always runs first or after the same one.
    std::vector<Arm> order = {Arm::with_rules, Arm::without_rules, Arm::ct_only};
    std::rotate(order.begin(), order.begin() + round % 3, order.end());
    if (round % 2 == 1) std::reverse(order.begin(), order.end());
    for (Arm arm : order) {
      check_interrupt();
      set_arm(arm);
      settle();
      const double g = iperf_gbps(guest.name(), o.iperf_seconds, o.pin);
      static const char* const kNames[] = {"with rules:    ", "without rules: ", "conntrack only:"};
      std::cerr << "  iperf3 " << kNames[static_cast<int>(arm)] << " " << g << " Gbit/s\n";
      if (arm == Arm::with_rules) {
        t.with_gbps.push_back(g);
        t.quota_used_bytes = std::max(t.quota_used_bytes, quota_used(host_ns, compiler.options().table, vm.name));
      } else {
        (arm == Arm::without_rules ? t.without_gbps : t.ct_only_gbps).push_back(g);
      }
    }
  }
  set_arm(Arm::with_rules);
  return t;
}

// ---------------------------------------------------------------------------

std::string pass(bool ok) { return ok ? "PASS" : "MISS"; }

std::string fmt(double v, int prec = 2) {
  char buf[64];
  (void)std::snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

std::string machine_description() {
  utsname u{};
  uname(&u);
  std::string cpu;
  auto r = test::run({"sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"});
  cpu = r.out;
  while (!cpu.empty() && (cpu.back() == '\n' || cpu.back() == ' ')) cpu.pop_back();
  while (!cpu.empty() && cpu.front() == ' ') cpu.erase(cpu.begin());
  return std::to_string(std::thread::hardware_concurrency()) + " cores" + (cpu.empty() ? "" : " (" + cpu + ")") +
         ", kernel " + u.release;
}

int run(const Options& o) {
  const std::int64_t now = std::time(nullptr);
  auto policy = trust::parse_policy(kPolicy, "nft_bench-policy.toml");
  if (!policy) throw std::runtime_error("benchmark policy: " + policy.error().describe());
  netpolicy::CompileOptions copt;
  const Compiler compiler(*policy, copt);

  utsname u{};
  uname(&u);
  nlohmann::json out;
  out["bench"] = "nft_bench";
  out["kernel"] = u.release;
  out["cores"] = std::thread::hardware_concurrency();
  out["holes_per_vm"] = o.holes_per_vm;
  out["reps"] = o.reps;
  out["meter_size_override"] = o.meter_size;
  std::cout << "nft_bench: " << machine_description() << "\n";
  if (o.meter_size != 0) std::cout << "WHAT-IF: meter sets sized " << o.meter_size << " (not the compiler's)\n";
  std::cout << "holes per VM: " << o.holes_per_vm << ", repetitions: " << o.reps << ", namespaces " << o.prefix
            << "-*\n\n";

  test::Netns host(o.prefix + "-host");
  auto backend = in_netns(host.name(), [] { return NftBackend::open(); });
  if (!backend) throw std::runtime_error("opening nftables socket: " + backend.error().describe());
  NftBackend& nft = *backend;

  // 1. One change at each size, building the ruleset up in batched plans.
  const double mem_before = mem_available_mib();
  apply_or_throw(nft, netpolicy::plan_replace(compiler.compile({}, {}, now)), "installing the base table");
  std::vector<ChangeResult> changes;
  int present = 0;
  double build_ms = 0;
  for (int size : o.sizes) {
    auto t0 = Clock::now();
    while (present < size) {
      check_interrupt();
      Plan batch;
      const int until = std::min(size, present + o.batch_vms);
      for (int i = present + 1; i <= until; ++i) {
        const VmNet vm = make_vm(i);
        batch.append(with_meter_size(compiler.plan_add_vm(vm, holes_of(vm, o.holes_per_vm, now), now), o));
      }
      apply_or_throw(nft, batch, "adding VMs " + std::to_string(present + 1) + "-" + std::to_string(until));
      present = until;
    }
    build_ms += ms_since(t0);
    std::cerr << "  " << size << " VMs present (setup " << fmt(ms_since(t0) / 1000, 1) << " s); measuring\n";
    changes.push_back(measure_changes(o, compiler, nft, host.name(), size, now));
    changes.back().table_mib = mem_before - mem_available_mib();
  }

  std::cout << "1. One change, compile + apply (ms), " << o.reps << " repetitions each\n";
  std::cout
      << "   VMs    holes   | add VM  med   p99 | remove VM med  p99 | add hole med  p99 | remove hole med  p99 | "
         "kernel MiB\n";
  for (const auto& c : changes) {
    char line[256];
    (void)std::snprintf(
        line, sizeof line, "   %-6d %-7d | %8.2f %7.2f | %9.2f %7.2f | %8.2f %7.2f | %10.2f %7.2f | %8.0f\n", c.vms,
        c.vms * o.holes_per_vm, c.add_vm.median_ms, c.add_vm.p99_ms, c.remove_vm.median_ms, c.remove_vm.p99_ms,
        c.add_hole.median_ms, c.add_hole.p99_ms, c.remove_hole.median_ms, c.remove_hole.p99_ms, c.table_mib);
    std::cout << line;
    out["changes"].push_back({{"vms", c.vms},
                              {"hole_elements", c.vms * o.holes_per_vm},
                              {"add_vm", to_json(c.add_vm)},
                              {"remove_vm", to_json(c.remove_vm)},
                              {"add_hole", to_json(c.add_hole)},
                              {"remove_hole", to_json(c.remove_hole)},
                              {"add_prefix_hole", to_json(c.add_prefix_hole)},
                              {"remove_prefix_hole", to_json(c.remove_prefix_hole)},
                              {"add_range_hole", to_json(c.add_range_hole)},
                              {"remove_range_hole", to_json(c.remove_range_hole)},
                              {"kernel_mib_approx", std::round(c.table_mib)}});
  }
  std::cout << "   prefix hole (IPv6 /64, one port: the /64 hash map): add / remove median ms:";
  for (const auto& c : changes) {
    std::cout << "  " << c.vms << " VMs " << fmt(c.add_prefix_hole.median_ms, 2) << " / "
              << fmt(c.remove_prefix_hole.median_ms, 2);
  }
  std::cout << "\n   port-range hole (interval map; " << o.holes_per_vm / 10
            << " such holes per VM present): add / remove median ms:";
  for (const auto& c : changes) {
    std::cout << "  " << c.vms << " VMs " << fmt(c.add_range_hole.median_ms, 2) << " / "
              << fmt(c.remove_range_hole.median_ms, 2);
  }
  std::cout << "\n";
  out["setup_ms"] = std::round(build_ms);
  std::cout << "   (setup of all sizes in batches of " << o.batch_vms << " VMs: " << fmt(build_ms / 1000, 1)
            << " s)\n\n";

  // 2. Reconcile the largest size from scratch, and over an existing table.
  const int big = o.sizes.back();
  std::vector<VmNet> vms;
  std::vector<Hole> holes;
  for (int i = 1; i <= big; ++i) {
    vms.push_back(make_vm(i));
    auto h = holes_of(vms.back(), o.holes_per_vm, now);
    holes.insert(holes.end(), h.begin(), h.end());
  }
  std::vector<double> compile_ms, scratch_ms, over_ms;
  Plan full;
  // Replacing a loaded table holds old and new at once: skip that part when
  // it could squeeze the (shared) machine's memory.
  const double table_mib = changes.back().table_mib;
  bool skipped_over = false;
  for (int run = 0; run < o.reconcile_runs; ++run) {
    check_interrupt();
    auto t0 = Clock::now();
    full = with_meter_size(netpolicy::plan_replace(compiler.compile(vms, holes, now)), o);
    compile_ms.push_back(ms_since(t0));
    apply_or_throw(nft, delete_tables_plan(copt.table), "deleting the tables");
    t0 = Clock::now();
    apply_or_throw(nft, full, "reconciling from scratch");
    scratch_ms.push_back(ms_since(t0));
    if (mem_available_mib() < 2 * table_mib + 2048) {
      skipped_over = true;
      continue;
    }
    t0 = Clock::now();
    apply_or_throw(nft, full, "reconciling over the existing table");
    over_ms.push_back(ms_since(t0));
  }
  const Stats compile_s = stats_of(compile_ms), scratch_s = stats_of(scratch_ms), over_s = stats_of(over_ms);
  const double reconcile_ms = compile_s.median_ms + scratch_s.median_ms;
  std::cout << "2. Reconcile " << big << " VMs / " << holes.size() << " holes in one transaction (" << full.ops.size()
            << " ops), median of " << o.reconcile_runs << "\n";
  std::cout << "   compile + plan_replace (pure):       " << fmt(compile_s.median_ms, 1) << " ms\n";
  std::cout << "   apply, empty namespace:              " << fmt(scratch_s.median_ms, 1) << " ms\n";
  std::cout << "   apply, replacing the loaded table:   "
            << (over_ms.empty()
                    ? std::string("skipped (not enough free memory for two tables)")
                    : fmt(over_s.median_ms, 1) + " ms" + (skipped_over ? " (some runs skipped: memory)" : ""))
            << "\n";
  std::cout << "   from scratch (compile + apply):      " << fmt(reconcile_ms, 1) << " ms\n\n";
  out["reconcile"] = {{"vms", big},
                      {"holes", holes.size()},
                      {"ops", full.ops.size()},
                      {"compile", to_json(compile_s)},
                      {"apply_scratch", to_json(scratch_s)},
                      {"apply_over_existing", to_json(over_s)},
                      {"from_scratch_ms", std::round(reconcile_ms * 10) / 10}};

  // 3. Throughput with the largest ruleset against none.
  std::optional<double> ratio;
  if (o.iperf) {
    Throughput t = measure_throughput(o, compiler, nft, full, host.name());
    const double with = median(t.with_gbps), without = median(t.without_gbps), ct_only = median(t.ct_only_gbps);
    // The target compares each round's pair (run minutes apart at most), so
    // the machine's load drifting between rounds cancels out.
    std::vector<double> pairs;
    for (std::size_t i = 0; i < std::min(t.with_gbps.size(), t.without_gbps.size()); ++i) {
      if (t.without_gbps[i] > 0) pairs.push_back(t.with_gbps[i] / t.without_gbps[i]);
    }
    const double ratio_of_medians = without > 0 ? with / without : 0;
    ratio = pairs.empty() ? ratio_of_medians : median(pairs);
    const auto [ratio_lo, ratio_hi] = median_interval(pairs);
    std::cout << "3. iperf3 -t " << o.iperf_seconds << ", guest -> host (rules) -> destination, " << o.iperf_rounds
              << " rounds, arms alternating" << (o.pin ? ", client on CPU 0, server on CPU 1" : "") << "\n";
    std::cout << "   with " << big << " VMs' rules: " << fmt(with) << " Gbit/s (median; runs:";
    for (double g : t.with_gbps) std::cout << " " << fmt(g);
    std::cout << ")\n   without rules:       " << fmt(without) << " Gbit/s (median; runs:";
    for (double g : t.without_gbps) std::cout << " " << fmt(g);
    std::cout << ")\n   conntrack only:      " << fmt(ct_only) << " Gbit/s (median; runs:";
    for (double g : t.ct_only_gbps) std::cout << " " << fmt(g);
    std::cout << ")\n   ratio:               " << fmt(*ratio * 100, 1)
              << " % (median of the rounds' ratios; of the medians " << fmt(ratio_of_medians * 100, 1) << " %)\n";
    if (pairs.size() >= 2) {
      std::cout << "   90 % interval of that median: " << fmt(ratio_lo * 100, 1) << "-" << fmt(ratio_hi * 100, 1)
                << " % (bootstrap over the " << pairs.size() << " rounds"
                << (ratio_lo < 0.9 && ratio_hi >= 0.9 ? "; it holds 90 %: more rounds would tell" : "") << ")\n";
    }
    std::cout << "   (VM quota counted " << t.quota_used_bytes / (1024 * 1024)
              << " MiB: the VM's chain saw the traffic)\n";
    std::cout << "   with rules / conntrack only: " << fmt(ct_only > 0 ? with / ct_only * 100 : 0, 1)
              << " %, conntrack only / without: " << fmt(without > 0 ? ct_only / without * 100 : 0, 1) << " %\n\n";
    out["throughput"] = {
        {"with_rules_gbps", t.with_gbps},
        {"without_rules_gbps", t.without_gbps},
        {"with_median_gbps", std::round(with * 100) / 100},
        {"without_median_gbps", std::round(without * 100) / 100},
        {"ct_only_gbps", t.ct_only_gbps},
        {"ct_only_median_gbps", std::round(ct_only * 100) / 100},
        {"ratio", std::round(*ratio * 1000) / 1000},
        {"ratio_of_medians", std::round(ratio_of_medians * 1000) / 1000},
        {"ratio_interval_90", {std::round(ratio_lo * 1000) / 1000, std::round(ratio_hi * 1000) / 1000}},
        {"seconds", o.iperf_seconds},
        {"pinned", o.pin}};
  }

  // Targets.
  std::cout << "Targets\n";
  nlohmann::json targets;
  const ChangeResult& small = changes.front();
  const ChangeResult& large = changes.back();
  auto target = [&](const std::string& key, const std::string& text, bool ok, const std::string& value) {
    std::cout << "   " << pass(ok) << "  " << text << ": " << value << "\n";
    targets[key] = {{"pass", ok}, {"value", value}};
  };
  const std::pair<const char*, const Stats ChangeResult::*> kinds[] = {{"add_vm", &ChangeResult::add_vm},
                                                                       {"remove_vm", &ChangeResult::remove_vm},
                                                                       {"add_hole", &ChangeResult::add_hole},
                                                                       {"remove_hole", &ChangeResult::remove_hole}};
  for (const auto& [name, member] : kinds) {
    const double v = (large.*member).median_ms;
    target(std::string(name) + "_under_5ms",
           std::string(name) + " at " + std::to_string(large.vms) + " VMs < 5 ms (median)", v < 5.0, fmt(v) + " ms");
  }
  for (const auto& [name, member] : kinds) {
    const double a = (large.*member).median_ms, b = (small.*member).median_ms;
    const double r = b > 0 ? a / b : 0;
    target(std::string(name) + "_ratio",
           std::string(name) + " " + std::to_string(large.vms) + "/" + std::to_string(small.vms) + " VMs < 1.5",
           r < 1.5, fmt(r));
  }
  target("reconcile_under_1s", "reconcile " + std::to_string(big) + " VMs from scratch < 1 s", reconcile_ms < 1000,
         fmt(reconcile_ms / 1000, 3) + " s");
  if (ratio)
    target("throughput_90pct", "throughput with rules >= 90% of without", *ratio >= 0.9, fmt(*ratio * 100, 1) + " %");
  out["targets"] = targets;
  std::cout << "\n" << out.dump() << std::endl;
  return 0;
}

}  // namespace
}  // namespace sg::bench

int main(int argc, char** argv) {
  const sg::bench::Options o = sg::bench::parse_args(argc, argv);
  if (geteuid() != 0) {
    std::cerr << "nft_bench: needs root (network namespaces); run bench/run-nft-bench\n";
    return 2;
  }
  return sg::bench::run_main("nft_bench", o.prefix, [&] { return sg::bench::run(o); });
}
