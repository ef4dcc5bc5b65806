// What every namespace benchmark's main() shares: SIGINT, SIGTERM and SIGHUP
// stop the run at the next check_interrupt(), an exception is one line on
// stderr, and no namespace of the run is left behind, whatever happened.
#pragma once

#include <atomic>
#include <csignal>
#include <functional>
#include <stdexcept>
#include <string>

#include "common/main_guard.h"
#include "tests/integration/harness.h"

namespace sg::bench {

inline std::atomic<bool> g_interrupted{false};
inline void on_signal(int /*sig*/) { g_interrupted = true; }
inline void check_interrupt() {
  if (g_interrupted) throw std::runtime_error("interrupted");
}

// Runs the benchmark; `name` prefixes its error line, namespaces named
// "<ns_prefix>-*" are removed afterwards (the RAII owners already removed
// theirs; this catches anything left by an interrupted setup).
inline int run_main(const char* name, const std::string& ns_prefix, const std::function<int()>& body) {
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  std::signal(SIGHUP, on_signal);
  const int rc = guarded_main(name, body);
  test::remove_netns_with_prefix(ns_prefix + "-");
  return rc;
}

}  // namespace sg::bench
