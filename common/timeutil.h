// Durations written by people ("90s", "30m", "12h", "7d", "1h30m") and
// timestamps printed for them (ISO 8601, UTC).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace sg {

// Parses a duration into seconds. A bare number means seconds.
Result<std::int64_t> parse_duration(std::string_view text);
// Formats seconds as the shortest readable form: "2h", "1d3h", "45s".
std::string format_duration(std::int64_t seconds);
// Unix seconds -> "2026-11-26T14:02:00Z".
std::string format_utc(std::int64_t unix_seconds);
// "2026-11-26T14:02:00Z", "2026-11-26 14:02:00", "2026-11-26T14:02Z", or unix seconds.
Result<std::int64_t> parse_utc(std::string_view text);
std::int64_t now_unix();

}  // namespace sg
