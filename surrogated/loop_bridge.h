// Hands work from other threads (the HTTPS API's and the web page's worker
// threads) to the daemon's single-threaded event loop. Daemon state is only
// ever touched on the loop; a worker posts a job, the loop is woken through
// an eventfd, runs the job, and the worker waits for its result with a
// timeout.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>

#include "common/raii/fd.h"
#include "common/result.h"
#include "surrogated/event_source.h"

namespace sg {

class LoopBridge final : public EventSource {
 public:
  static constexpr std::size_t kMaxQueued = 1024;

  static Result<std::unique_ptr<LoopBridge>> create();

  [[nodiscard]] int event_fd() const override { return efd_.get(); }
  // Loop thread: runs every queued job.
  void on_event_ready() override;

  // Any thread but the loop's: runs fn on the loop and returns its result,
  // or nullopt when the queue is full, the bridge is closed, or the loop did
  // not finish the job within `timeout` (it may still run it later: fn must
  // own everything it touches besides daemon state).
  template <class T>
  std::optional<T> call(std::function<T()> fn, std::chrono::milliseconds timeout) {
    auto promise = std::make_shared<std::promise<T>>();
    auto future = promise->get_future();
    bool queued = post([promise, fn = std::move(fn)] {
      try {
        promise->set_value(fn());
      } catch (...) {
        promise->set_exception(std::current_exception());
      }
    });
    if (!queued) return std::nullopt;
    if (future.wait_for(timeout) != std::future_status::ready) return std::nullopt;
    try {
      return future.get();
    } catch (...) {
      return std::nullopt;  // the job threw, or was dropped by close()
    }
  }

  // Refuses new jobs and drops queued ones, so waiting workers return at
  // once (before the HTTP servers are stopped and joined).
  void close();

 private:
  explicit LoopBridge(Fd efd) : efd_(std::move(efd)) {}
  bool post(std::function<void()> job);

  Fd efd_;
  std::mutex mu_;
  std::deque<std::function<void()>> jobs_;
  bool closed_ = false;
};

}  // namespace sg
