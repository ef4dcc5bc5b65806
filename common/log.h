// Minimal leveled logger writing one line per message to stderr. Under
// systemd (JOURNAL_STREAM set) lines carry "<N>" priority prefixes so the
// journal records the level; otherwise a timestamp and level word.
#pragma once

#include <string>

namespace sg::log {

enum class Level { debug = 7, info = 6, notice = 5, warning = 4, error = 3, alert = 1 };

void set_min_level(Level level);
void write(Level level, const std::string& message);

inline void debug(const std::string& m) { write(Level::debug, m); }
inline void info(const std::string& m) { write(Level::info, m); }
inline void notice(const std::string& m) { write(Level::notice, m); }
inline void warning(const std::string& m) { write(Level::warning, m); }
inline void error(const std::string& m) { write(Level::error, m); }
inline void alert(const std::string& m) { write(Level::alert, m); }

}  // namespace sg::log
