// flowlog_bench: the flow log benchmark of GitHub issue 6.
//
// Measures, against the real kernel inside private network namespaces (never
// the machine's own):
//   1. sustained new flows per second logged with no loss: a "host"
//      namespace marks new flows from a veth (named like a VM tap, sg7) with
//      `ct mark set 7`; this process reads the conntrack events through
//      ConntrackListener and records them in a FlowLog from one thread, as
//      the daemon's loop does (maybe_flush once per wall-clock second, like
//      the daemon's on_tick), while a generator thread sends short UDP flows
//      (one datagram each, every flow a distinct (source port, destination
//      port) pair) from the "guest" namespace at a fixed rate for a few
//      seconds. Flows generated are compared with the rows in the flows
//      table and the gap rows (ENOBUFS resyncs, backlog overflow), rate by
//      rate;
//   2. who_sent() latency over millions of complete flow rows written
//      through FlowLog::record_flow_end (1,000 VMs, 100,000 destinations, a
//      month of start times), and the insert rate;
//   3. the database size per million flows.
// Targets are printed as PASS / MISS; a miss never fails the program (these
// machines are noisy). The last line of output is one JSON object.
//
// Run it through bench/run-flowlog-bench (root, release build, cleanup of
// namespaces and temp files even on failure). Namespaces are "<prefix>-...".
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sqlite3.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "bench/bench_main.h"
#include "common/raii/fd.h"
#include "netpolicy/conntrack_listener.h"
#include "surrogated/flow_log.h"
#include "tests/integration/harness.h"

namespace sg::bench {
namespace {

using netpolicy::ConntrackListener;
using netpolicy::FlowEvent;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string prefix = "sgflb" + std::to_string(getpid());
  std::string dir;  // where the databases go (default: a new directory under /tmp)
  std::vector<int> rates = {5000, 10000, 20000, 30000, 40000, 60000, 80000};
  int seconds = 5;
  int sockets = 16384;            // generator source ports
  bool flush_every_read = false;  // what-if: maybe_flush after every read, not once a second
  bool live = true;
  bool db = true;
  std::int64_t rows = 10'000'000;
  std::int64_t min_rows = 2'000'000;
  int max_generate_seconds = 600;
  int queries = 1000;
  int vms = 1000;
  int destinations = 100'000;
};

[[noreturn]] void usage(const char* argv0) {
  std::cerr << "usage: " << argv0
            << " [--prefix NAME] [--dir DIR] [--rates 5000,10000,...] [--seconds N] [--sockets N]\n"
               "       [--flush-every-read] [--no-live] [--no-db] [--rows N] [--min-rows N]\n"
               "       [--max-generate-seconds N] [--queries N] [--vms N] [--destinations N]\n";
  std::exit(2);
}

std::vector<int> parse_list(const std::string& v) {
  std::vector<int> out;
  std::size_t pos = 0;
  while (pos <= v.size()) {
    std::size_t comma = v.find(',', pos);
    if (comma == std::string::npos) comma = v.size();
    out.push_back(std::stoi(v.substr(pos, comma - pos)));
    pos = comma + 1;
  }
  return out;
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage(argv[0]);
      return argv[++i];
    };
    auto next_int = [&]() -> std::int64_t {
      try {
        std::int64_t n = std::stoll(next());
        if (n < 0) usage(argv[0]);
        return n;
      } catch (const std::exception&) {
        usage(argv[0]);
      }
    };
    if (a == "--prefix") {
      o.prefix = next();
    } else if (a == "--dir") {
      o.dir = next();
    } else if (a == "--rates") {
      try {
        o.rates = parse_list(next());
      } catch (const std::exception&) {
        usage(argv[0]);
      }
      std::sort(o.rates.begin(), o.rates.end());
    } else if (a == "--seconds") {
      o.seconds = static_cast<int>(std::max<std::int64_t>(1, next_int()));
    } else if (a == "--sockets") {
      o.sockets = static_cast<int>(std::clamp<std::int64_t>(next_int(), 100, 30000));
    } else if (a == "--flush-every-read") {
      o.flush_every_read = true;
    } else if (a == "--no-live") {
      o.live = false;
    } else if (a == "--no-db") {
      o.db = false;
    } else if (a == "--rows") {
      o.rows = std::max<std::int64_t>(1000, next_int());
    } else if (a == "--min-rows") {
      o.min_rows = next_int();
    } else if (a == "--max-generate-seconds") {
      o.max_generate_seconds = static_cast<int>(next_int());
    } else if (a == "--queries") {
      o.queries = static_cast<int>(std::max<std::int64_t>(1, next_int()));
    } else if (a == "--vms") {
      o.vms = static_cast<int>(std::max<std::int64_t>(1, next_int()));
    } else if (a == "--destinations") {
      o.destinations = static_cast<int>(std::max<std::int64_t>(20, next_int()));
    } else {
      usage(argv[0]);
    }
  }
  if (o.rates.empty() || o.rates.front() < 1) usage(argv[0]);
  o.min_rows = std::min(o.min_rows, o.rows);
  return o;
}

// ---------------------------------------------------------------------------
// Helpers

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
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

