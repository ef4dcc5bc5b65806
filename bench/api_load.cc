// api_load: the HTTPS API under many concurrent clients (GitHub issue 11).
// A program, not a test: bench/api_load (the script) builds a namespace, a
// PKI and a daemon, then runs this inside the namespace. Each client is a
// thread with its own certificate and keep-alive TLS connection, issuing
// requests back to back for the whole run; it reports throughput, errors
// and latency percentiles.
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/main_guard.h"

namespace {

struct Options {
  std::string url = "https://127.0.0.1:8443";
  std::string certs;  // DIR with client-N.pem / client-N.key
  std::string cacert;
  std::string path = "/v1/vms";
  int clients = 200;
  int seconds = 30;
};

double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  std::size_t i = std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(i), v.end());
  return v[i];
}

}  // namespace

namespace {
int run_main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--url")
      o.url = v;
    else if (k == "--certs")
      o.certs = v;
    else if (k == "--cacert")
      o.cacert = v;
    else if (k == "--path")
      o.path = v;
    else if (k == "--clients")
      o.clients = std::atoi(v.c_str());
    else if (k == "--seconds")
      o.seconds = std::atoi(v.c_str());
    else {
      (void)std::fprintf(stderr, "api_load: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (o.certs.empty() || o.cacert.empty()) {
    (void)std::fprintf(stderr, "usage: api_load --certs DIR --cacert FILE [--url U] [--clients N] [--seconds S]\n");
    return 2;
  }
  std::atomic<bool> go = false;
  std::atomic<std::uint64_t> errors = 0;
  std::mutex mu;
  std::vector<double> latencies_ms;
  std::map<std::string, std::uint64_t> failures;
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(o.clients));
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(o.seconds + 2);
  for (int c = 0; c < o.clients; ++c) {
    threads.emplace_back([&, c] {
      std::string base = o.certs + "/client-" + std::to_string(c);
      httplib::Client cli(o.url, base + ".pem", base + ".key");
      cli.set_ca_cert_path(o.cacert.c_str());
      cli.enable_server_certificate_verification(true);
      cli.set_keep_alive(true);
      cli.set_read_timeout(30, 0);
      cli.set_connection_timeout(30, 0);
      std::vector<double> mine;
      std::map<std::string, std::uint64_t> my_failures;
      while (!go) std::this_thread::yield();
      auto start = std::chrono::steady_clock::now();
      auto end = start + std::chrono::seconds(o.seconds);
      while (std::chrono::steady_clock::now() < end && std::chrono::steady_clock::now() < deadline) {
        auto t0 = std::chrono::steady_clock::now();
        auto res = cli.Get(o.path);
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (!res || res->status != 200) {
          ++errors;
          ++my_failures[res ? "HTTP " + std::to_string(res->status) : httplib::to_string(res.error())];
          continue;
        }
        mine.push_back(ms);
      }
      std::lock_guard lock(mu);
      latencies_ms.insert(latencies_ms.end(), mine.begin(), mine.end());
      for (const auto& [k, n] : my_failures) failures[k] += n;
    });
  }
  auto t0 = std::chrono::steady_clock::now();
  go = true;
  for (auto& t : threads) t.join();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<double> l = latencies_ms;
  nlohmann::json out = {
      {"clients", o.clients},          {"seconds", secs},
      {"requests_ok", l.size()},       {"errors", errors.load()},
      {"failures", failures},          {"requests_per_second", static_cast<double>(l.size()) / secs},
      {"p50_ms", percentile(l, 0.50)}, {"p90_ms", percentile(l, 0.90)},
      {"p99_ms", percentile(l, 0.99)}, {"max_ms", l.empty() ? 0 : *std::max_element(l.begin(), l.end())}};
  std::printf("%s\n", out.dump(2).c_str());
  return errors == 0 ? 0 : 1;
}
}  // namespace

int main(int argc, char** argv) {
  return sg::guarded_main("api_load", [&] { return run_main(argc, argv); });
}
