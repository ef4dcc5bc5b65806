#include "surrogated/loop_bridge.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>

namespace sg {

Result<std::unique_ptr<LoopBridge>> LoopBridge::create() {
  Fd efd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!efd.valid()) return make_sys_error("cannot create the eventfd that wakes the event loop");
  return std::unique_ptr<LoopBridge>(new LoopBridge(std::move(efd)));
}

bool LoopBridge::post(std::function<void()> job) {
  {
    std::lock_guard lock(mu_);
    if (closed_ || jobs_.size() >= kMaxQueued) return false;
    jobs_.push_back(std::move(job));
  }
  std::uint64_t one = 1;
  (void)!::write(efd_.get(), &one, sizeof one);
  return true;
}

void LoopBridge::on_event_ready() {
  std::uint64_t n = 0;
  (void)!::read(efd_.get(), &n, sizeof n);
  std::deque<std::function<void()>> batch;
  {
    std::lock_guard lock(mu_);
    batch.swap(jobs_);
  }
  for (auto& job : batch) job();
}

void LoopBridge::close() {
  std::deque<std::function<void()>> dropped;
  {
    std::lock_guard lock(mu_);
    closed_ = true;
    dropped.swap(jobs_);
  }
  // Destroying the jobs destroys their promises: the waiters see a broken
  // promise and answer 503 at once.
}

}  // namespace sg
