#include "surrogated/libvirt_events.h"

#include <libvirt/virterror.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>

#include "common/log.h"

namespace sg {
namespace {

std::string last_libvirt_error() {
  const char* m = virGetLastErrorMessage();
  return m != nullptr ? m : "unknown libvirt error";
}

// libvirt's default event implementation is process-wide and can be
// registered only once; every LibvirtEvents shares it.
Status register_event_impl() {
  static std::once_flag once;
  static int rc = 0;
  std::call_once(once, [] { rc = virEventRegisterDefaultImpl(); });
  if (rc != 0) return make_error("cannot start libvirt's event loop: " + last_libvirt_error());
  return {};
}

}  // namespace

std::optional<std::string> stop_reason(int event, int detail) {
  if (event == VIR_DOMAIN_EVENT_CRASHED) return "guest crashed";
  if (event != VIR_DOMAIN_EVENT_STOPPED) return std::nullopt;
  switch (detail) {
    case VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: return "guest powered off";
    case VIR_DOMAIN_EVENT_STOPPED_CRASHED: return "guest crashed";
    case VIR_DOMAIN_EVENT_STOPPED_DESTROYED: return "domain destroyed outside surrogated";
    case VIR_DOMAIN_EVENT_STOPPED_FAILED: return "the hypervisor failed the guest";
    case VIR_DOMAIN_EVENT_STOPPED_MIGRATED: return "guest migrated to another host";
    case VIR_DOMAIN_EVENT_STOPPED_SAVED: return "guest saved to disk outside surrogated";
    case VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: return "guest reverted to a snapshot outside surrogated";
    default: return "guest stopped";
  }
}

Result<std::unique_ptr<LibvirtEvents>> LibvirtEvents::open(const std::string& uri, StateStore& store, VmManager& vms) {
  if (auto st = register_event_impl(); !st) return st.error();
  Fd wakeup(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wakeup.valid()) return make_sys_error("cannot create an eventfd for libvirt events");
  std::unique_ptr<LibvirtEvents> ev(new LibvirtEvents(uri, store, vms, std::move(wakeup)));
  ev->loop_ = std::thread([p = ev.get()] {
    while (!p->stop_.load()) {
      if (virEventRunDefaultImpl() != 0) break;
    }
  });
  if (auto st = ev->subscribe(); !st) return st.error();  // the destructor stops the thread
  return ev;
}

LibvirtEvents::~LibvirtEvents() {
  // Connections must be closed while the loop still runs; then wake the
  // loop (a timer that fires at once) so it sees stop_.
  unsubscribe();
  stop_.store(true);
  int timer = virEventAddTimeout(
      0, [](int t, void* /*unused*/) { virEventRemoveTimeout(t); }, nullptr, nullptr);
  if (loop_.joinable()) {
    if (timer < 0) {
      loop_.detach();  // cannot wake it; it ends with the process
    } else {
      loop_.join();
    }
  }
}

Status LibvirtEvents::subscribe() {
  conn_.reset(virConnectOpen(uri_.c_str()));
  if (!conn_) return make_error("cannot connect to libvirt at " + uri_ + " for domain events: " + last_libvirt_error());
  // Keepalive notices a libvirtd that hangs (a dead one closes the socket,
  // which the loop sees at once): 5 s interval, 3 missed answers.
  if (virConnectSetKeepAlive(conn_.get(), 5, 3) < 0) {
    log::warning("libvirt at " + uri_ + " does not support keepalive; a hung libvirtd goes unnoticed");
  }
  if (virConnectRegisterCloseCallback(conn_.get(), on_close, this, nullptr) < 0) {
    std::string why = last_libvirt_error();
    conn_.reset();
    return make_error("cannot watch the libvirt connection to " + uri_ + ": " + why);
  }
  callback_id_ = virConnectDomainEventRegisterAny(conn_.get(), nullptr, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                  VIR_DOMAIN_EVENT_CALLBACK(on_lifecycle), this, nullptr);
  if (callback_id_ < 0) {
    std::string why = last_libvirt_error();
    virConnectUnregisterCloseCallback(conn_.get(), on_close);
    conn_.reset();
    return make_error("cannot subscribe to libvirt domain events at " + uri_ + ": " + why);
  }
  connected_ = true;
  return {};
}

void LibvirtEvents::unsubscribe() {
  if (!conn_) return;
  // On a dead connection these fail; the local registrations go anyway.
  if (callback_id_ >= 0) virConnectDomainEventDeregisterAny(conn_.get(), callback_id_);
  virConnectUnregisterCloseCallback(conn_.get(), on_close);
  callback_id_ = -1;
  conn_.reset();
  connected_ = false;
}

void LibvirtEvents::notify() const {
  std::uint64_t one = 1;
  (void)!::write(wakeup_.get(), &one, sizeof one);
}

void LibvirtEvents::on_lifecycle(virConnectPtr /*conn*/, virDomainPtr dom, int event, int detail, void* opaque) {
  if (event != VIR_DOMAIN_EVENT_STOPPED && event != VIR_DOMAIN_EVENT_CRASHED) return;
  auto* self = static_cast<LibvirtEvents*>(opaque);
  const char* name = virDomainGetName(dom);
  {
    std::lock_guard lock(self->mu_);
    self->pending_.push_back(Stopped{name != nullptr ? name : "", event, detail});
  }
  self->notify();
}

void LibvirtEvents::on_close(virConnectPtr /*conn*/, int /*reason*/, void* opaque) {
  auto* self = static_cast<LibvirtEvents*>(opaque);
  {
    std::lock_guard lock(self->mu_);
    self->lost_ = true;
  }
  self->notify();
}

void LibvirtEvents::on_event_ready() {
  std::uint64_t count = 0;
  (void)!::read(wakeup_.get(), &count, sizeof count);
  std::vector<Stopped> stopped;
  bool lost = false;
  {
    std::lock_guard lock(mu_);
    stopped.swap(pending_);
    std::swap(lost, lost_);
  }
  for (const auto& s : stopped) {
    auto reason = stop_reason(s.event, s.detail);
    if (!reason) continue;
    auto active = store_.active();
    if (!active) {
      log::error("libvirt: " + s.domain + " stopped (" + *reason + ") but the state store cannot be read: " +
                 active.error().describe() + "; the next reconcile releases it");
      continue;
    }
    auto it = std::find_if(active->begin(), active->end(), [&](const VmRecord& v) { return v.domain == s.domain; });
    // Not ours, or already released (our own release destroys the domain,
    // and that comes back here as an event too).
    if (it == active->end()) continue;
    log::info("libvirt: domain " + s.domain + " of " + it->name + " stopped: " + *reason);
    if (auto st = vms_.release(*it, *reason); !st) {
      log::error("cannot release " + it->name + " after its guest stopped: " + st.error().describe());
    }
  }
  if (lost && connected_) {
    log::warning("libvirt connection to " + uri_ + " was lost (libvirtd restarted?); reconnecting");
    unsubscribe();
    failed_reconnects_ = 0;
    reconnect();
  }
}

void LibvirtEvents::on_tick() {
  if (!connected_) reconnect();
}

void LibvirtEvents::reconnect() {
  if (auto st = subscribe(); !st) {
    // Say it once, then once a minute, not every second.
    if (failed_reconnects_++ % 60 == 0) log::warning(st.error().describe() + " (retrying every second)");
    return;
  }
  // Domains may have stopped while nobody listened: reconcile.
  log::notice("libvirt connection to " + uri_ + " is back; reconciling");
  auto report = vms_.reconcile();
  if (!report) {
    log::error("reconcile after reconnecting to libvirt failed: " + report.error().describe());
    return;
  }
  log::info("reconciled with " + uri_ + ": " + std::to_string(report->adopted.size()) + " adopted, " +
            std::to_string(report->released.size()) + " released");
}

}  // namespace sg
