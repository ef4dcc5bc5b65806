// shaping_bench: the traffic-shaping benchmark (GitHub issue 7). A program,
// not a test. Needs root; runs in a network namespace of its own (unshare),
// plus one named peer namespace for the iperf3 server, removed at exit.
//
// 1. Time to add one VM's four HTB classes through libnl-route with 10, 100
//    and 1,000 VMs' classes already on the device.
// 2. Accuracy of the achieved rate for caps of 1, 10 and 100 Mbit/s: iperf3
//    through an HTB tree made by TcBackend, the class picked by
//    `meta priority set` from nftables, as the daemon does it.
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/main_guard.h"
#include "netpolicy/tc_backend.h"
#include "netpolicy/tc_plan.h"

namespace {

using namespace sg::netpolicy;

int sh(const std::string& cmd) { return std::system(cmd.c_str()); }

std::string capture(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  while (std::size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  pclose(p);
  return out;
}

// The peer namespace and its iperf3 server, removed on every exit path.
struct Peer {
  std::string ns = "sgshbench" + std::to_string(getpid());
  std::string pidfile = "/tmp/" + ns + ".pid";
  ~Peer() {
    std::ifstream in(pidfile);
    long pid = 0;
    if (in >> pid && pid > 0) kill(static_cast<pid_t>(pid), SIGTERM);
    (void)std::remove(pidfile.c_str());
    sh("ip netns del " + ns + " 2>/dev/null");
  }
};

VmShaping vm(std::int64_t id, std::uint64_t cap) { return VmShaping{id, "sg" + std::to_string(id), cap, {}, {}}; }

int bench_add_time(TcBackend& tc) {
  std::cout
      << "## time to add one VM's classes (4 classes, libnl-route)\n\n| VMs present | median | p90 |\n|---|---|---|\n";
  sh("ip link add sgb0 type veth peer name sgb1 && ip link set sgb0 up && ip link set sgb1 up");
  std::int64_t next = 1;
  for (int present : {10, 100, 1000}) {
    if (auto st = tc.remove_qdisc("sgb0", kTcMajorDefault); !st) return 1;
    if (auto st = tc.ensure_qdisc("sgb0", kTcMajorDefault, tc_root_class(kTcMajorDefault, std::nullopt)); !st) {
      std::cerr << st.error().describe() << "\n";
      return 1;
    }
    for (next = 1; next <= present; ++next) {
      for (const auto& c : tc_vm_classes(kTcMajorDefault, vm(next, 10'000'000), std::nullopt)) {
        if (auto st = tc.put_class("sgb0", c); !st) return 1;
      }
    }
    std::vector<double> ms;
    for (int rep = 0; rep < 30; ++rep, ++next) {
      auto t0 = std::chrono::steady_clock::now();
      for (const auto& c : tc_vm_classes(kTcMajorDefault, vm(next, 10'000'000), std::nullopt)) {
        if (auto st = tc.put_class("sgb0", c); !st) return 1;
      }
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    std::printf("| %d | %.3f ms | %.3f ms |\n", present, ms[ms.size() / 2], ms[ms.size() * 9 / 10]);
    (void)std::fflush(stdout);
  }
  sh("ip link del sgb0");
  return 0;
}

int bench_accuracy(TcBackend& tc, const Peer& peer) {
  if (sh("ip netns add " + peer.ns) != 0) return 1;
  sh("ip link add sga0 type veth peer name eth0 netns " + peer.ns);
  sh("ip addr add 192.0.2.1/30 dev sga0 && ip link set sga0 up");
  sh("ip -n " + peer.ns + " addr add 192.0.2.2/30 dev eth0 && ip -n " + peer.ns + " link set eth0 up");
  sh("ip netns exec " + peer.ns + " iperf3 -s -D -p 5201 --pidfile " + peer.pidfile);
  // What the daemon's chains do: pick the VM's "everything else" class.
  const std::uint32_t prio = tc_handle(kTcMajorDefault, 1, FlowClass::other);
  char rule[256];
  (void)std::snprintf(rule, sizeof rule,
                      "nft add table inet b; nft add chain inet b out '{ type filter hook output priority 0; }'; "
                      "nft add rule inet b out ip daddr 192.0.2.2 meta priority set %x:%x",
                      prio >> 16U, prio & 0xffffU);
  sh(rule);
  usleep(300'000);
  std::cout << "\n## achieved rate (iperf3 TCP, 5 s, first second omitted; goodput vs. cap)\n\n"
               "| cap | goodput | goodput / cap | wire estimate / cap |\n|---|---|---|---|\n";
  for (std::uint64_t cap : {1'000'000ULL, 10'000'000ULL, 100'000'000ULL}) {
    if (auto st = tc.ensure_qdisc("sga0", kTcMajorDefault, tc_root_class(kTcMajorDefault, std::nullopt)); !st) {
      std::cerr << st.error().describe() << "\n";
      return 1;
    }
    for (const auto& c : tc_vm_classes(kTcMajorDefault, vm(1, cap), std::nullopt)) {
      if (auto st = tc.put_class("sga0", c); !st) return 1;
    }
    // The server finishes the previous test after the queue drains: retry while busy.
    std::string out;
    for (int attempt = 0; attempt < 10; ++attempt) {
      out = capture("iperf3 -c 192.0.2.2 -p 5201 -t 5 -O 1 -J 2>&1");
      if (out.find("server is busy") == std::string::npos) break;
      sleep(1);
    }
    auto j = nlohmann::json::parse(out, nullptr, false);
    double got = 0;
    if (!j.is_discarded() && j.contains("end") && j["end"].contains("sum_received") &&
        j["end"]["sum_received"].is_object()) {
      got = j["end"]["sum_received"].value("bits_per_second", 0.0);
    } else {
      std::cerr << "iperf3 failed: " << out.substr(0, 400) << "\n";
    }
    // Wire bytes per payload byte for full-size segments: 1514 / 1448.
    std::printf("| %s | %.3f Mbit/s | %.3f | %.3f |\n", tc_rate_text(cap).c_str(), got / 1e6, got / cap,
                got * 1514.0 / 1448.0 / cap);
  }
  return 0;
}

}  // namespace

namespace {
int run_main() {
  if (geteuid() != 0) {
    std::cerr << "shaping_bench: needs root (it makes network namespaces)\n";
    return 2;
  }
  // A namespace of our own: nothing here touches the machine's network.
  if (unshare(CLONE_NEWNET) != 0) {
    perror("unshare(CLONE_NEWNET)");
    return 1;
  }
  sh("ip link set lo up");
  auto tc = TcBackend::open();
  if (!tc) {
    std::cerr << tc.error().describe() << "\n";
    return 1;
  }
  Peer peer;
  if (int rc = bench_add_time(*tc); rc != 0) return rc;
  return bench_accuracy(*tc, peer);
}
}  // namespace

int main() {
  return sg::guarded_main("shaping_bench", [] { return run_main(); });
}
