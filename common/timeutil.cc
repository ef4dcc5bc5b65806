#include "common/timeutil.h"

#include <chrono>
#include <cstdio>
#include <ctime>

namespace sg {

Result<std::int64_t> parse_duration(std::string_view text) {
  if (text.empty()) return make_error("empty duration; write e.g. 90s, 30m, 12h or 7d");
  std::int64_t total = 0;
  std::int64_t number = -1;
  bool any_unit = false;
  for (char c : text) {
    if (c >= '0' && c <= '9') {
      number = (number < 0 ? 0 : number) * 10 + (c - '0');
      if (number > 100LL * 365 * 86400) return make_error("duration '" + std::string(text) + "' is too large");
      continue;
    }
    std::int64_t unit = 0;
    switch (c) {
      case 's': unit = 1; break;
      case 'm': unit = 60; break;
      case 'h': unit = 3600; break;
      case 'd': unit = 86400; break;
      case 'w': unit = 7 * 86400; break;
      default:
        return make_error("duration '" + std::string(text) + "' has unknown unit '" + std::string(1, c) +
                          "'; use s, m, h, d or w (e.g. 1h30m)");
    }
    if (number < 0) return make_error("duration '" + std::string(text) + "' has a unit without a number");
    total += number * unit;
    number = -1;
    any_unit = true;
  }
  if (number >= 0) {
    if (any_unit) return make_error("duration '" + std::string(text) + "' ends in a number without a unit");
    total = number;
  }
  return total;
}

std::string format_duration(std::int64_t seconds) {
  if (seconds <= 0) return "0s";
  std::string out;
  const std::int64_t units[] = {86400, 3600, 60, 1};
  const char* names[] = {"d", "h", "m", "s"};
  int shown = 0;
  for (int i = 0; i < 4 && shown < 2; ++i) {
    if (seconds >= units[i]) {
      out += std::to_string(seconds / units[i]) + names[i];
      seconds %= units[i];
      ++shown;
    } else if (shown > 0) {
      break;
    }
  }
  return out;
}

std::string format_utc(std::int64_t unix_seconds) {
  std::time_t t = unix_seconds;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  (void)std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

Result<std::int64_t> parse_utc(std::string_view text) {
  std::string s(text);
  if (!s.empty() && s.find_first_not_of("0123456789") == std::string::npos) return std::stoll(s);
  std::tm tm{};
  int n = 0;
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, sec = 0;
  char sep = 0;
  n = std::sscanf(s.c_str(), "%4d-%2d-%2d%c%2d:%2d:%2d", &y, &mo, &d, &sep, &h, &mi, &sec);
  if (n < 3 || (n >= 4 && sep != 'T' && sep != ' ') || n == 4 || n == 5) {
    return make_error("time '" + s + "' is not understood; write 2026-11-26T14:02:00Z or unix seconds");
  }
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = sec;
  return static_cast<std::int64_t>(timegm(&tm));
}

std::int64_t now_unix() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace sg
