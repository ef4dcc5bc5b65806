// A private libvirtd for the e2e tier: runs in the test's "host" network
// namespace (so the taps it creates never appear in the machine's root
// namespace) and in a mount namespace of its own, where a temp dir is bound
// over /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt and
// /var/cache/libvirt. So it never meets another libvirtd's socket or state,
// reads our qemu.conf (root user, no security driver) and leaves nothing on
// the machine. Clients reach it through its socket in the temp dir:
// qemu:///system?socket=DIR/run/libvirt-sock.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace sg::test {

class Libvirtd {
 public:
  // `dir`: an empty folder of the test; `cache`: QEMU capabilities cache
  // kept across tests (probing QEMU takes a second or two).
  Libvirtd(std::string netns, std::string dir, std::string cache);
  ~Libvirtd();  // destroys every domain, then stops libvirtd
  Libvirtd(const Libvirtd&) = delete;
  Libvirtd& operator=(const Libvirtd&) = delete;

  // Starts libvirtd and waits until it answers; false (see log()) if not.
  bool start();
  // SIGTERM, wait. Running domains survive (QEMU keeps running), as they
  // do when an admin restarts libvirtd.
  void stop();
  // Destroys and undefines every domain, then kills QEMU processes that
  // are left (by the PIDs libvirt recorded).
  void destroy_all_domains();

  [[nodiscard]] std::string uri() const { return "qemu:///system?socket=" + dir_ + "/run/libvirt-sock"; }
  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] std::string log() const;
  // What a domain printed on its serial console (its file is under the
  // private /var/log/libvirt).
  [[nodiscard]] std::string console(const std::string& domain) const;
  // Names of running domains.
  [[nodiscard]] std::vector<std::string> running() const;
  // Runs virsh against this libvirtd.
  std::string virsh(const std::vector<std::string>& args) const;

 private:
  std::string netns_, dir_, cache_;
  pid_t pid_ = -1;
};

// Why QEMU cannot run guests here, or empty.
std::string why_no_qemu();

}  // namespace sg::test