double r3(double x) { return std::round(x * 1000) / 1000; }
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }
double s_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double thread_cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_THREAD, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

using test::EnterNetns;
using test::must;

// A SELECT of integers through the FlowLog's own connection (read only).
std::vector<std::int64_t> query_ints(sqlite3* db, const std::string& sql) {
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) != SQLITE_OK) {
    throw std::runtime_error("sqlite: " + std::string(sqlite3_errmsg(db)) + " in " + sql);
  }
  std::vector<std::int64_t> out;
  if (sqlite3_step(st) == SQLITE_ROW) {
    for (int i = 0; i < sqlite3_column_count(st); ++i) out.push_back(sqlite3_column_int64(st, i));
  }
  sqlite3_finalize(st);
  return out;
}

std::vector<std::string> query_plan(sqlite3* db, const std::string& sql) {
  sqlite3_stmt* st = nullptr;
  std::vector<std::string> out;
  if (sqlite3_prepare_v2(db, ("EXPLAIN QUERY PLAN " + sql).c_str(), -1, &st, nullptr) != SQLITE_OK) {
    out.push_back(std::string("(no plan: ") + sqlite3_errmsg(db) + ")");
    return out;
  }
  while (sqlite3_step(st) == SQLITE_ROW) {
    const auto* text = sqlite3_column_text(st, 3);
    out.emplace_back(text != nullptr ? reinterpret_cast<const char*>(text) : "");
  }
  sqlite3_finalize(st);
  return out;
}

std::int64_t file_size(const std::string& path) {
  std::error_code ec;
  auto n = std::filesystem::file_size(path, ec);
  return ec ? 0 : static_cast<std::int64_t>(n);
}

FlowContext vm_context(int vm) {
  static constexpr const char* kLevels[] = {"trusted", "semi-trusted", "untrusted"};
  FlowContext c;
  c.vm_name = "sg" + std::to_string(vm);
  const int client = vm % 300;
  char fp[80];
  (void)std::snprintf(fp, sizeof fp, "sha256:%016x%016x%016x%016x", client * 2654435761U, client * 40503U + 7,
                      client * 2246822519U, client + 0x5bd1e995U);
  c.client_fp = fp;
  c.trust_level = kLevels[vm % 3];
  if (vm % 3 == 1) c.authcert_id = "ac-" + std::to_string(100000 + client);
  c.client_contact = "client" + std::to_string(client) + "@example.com";
  c.path = "direct";
  return c;
}

// ---------------------------------------------------------------------------
// 1. Live: conntrack events -> FlowLog

constexpr const char* kHostAddr = "198.18.0.1";
constexpr const char* kGuestAddr = "198.18.0.2";
constexpr int kVmId = 7;
constexpr int kFirstSourcePort = 20000;
constexpr int kDportsPerStep = 250;  // destination ports reserved per rate step

// New flows from the guest's tap get ct mark 7 (as the daemon's rules do with
// the VM id); the named counter counts the flows the kernel created.
std::string rules(const std::string& table) {
  return "table inet " + table +
         " {\n"
         "  counter new_flows {}\n"
         "  chain in {\n"
         "    type filter hook input priority 0; policy accept;\n"
         "    iifname \"sg7\" ct state new counter name \"new_flows\" ct mark set 7\n"
         "  }\n"
         "}\n";
}

struct GenResult {
  std::int64_t sent = 0;
  std::int64_t failed = 0;
  double seconds = 0;
};

// Sends one datagram per flow at `rate` flows/s for `seconds`: flow k leaves
// source port socks[k % n] for destination port dport_base + k / n.
GenResult generate(const std::vector<int>& socks, int rate, int seconds, int dport_base) {
  GenResult g;
  sockaddr_in to{};
  to.sin_family = AF_INET;
  inet_pton(AF_INET, kHostAddr, &to.sin_addr);
  const char payload[32] = "flowlog_bench";
  const auto n = static_cast<std::int64_t>(socks.size());
  const std::int64_t total = static_cast<std::int64_t>(rate) * seconds;
  const auto t0 = Clock::now();
  std::int64_t k = 0;
  while (k < total && !g_interrupted) {
    const double el = s_since(t0);
    const auto due = std::min(total, static_cast<std::int64_t>(el * rate));
    if (k >= due) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      continue;
    }
    for (; k < due; ++k) {
      to.sin_port = htons(static_cast<std::uint16_t>(dport_base + k / n));
      const int fd = socks[static_cast<std::size_t>(k % n)];
      if (sendto(fd, payload, sizeof payload, 0, reinterpret_cast<const sockaddr*>(&to), sizeof to) < 0) {
        ++g.failed;
      } else {
        ++g.sent;
      }
    }
  }
  g.seconds = s_since(t0);
  return g;
}

