// Something the daemon's event loop polls: a descriptor and what to do when
// it is readable. Kernel listeners (nftables monitor, conntrack, nflog) and
// the libvirt event thread plug into the loop this way.
#pragma once

namespace sg {

class EventSource {
 public:
  virtual ~EventSource() = default;
  [[nodiscard]] virtual int event_fd() const = 0;
  // Called from the event loop when event_fd() is readable; must not block.
  virtual void on_event_ready() = 0;
  // Called about once a second from the loop, for batching and timers.
  virtual void on_tick() {}
};

}  // namespace sg
