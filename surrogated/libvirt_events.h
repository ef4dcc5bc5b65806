// Domain life-cycle events from libvirt, handed to the daemon's
// single-threaded event loop. A guest that powers off or crashes is released
// like `surrogatectl release` does (domain, rules, addresses), with the
// reason in its history; a lost connection (libvirtd restarted) is reopened
// and followed by a reconcile, so nothing that happened meanwhile is missed.
//
// libvirt delivers events only while someone runs its event loop: a
// dedicated thread runs virEventRunDefaultImpl, and the callbacks there do
// nothing but queue the event and write an eventfd. All real work happens
// in on_event_ready(), on the daemon's thread.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/raii/fd.h"
#include "common/raii/libvirt.h"
#include "common/result.h"
#include "surrogated/event_source.h"
#include "surrogated/state_store.h"
#include "surrogated/vm_manager.h"

namespace sg {

// The release reason for a libvirt life-cycle event (virDomainEventType and
// its detail), or nothing when the event does not end the guest. Pure.
std::optional<std::string> stop_reason(int event, int detail);

class LibvirtEvents final : public EventSource {
 public:
  // Starts libvirt's event loop thread, opens a connection of its own to
  // `uri` and subscribes to life-cycle events of every domain.
  static Result<std::unique_ptr<LibvirtEvents>> open(const std::string& uri, StateStore& store, VmManager& vms);
  ~LibvirtEvents() override;
  LibvirtEvents(const LibvirtEvents&) = delete;
  LibvirtEvents& operator=(const LibvirtEvents&) = delete;

  [[nodiscard]] int event_fd() const override { return wakeup_.get(); }
  // Releases the VMs whose domains stopped; notices a lost connection.
  void on_event_ready() override;
  // Tries to reconnect once a second while libvirt is away.
  void on_tick() override;

 private:
  struct Stopped {
    std::string domain;
    int event = 0;
    int detail = 0;
  };

  LibvirtEvents(std::string uri, StateStore& store, VmManager& vms, Fd wakeup)
      : uri_(std::move(uri)), store_(store), vms_(vms), wakeup_(std::move(wakeup)) {}
  Status subscribe();
  void unsubscribe();
  void reconnect();
  void notify() const;

  // Run on libvirt's event thread: queue and wake the daemon, nothing else.
  static void on_lifecycle(virConnectPtr conn, virDomainPtr dom, int event, int detail, void* opaque);
  static void on_close(virConnectPtr conn, int reason, void* opaque);

  std::string uri_;
  StateStore& store_;
  VmManager& vms_;
  Fd wakeup_;  // eventfd: the event thread's "something is queued"

  std::mutex mu_;  // guards pending_ and lost_, shared with the event thread
  std::vector<Stopped> pending_;
  bool lost_ = false;

  virt::Connect conn_;  // used on the daemon's thread only
  int callback_id_ = -1;
  bool connected_ = false;
  int failed_reconnects_ = 0;

  std::atomic<bool> stop_{false};
  std::thread loop_;
};

}  // namespace sg