struct StepResult {
  int rate = 0;
  GenResult gen;
  double achieved_rate = 0;
  std::int64_t kernel_new = 0;  // nft counter: flows conntrack created
  std::int64_t rows = 0;        // distinct flows with a row
  std::int64_t rows_closed = 0;
  std::int64_t rows_resync = 0;
  std::int64_t gaps = 0;       // gap rows written during the step
  std::int64_t gap_lost = 0;   // their known lost counts
  std::int64_t missing = 0;    // generated - rows
  std::uint64_t overruns = 0;  // ENOBUFS on the event socket
  std::int64_t events = 0;
  std::int64_t ct_id_collisions = 0;  // NEW events whose ct id another open flow had
  double drain_seconds = 0;
  double pipeline_cpu = 0;  // CPU seconds of the pipeline thread over the step
  double max_commit_ms = 0;
  std::size_t max_queued = 0;
  std::string verdict;
};

nlohmann::json to_json(const StepResult& s) {
  return {{"rate", s.rate},
          {"generated", s.gen.sent},
          {"send_failed", s.gen.failed},
          {"achieved_rate", std::round(s.achieved_rate)},
          {"kernel_new_flows", s.kernel_new},
          {"rows", s.rows},
          {"rows_closed", s.rows_closed},
          {"rows_resync", s.rows_resync},
          {"gap_rows", s.gaps},
          {"gap_lost", s.gap_lost},
          {"missing", s.missing},
          {"overruns", s.overruns},
          {"events", s.events},
          {"ct_id_collisions", s.ct_id_collisions},
          {"drain_s", r3(s.drain_seconds)},
          {"pipeline_cpu_s", r3(s.pipeline_cpu)},
          {"max_commit_ms", r3(s.max_commit_ms)},
          {"max_queued", s.max_queued},
          {"verdict", s.verdict}};
}

struct LiveResult {
  std::vector<StepResult> steps;
  int best_zero_loss = 0;
  int best_accounted = 0;  // every lost flow covered by a gap row
  std::vector<std::string> warnings;
};

std::int64_t nft_counter(const std::string& ns, const std::string& table) {
  auto r = must({"nft", "list", "counter", "inet", table, "new_flows"}, ns);
  auto p = r.out.find("packets ");
  return p == std::string::npos ? -1 : std::stoll(r.out.substr(p + 8));
}

