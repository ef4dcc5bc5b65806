// systemd's readiness and watchdog protocol (sd_notify(3)), by hand: one
// datagram to $NOTIFY_SOCKET per message. Without that variable (not run by
// systemd with Type=notify) every call is a no-op.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace sg::sd {

// Sends e.g. "READY=1" or "STOPPING=1"; false when the socket refused it.
bool notify(std::string_view state);

// Pings systemd's watchdog (WATCHDOG=1) at half of $WATCHDOG_USEC, from the
// event loop's tick: a wedged loop stops the pings and systemd restarts us.
class Watchdog {
 public:
  // None when the unit has no WatchdogSec= (or it is meant for another PID).
  static std::optional<Watchdog> from_env();
  void tick(std::int64_t now_ms);
  [[nodiscard]] std::int64_t interval_ms() const { return interval_ms_; }

 private:
  explicit Watchdog(std::int64_t interval_ms) : interval_ms_(interval_ms) {}
  std::int64_t interval_ms_;
  std::int64_t last_ms_ = 0;
};

}  // namespace sg::sd
