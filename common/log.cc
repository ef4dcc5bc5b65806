#include "common/log.h"

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>

namespace sg::log {
namespace {

struct LoggerState {
  std::mutex mutex;
  Level min_level = Level::info;
  bool journal = std::getenv("JOURNAL_STREAM") != nullptr;
};

LoggerState& state() {
  static LoggerState s;
  return s;
}

const char* level_word(Level l) {
  switch (l) {
    case Level::debug: return "debug";
    case Level::info: return "info";
    case Level::notice: return "notice";
    case Level::warning: return "warning";
    case Level::error: return "error";
    case Level::alert: return "ALERT";
  }
  return "?";
}

}  // namespace

void set_min_level(Level level) {
  std::lock_guard lock(state().mutex);
  state().min_level = level;
}

void write(Level level, const std::string& message) {
  auto& s = state();
  std::lock_guard lock(s.mutex);
  if (static_cast<int>(level) > static_cast<int>(s.min_level)) return;
  if (s.journal) {
    (void)std::fprintf(stderr, "<%d>%s\n", static_cast<int>(level), message.c_str());
  } else {
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&now, &tm);
    char ts[32];
    (void)std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    (void)std::fprintf(stderr, "%s surrogated[%s]: %s\n", ts, level_word(level), message.c_str());
  }
  (void)std::fflush(stderr);
}

}  // namespace sg::log