LiveResult run_live(const Options& o, const std::string& dir) {
  LiveResult out;
  const std::string host_name = o.prefix + "-host";
  const std::string guest_name = o.prefix + "-guest";
  const std::string table = "sgflb";
  test::Netns host(host_name);
  test::Netns guest(guest_name);
  must({"ip", "-n", host_name, "link", "add", "sg7", "type", "veth", "peer", "name", "eth0", "netns", guest_name});
  must({"ip", "addr", "add", std::string(kHostAddr) + "/24", "dev", "sg7"}, host_name);
  must({"ip", "link", "set", "sg7", "up"}, host_name);
  must({"ip", "addr", "add", std::string(kGuestAddr) + "/24", "dev", "eth0"}, guest_name);
  must({"ip", "link", "set", "eth0", "up"}, guest_name);
  test::write_file(dir + "/rules.nft", rules(table));
  must({"nft", "-f", dir + "/rules.nft"}, host_name);
  // Short timeouts, so that each flow ends (and its DESTROY is logged) soon.
  must({"sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=1"}, host_name);
  must({"sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout_stream=1"}, host_name);
  // nf_conntrack_max cannot be raised outside the machine's own namespace on
  // this kernel; it is reported.
  const std::string ct_max = test::read_file("/proc/sys/net/netfilter/nf_conntrack_max");

  // The generator's sockets, created in the guest namespace (a socket keeps
  // the namespace it was created in).
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  const auto want = static_cast<rlim_t>(o.sockets) + 256;
  if (rl.rlim_cur < want) {
    rl.rlim_cur = std::min(want, rl.rlim_max);
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  const int nsocks = static_cast<int>(std::min<rlim_t>(o.sockets, rl.rlim_cur - 256));
  std::vector<Fd> sock_owners;
  std::vector<int> socks;
  {
    EnterNetns in_guest(guest_name);
    if (!in_guest.ok()) throw std::runtime_error("cannot enter network namespace " + guest_name);
    for (int i = 0; i < nsocks; ++i) {
      Fd s(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<std::uint16_t>(kFirstSourcePort + i));
      if (!s.valid() || bind(s.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) {
        throw std::runtime_error("cannot bind the generator's source port " + std::to_string(kFirstSourcePort + i));
      }
      socks.push_back(s.get());
      sock_owners.push_back(std::move(s));
    }
  }
  if (nsocks < o.sockets) out.warnings.push_back("only " + std::to_string(nsocks) + " source ports (RLIMIT_NOFILE)");

  // The pipeline runs in this thread, in the host namespace, as the daemon's does.
  EnterNetns in_host(host_name);
  if (!in_host.ok()) throw std::runtime_error("cannot enter network namespace " + host_name);
  ConntrackListener::Options co;  // the daemon's default: 16 MiB receive buffer
  co.receive_buffer_bytes = 16384 * 1024;
  auto listener = ConntrackListener::open(co);
  if (!listener) throw std::runtime_error("conntrack listener: " + listener.error().describe());
  for (const auto& w : listener->warnings()) out.warnings.push_back(w);
  FlowLog::Options fo;  // the daemon's defaults: 1,000 records or 1 s per commit
  auto log = FlowLog::open(dir + "/live.db", fo);
  if (!log) throw std::runtime_error("flow log: " + log.error().describe());
  sqlite3* db = log->handle();
  const FlowContext ctx = vm_context(kVmId);

  std::cout << "\n== 1. Sustained new flows/s (conntrack events -> FlowLog, one thread; " << o.seconds
            << " s per rate; " << nsocks << " source ports; UDP timeout 1 s; nf_conntrack_max "
            << ct_max.substr(0, ct_max.find('\n')) << "; maybe_flush "
            << (o.flush_every_read ? "after every read (what-if)" : "once per second, as the daemon's loop") << ")\n";
  std::printf("%8s %9s %9s %9s %9s %8s %6s %8s %6s %8s %9s %8s %8s  %s\n", "rate/s", "sent", "achieved", "kernel",
              "rows", "missing", "gaps", "overrun", "ctid=", "drain s", "cpu %", "commit", "queue", "verdict");

  int zero_loss_streak_broken = 0;
  std::unordered_set<std::uint32_t> open_ids;  // ct ids of flows open now (NEW seen, DESTROY not yet)
  std::int64_t last_gap_id = 0;
  for (std::size_t step = 0; step < o.rates.size(); ++step) {
    check_interrupt();
    StepResult s;
    s.rate = o.rates[step];
    const int dport_base = 1000 + static_cast<int>(step) * kDportsPerStep;
    if (static_cast<std::int64_t>(s.rate) * o.seconds / nsocks >= kDportsPerStep) {
      out.warnings.push_back("rate " + std::to_string(s.rate) + " skipped: too many flows for the source ports");
      break;
    }
    const int dport_last = dport_base + kDportsPerStep - 1;
    must({"nft", "reset", "counter", "inet", table, "new_flows"}, host_name);
    const std::uint64_t overruns0 = listener->overruns();
    const double cpu0 = thread_cpu_seconds();

    std::atomic<bool> gen_done{false};
    GenResult gen;
    std::thread gen_thread([&] {
      gen = generate(socks, s.rate, o.seconds, dport_base);
      gen_done = true;
    });

    std::int64_t ends = 0;
    std::int64_t last_tick = wall_ms() / 1000;
    auto handle_events = [&]() -> std::size_t {
      auto evs = listener->read_events();
      for (const auto& ev : evs) {
        ++s.events;
        switch (ev.kind) {
          case FlowEvent::Kind::start:
            // Diagnostic: a NEW whose ct id is already open (FlowLog keys open rows by ct id and VM).
            if (!open_ids.insert(ev.ct_id).second) ++s.ct_id_collisions;
            log->record_flow_start(ev, ctx);
            break;
          case FlowEvent::Kind::end:
            open_ids.erase(ev.ct_id);
            log->record_flow_end(ev, ctx);
            if (ev.dport >= dport_base && ev.dport <= dport_last) ++ends;
            break;
          case FlowEvent::Kind::gap: {
            auto open_flows = listener->dump_table();
            if (!open_flows) {
              log->record_gap("conntrack", ev.detail + "; resync failed: " + open_flows.error().message, 0, wall_ms());
              break;
            }
            std::vector<std::pair<FlowEvent, FlowContext>> with_ctx;
            for (const auto& f : *open_flows) with_ctx.emplace_back(f, ctx);
            log->record_resync(ev.detail, with_ctx, wall_ms());
            break;
          }
          case FlowEvent::Kind::open: break;
        }
      }
      s.max_queued = std::max(s.max_queued, log->stats().queued);
      const std::int64_t now = wall_ms();
      if (o.flush_every_read || now / 1000 != last_tick) {
        last_tick = now / 1000;
        const auto t0 = Clock::now();
        if (auto st = log->maybe_flush(now); !st) out.warnings.push_back("commit failed: " + st.error().describe());
        s.max_commit_ms = std::max(s.max_commit_ms, ms_since(t0));
      }
      return evs.size();
    };

    std::optional<Clock::time_point> drain_start;
    auto last_event = Clock::now();
    for (;;) {
      pollfd p{listener->fd(), POLLIN, 0};
      poll(&p, 1, 100);
      if (handle_events() > 0) last_event = Clock::now();
      if (!gen_done) continue;
      if (!drain_start) {
        gen_thread.join();
        drain_start = Clock::now();
      }
      // Done when every flow's DESTROY arrived (conntrack's garbage collector
      // finds expired flows late), or nothing came for 15 s, or after 120 s.
      if (ends >= gen.sent || s_since(last_event) > 15.0 || s_since(*drain_start) > 120.0 || g_interrupted) break;
    }
    s.drain_seconds = s_since(*drain_start);
    if (auto st = log->flush(); !st) out.warnings.push_back("flush failed: " + st.error().describe());
    s.pipeline_cpu = thread_cpu_seconds() - cpu0;
    s.gen = gen;
    s.achieved_rate = gen.seconds > 0 ? static_cast<double>(gen.sent) / gen.seconds : 0;
    s.kernel_new = nft_counter(host_name, table);
    s.overruns = listener->overruns() - overruns0;
    const std::string range = " BETWEEN " + std::to_string(dport_base) + " AND " + std::to_string(dport_last);
    auto counts = query_ints(db,
                             "SELECT COUNT(DISTINCT sport * 65536 + dport), "
                             "COUNT(DISTINCT CASE WHEN end_ms IS NOT NULL THEN sport * 65536 + dport END), "
                             "COUNT(DISTINCT CASE WHEN origin = 'resync' THEN sport * 65536 + dport END) "
                             "FROM flows WHERE vm_id = 7 AND proto = 17 AND dport" +
                                 range);
    s.rows = counts.at(0);
    s.rows_closed = counts.at(1);
    s.rows_resync = counts.at(2);
    auto gaps = query_ints(db, "SELECT COUNT(*), COALESCE(SUM(lost), 0), COALESCE(MAX(id), 0) FROM gaps WHERE id > " +
                                   std::to_string(last_gap_id));
    s.gaps = gaps.at(0);
    s.gap_lost = gaps.at(1);
    if (gaps.at(2) > 0) last_gap_id = gaps.at(2);
    s.missing = s.gen.sent - s.rows;
    if (s.missing == 0 && s.gaps == 0) {
      s.verdict = "zero loss";
    } else if (s.missing <= 0 || s.gaps > 0) {
      s.verdict = s.missing > 0 ? "loss, recorded as gap" : "all rows, but gap rows";
    } else {
      s.verdict = "UNACCOUNTED LOSS";
    }
    const bool rate_reached = s.achieved_rate >= 0.9 * s.rate && s.gen.failed == 0;
    if (!rate_reached) s.verdict += " (generator short of the rate)";
    std::printf("%8d %9lld %9.0f %9lld %9lld %8lld %6lld %8llu %6lld %8.1f %8.0f%% %6.0fms %8zu  %s\n", s.rate,
                static_cast<long long>(s.gen.sent), s.achieved_rate, static_cast<long long>(s.kernel_new),
                static_cast<long long>(s.rows), static_cast<long long>(s.missing), static_cast<long long>(s.gaps),
                static_cast<unsigned long long>(s.overruns), static_cast<long long>(s.ct_id_collisions),
                s.drain_seconds, 100.0 * s.pipeline_cpu / (s.gen.seconds + s.drain_seconds), s.max_commit_ms,
                s.max_queued, s.verdict.c_str());
    (void)std::fflush(stdout);
    const bool zero = s.missing == 0 && s.gaps == 0 && rate_reached;
    const bool accounted = (s.missing <= 0 || s.gaps > 0) && rate_reached;
    if (zero && zero_loss_streak_broken == 0) out.best_zero_loss = s.rate;
    if (accounted) out.best_accounted = std::max(out.best_accounted, s.rate);
    out.steps.push_back(s);
    if (!zero) ++zero_loss_streak_broken;
    // Two rates with loss (or a generator that cannot keep up) end the ramp.
    if (zero_loss_streak_broken >= 2 || !rate_reached) break;
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  return out;
}

// ---------------------------------------------------------------------------
// 2. who_sent over millions of rows

struct DbResult {
  std::int64_t rows = 0;
  bool capped = false;
  double generate_seconds = 0;
  double insert_rate = 0;
  std::int64_t commits = 0;
  std::vector<std::pair<std::int64_t, double>> progress;  // rows, rows/s of the last chunk
  double median_ms = 0, p99_ms = 0, max_ms = 0;
  double mean_results = 0;
  int empty_results = 0;
  double hot_median_ms = 0, hot_p99_ms = 0, hot_rows_per_dst = 0;
  double p24_median_ms = 0, p24_p99_ms = 0;
  std::int64_t db_bytes = 0, wal_bytes = 0;
  double bytes_per_million = 0;
  std::vector<std::string> plan;
};

IpAddress destination(int i, std::mt19937_64& rng) {
  IpAddress a;
  if (i % 10 == 9) {  // a tenth IPv6
    a.family = Family::v6;
    const std::uint64_t hi = 0x2a00000000000000ULL | (rng() & 0x00ffffffffffffffULL);
    const std::uint64_t lo = rng();
    for (int b = 0; b < 8; ++b) {
      a.bytes[b] = static_cast<std::uint8_t>(hi >> (56 - 8 * b));
      a.bytes[8 + b] = static_cast<std::uint8_t>(lo >> (56 - 8 * b));
    }
    return a;
  }
  a.family = Family::v4;
  const auto v = static_cast<std::uint32_t>(rng());
  std::uint8_t first = static_cast<std::uint8_t>(1 + (v >> 24U) % 223);
  if (first == 10 || first == 127 || first == 100) first = 23;
  a.bytes[0] = first;
  a.bytes[1] = static_cast<std::uint8_t>(v >> 16U);
  a.bytes[2] = static_cast<std::uint8_t>(v >> 8U);
  a.bytes[3] = static_cast<std::uint8_t>(v);
  return a;
}

Prefix host_prefix(const IpAddress& a) {
  Prefix p;
  p.address = a;
  p.length = a.bit_length();
  return p;
}

DbResult run_db(const Options& o, const std::string& dir) {
  DbResult r;
  const std::string path = dir + "/who_sent.db";
  std::mt19937_64 rng(20260611);
  constexpr int kHot = 10;  // destinations that get 5% of all flows (resolvers, update servers)
  constexpr double kHotShare = 0.05;
  std::vector<IpAddress> dests;
  dests.reserve(static_cast<std::size_t>(o.destinations));
  for (int i = 0; i < o.destinations; ++i) dests.push_back(destination(i, rng));
  std::vector<std::int64_t> last_start(dests.size(), -1);
  std::vector<FlowContext> ctxs;
  for (int v = 1; v <= o.vms; ++v) ctxs.push_back(vm_context(v));

  const std::int64_t month_ms = 30LL * 24 * 3600 * 1000;
  const std::int64_t end_ms = wall_ms();
  const std::int64_t base_ms = end_ms - month_ms;

  std::cout << "\n== 2. who_sent over up to " << o.rows << " flow rows (" << o.vms << " VMs, " << o.destinations
            << " destinations, 5% of flows to " << kHot << " hot ones; a month of start times; record_flow_end, "
            << "a commit per second as the daemon's loop, at most 50,000 records)\n";
  {
    FlowLog::Options fo;  // daemon defaults
    auto log = FlowLog::open(path, fo);
    if (!log) throw std::runtime_error("flow log: " + log.error().describe());
    std::uniform_real_distribution<double> u01(0, 1);
    const auto t0 = Clock::now();
    auto chunk_t0 = t0;
    const std::int64_t chunk = std::max<std::int64_t>(o.rows / 20, 1000);
    FlowEvent ev;
    ev.kind = FlowEvent::Kind::end;
    constexpr std::size_t kMaxBatch = 50'000;
    std::int64_t last_tick = wall_ms() / 1000;
    std::int64_t commits = 0;
    std::int64_t i = 0;
    for (; i < o.rows; ++i) {
      if ((i & 0xfff) == 0) {
        check_interrupt();
        if (i >= o.min_rows && s_since(t0) > o.max_generate_seconds) {
          r.capped = true;
          break;
        }
      }
      const int vm = static_cast<int>(rng() % static_cast<std::uint64_t>(o.vms)) + 1;
      const bool hot = u01(rng) < kHotShare;
      const auto d = static_cast<std::size_t>(hot ? rng() % kHot : rng() % dests.size());
      // Chronological, as the daemon writes them; durations mostly short.
      const std::int64_t start = base_ms + i * month_ms / o.rows + static_cast<std::int64_t>(rng() % 1000);
      const double kind = u01(rng);
      std::int64_t dur = 0;
      if (kind < 0.8) {
        dur = static_cast<std::int64_t>(u01(rng) * 10'000);
      } else if (kind < 0.98) {
        dur = 10'000 + static_cast<std::int64_t>(u01(rng) * 290'000);
      } else {
        dur = 300'000 + static_cast<std::int64_t>(u01(rng) * 7'200'000);
      }
      ev.ct_id = static_cast<std::uint32_t>(rng());
      ev.mark = static_cast<std::uint32_t>(vm);
      ev.vm_id = vm;
      ev.dst = dests[d];
      ev.family = ev.dst.family;
      ev.src = IpAddress{};
      ev.src.family = ev.family;
      if (ev.family == Family::v4) {
        ev.src.bytes = {198, 18, static_cast<std::uint8_t>(vm >> 8), static_cast<std::uint8_t>(vm)};
      } else {
        ev.src.bytes = {0x20,
                        0x01,
                        0x0d,
                        0xb8,
                        0,
                        5,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        static_cast<std::uint8_t>(vm >> 8),
                        static_cast<std::uint8_t>(vm)};
      }
      const double pk = u01(rng);
      ev.proto = pk < 0.70 ? 6 : pk < 0.95 ? 17 : (ev.family == Family::v4 ? 1 : 58);
      ev.has_ports = ev.proto == 6 || ev.proto == 17;
      ev.has_icmp = !ev.has_ports;
      if (ev.has_ports) {
        static constexpr std::uint16_t kPorts[] = {443, 443, 443, 80, 53, 22, 123, 8080};
        ev.sport = static_cast<std::uint16_t>(32768 + rng() % 28000);
        ev.dport = u01(rng) < 0.9 ? kPorts[rng() % 8] : static_cast<std::uint16_t>(1 + rng() % 65535);
        ev.icmp_type = 0;
      } else {
        ev.sport = ev.dport = 0;
        ev.icmp_type = ev.proto == 1 ? 8 : 128;
      }
      ev.orig_packets = 1 + rng() % 50;
      ev.orig_bytes = ev.orig_packets * (60 + rng() % 1400);
      ev.reply_packets = rng() % 50;
      ev.reply_bytes = ev.reply_packets * (60 + rng() % 1400);
      ev.start_ns = start * 1'000'000;
      ev.stop_ns = (start + dur) * 1'000'000;
      ev.observed_ns = ev.stop_ns;
      log->record_flow_end(ev, ctxs[static_cast<std::size_t>(vm - 1)]);
      if (!hot) last_start[d] = start;
      // As the daemon's loop: maybe_flush once per wall-clock second (so a
      // commit holds a second of records), and before the queue nears
      // max_backlog (100,000), beyond which FlowLog would drop records.
      if ((i & 0xff) == 0 || log->stats().queued >= kMaxBatch) {
        const std::int64_t now = wall_ms();
        if (now / 1000 != last_tick || log->stats().queued >= kMaxBatch) {
          last_tick = now / 1000;
          ++commits;
          if (auto st = log->flush(); !st) throw std::runtime_error(st.error().describe());
        }
      }
      if ((i + 1) % chunk == 0) {
        const double rate = static_cast<double>(chunk) / s_since(chunk_t0);
        r.progress.emplace_back(i + 1, rate);
        std::cerr << "  " << (i + 1) << " rows, " << std::lround(rate) << " rows/s (" << std::lround(s_since(t0))
                  << " s)\n";
        chunk_t0 = Clock::now();
      }
    }
    if (auto st = log->flush(); !st) throw std::runtime_error(st.error().describe());
    r.generate_seconds = s_since(t0);
    r.rows = i;
    r.insert_rate = static_cast<double>(r.rows) / r.generate_seconds;
    r.commits = commits;
    sqlite3_wal_checkpoint_v2(log->handle(), nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr);
    r.db_bytes = file_size(path);
    r.wal_bytes = file_size(path + "-wal");
    r.bytes_per_million = static_cast<double>(r.db_bytes + r.wal_bytes) / static_cast<double>(r.rows) * 1e6;
  }
  r.hot_rows_per_dst = static_cast<double>(r.rows) * kHotShare / kHot;

  // Queries through a fresh connection (SQLite's cache cold, the kernel's
  // page cache as the writes left it).
  auto log = FlowLog::open(path);
  if (!log) throw std::runtime_error("flow log: " + log.error().describe());
  r.plan = query_plan(log->handle(),
                      "SELECT id FROM flows WHERE family = 1 AND dst BETWEEN x'00' AND x'ff' AND start_ms <= 5 AND "
                      "(end_ms IS NULL OR end_ms >= 1) ORDER BY start_ms, id LIMIT 1000");
  std::uniform_int_distribution<std::int64_t> jitter(-120'000, 120'000);
  auto timed = [&](const Prefix& p, std::int64_t at, std::vector<double>& lat) -> std::size_t {
    const auto t0 = Clock::now();
    auto rows = log->who_sent(p, at - 300'000, at + 300'000);
    lat.push_back(ms_since(t0));
    if (!rows) throw std::runtime_error("who_sent: " + rows.error().describe());
    return rows->size();
  };
  std::vector<double> lat;
  std::size_t total_results = 0;
  for (int q = 0; q < o.queries; ++q) {
    std::size_t d = 0;
    do {
      d = kHot + rng() % (dests.size() - kHot);
    } while (last_start[d] < 0);
    const std::size_t n = timed(host_prefix(dests[d]), last_start[d] + jitter(rng), lat);
    total_results += n;
    if (n == 0) ++r.empty_results;
  }
  r.median_ms = median(lat);
  r.p99_ms = percentile(lat, 0.99);
  r.max_ms = *std::max_element(lat.begin(), lat.end());
  r.mean_results = static_cast<double>(total_results) / o.queries;
  std::vector<double> hot_lat;
  std::uniform_int_distribution<std::int64_t> when(base_ms, end_ms);
  for (int q = 0; q < 50; ++q) timed(host_prefix(dests[rng() % kHot]), when(rng), hot_lat);
  r.hot_median_ms = median(hot_lat);
  r.hot_p99_ms = percentile(hot_lat, 0.99);
  std::vector<double> p24_lat;
  for (int q = 0; q < 100; ++q) {
    std::size_t d = 0;
    do {
      d = kHot + rng() % (dests.size() - kHot);
    } while (last_start[d] < 0);
    Prefix p = host_prefix(dests[d]);
    p.length = p.address.family == Family::v4 ? 24 : 48;
    for (int b = p.length / 8; b < 16; ++b) p.address.bytes[static_cast<std::size_t>(b)] = 0;
    timed(p, last_start[d] + jitter(rng), p24_lat);
  }
  r.p24_median_ms = median(p24_lat);
  r.p24_p99_ms = percentile(p24_lat, 0.99);
  return r;
}

// ---------------------------------------------------------------------------

int run(const Options& o) {
  utsname u{};
  uname(&u);
  std::cout << "flowlog_bench: " << std::thread::hardware_concurrency() << " cores, kernel " << u.release << ", "
            << "SQLite " << sqlite3_libversion() << "\n";
  bool own_dir = false;
  std::string dir = o.dir;
  if (dir.empty()) {
    char tmpl[] = "/tmp/sgflb-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) throw std::runtime_error("cannot create a temp directory");
    dir = tmpl;
    own_dir = true;
  }
  struct Cleanup {
    std::string dir;
    bool own;
    ~Cleanup() {
      if (own) {
        test::remove_tree(dir);
      } else {
        for (const char* f : {"rules.nft", "live.db", "live.db-wal", "live.db-shm", "who_sent.db", "who_sent.db-wal",
                              "who_sent.db-shm"}) {
          std::filesystem::remove(dir + "/" + f);
        }
      }
    }
  } cleanup{dir, own_dir};

  nlohmann::json j;
  j["bench"] = "flowlog";
  j["cores"] = std::thread::hardware_concurrency();
  j["kernel"] = u.release;
  j["sqlite"] = sqlite3_libversion();
  std::optional<LiveResult> live;
  std::optional<DbResult> dbr;
  if (o.live) {
    live = run_live(o, dir);
    nlohmann::json steps = nlohmann::json::array();
    for (const auto& s : live->steps) steps.push_back(to_json(s));
    j["live"] = {{"steps", steps},
                 {"flush", o.flush_every_read ? "every read" : "once per second"},
                 {"best_zero_loss_rate", live->best_zero_loss},
                 {"best_accounted_rate", live->best_accounted},
                 {"warnings", live->warnings}};
    for (const auto& w : live->warnings) std::cout << "  warning: " << w << "\n";
  }
  if (o.db) {
    dbr = run_db(o, dir);
    const auto& r = *dbr;
    std::printf("  rows written          %lld%s in %.0f s: %.0f rows/s (%lld commits)\n",
                static_cast<long long>(r.rows), r.capped ? " (capped by --max-generate-seconds)" : "",
                r.generate_seconds, r.insert_rate, static_cast<long long>(r.commits));
    std::printf("  insert rate by chunk  ");
    for (const auto& [n, rate] : r.progress) std::printf("%lldk:%.0f ", static_cast<long long>(n / 1000), rate);
    std::printf("\n  query plan            ");
    for (const auto& p : r.plan) std::printf("%s; ", p.c_str());
    std::printf(
        "\n  who_sent /32 +-5 min  median %.3f ms, p99 %.3f ms, max %.3f ms (%d queries, %.1f rows each, %d "
        "empty)\n",
        r.median_ms, r.p99_ms, r.max_ms, o.queries, r.mean_results, r.empty_results);
    std::printf("  who_sent hot /32      median %.3f ms, p99 %.3f ms (50 queries; %.0f rows per hot destination)\n",
                r.hot_median_ms, r.hot_p99_ms, r.hot_rows_per_dst);
    std::printf("  who_sent /24 (/48)    median %.3f ms, p99 %.3f ms (100 queries)\n", r.p24_median_ms, r.p24_p99_ms);
    std::cout << "\n== 3. Database size\n";
    std::printf("  %lld bytes (+ %lld WAL after checkpoint) for %lld rows: %.1f MB per million flows\n",
                static_cast<long long>(r.db_bytes), static_cast<long long>(r.wal_bytes), static_cast<long long>(r.rows),
                r.bytes_per_million / 1e6);
    j["who_sent"] = {{"rows", r.rows},
                     {"capped", r.capped},
                     {"generate_s", r3(r.generate_seconds)},
                     {"insert_rows_per_s", std::round(r.insert_rate)},
                     {"commits", r.commits},
                     {"median_ms", r3(r.median_ms)},
                     {"p99_ms", r3(r.p99_ms)},
                     {"max_ms", r3(r.max_ms)},
                     {"mean_results", r3(r.mean_results)},
                     {"empty_results", r.empty_results},
                     {"hot_median_ms", r3(r.hot_median_ms)},
                     {"hot_p99_ms", r3(r.hot_p99_ms)},
                     {"hot_rows_per_destination", std::round(r.hot_rows_per_dst)},
                     {"prefix24_median_ms", r3(r.p24_median_ms)},
                     {"prefix24_p99_ms", r3(r.p24_p99_ms)},
                     {"plan", r.plan}};
    j["size"] = {{"db_bytes", r.db_bytes},
                 {"wal_bytes", r.wal_bytes},
                 {"bytes_per_million_flows", std::round(r.bytes_per_million)}};
  }

  std::cout << "\n== Targets\n";
  nlohmann::json targets = nlohmann::json::object();
  if (live) {
    const bool pass = live->best_zero_loss >= 20000;
    std::printf("  %-4s sustained new flows/s with zero loss: %d (target >= 20000)\n", pass ? "PASS" : "MISS",
                live->best_zero_loss);
    targets["flows_per_second"] = pass ? "PASS" : "MISS";
  }
  if (dbr) {
    const bool pass = dbr->median_ms < 5.0;
    std::printf("  %-4s who_sent median at %lld rows: %.3f ms (target < 5 ms at 10,000,000 rows)%s\n",
                pass ? "PASS" : "MISS", static_cast<long long>(dbr->rows), dbr->median_ms,
                dbr->rows < 10'000'000 ? " [fewer rows than the target's]" : "");
    targets["who_sent_median"] = pass ? "PASS" : "MISS";
  }
  j["targets"] = targets;
  std::cout << j.dump() << "\n";
  return 0;
}

}  // namespace
}  // namespace sg::bench

int main(int argc, char** argv) {
  const sg::bench::Options o = sg::bench::parse_args(argc, argv);
  if (geteuid() != 0 && o.live) {
    std::cerr << "flowlog_bench: needs root (network namespaces); run bench/run-flowlog-bench\n";
    return 2;
  }
  return sg::bench::run_main("flowlog_bench", o.prefix, [&] { return sg::bench::run(o); });
}
