// The namespace topology of the enforcement tests (ARCHITECTURE.md,
// "Testing topology"): a "host" running surrogated, with routed links to
// "client", "nodeA" and "internet"; each guest is a namespace behind a veth
// named like its tap. Every destination namespace counts what arrives from
// the VM pool in named nft counters ("sensors"), so a test can prove that a
// forbidden packet never arrived.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/harness.h"

namespace sg::test {

struct Endpoint {
  std::string ns;  // namespace name
  std::string v4;  // its address
  std::string v6;
  std::string host_v4;  // the host's address on the link
  std::string host_v6;
};

class Topology {
 public:
  // Builds host, client, nodeA and internet namespaces, writes config and
  // policy into a temp dir and starts the daemon. `policy` is the trust
  // policy text; "{ALICE}" etc. are replaced by callers beforehand.
  explicit Topology(const std::string& tag);
  ~Topology();
  Topology(const Topology&) = delete;
  Topology& operator=(const Topology&) = delete;

  bool start(const std::string& policy);
  void write_policy(const std::string& policy);

  RunResult ctl(std::vector<std::string> args, const std::string& key = "", uid_t uid = 0) const;
  nlohmann::json ctl_json(std::vector<std::string> args, const std::string& key = "") const;
  std::string keygen(const std::string& who);
  std::string fingerprint(const std::string& key) const;

  // Runs a command in a guest's namespace.
  RunResult in_guest(const std::string& vm, const std::vector<std::string>& argv) const;
  RunResult in_ns(const std::string& ns, const std::vector<std::string>& argv) const;
  // Pings once; true when answered.
  bool ping(const std::string& vm, const std::string& addr, const std::vector<std::string>& extra = {}) const;
  // TCP connect from a guest: true when the destination answered (connected
  // or refused), false when the packet was dropped on the way.
  bool tcp_reaches(const std::string& vm, const std::string& addr, int port) const;

  // Packets that arrived at a namespace from the VM pool since the last reset.
  std::uint64_t sensor(const std::string& ns) const;
  // Bytes (IP length) that arrived from the VM pool since the last reset.
  std::uint64_t sensor_bytes(const std::string& ns) const;
  void reset_sensors() const;
  // Drops counted for one VM and reason ("sg3 reserved", from the shared
  // drop counter set), or by the shared rules logging "sg? no-chain ".
  std::uint64_t drop_counter(const std::string& comment_part) const;
  std::string nft_list() const;

  DaemonProcess& daemon() { return *daemon_; }
  const std::string& dir() const { return dir_; }
  const std::string& host_ns() const { return host_->name(); }
  std::string guest_ns(const std::string& vm) const { return tag_ + "-g-" + vm; }

  Endpoint client, nodeA, internet;
  // Destinations that live in "internet": reserved ones and a blocked one.
  std::vector<std::string> reserved_v4 = {"10.1.2.3", "100.64.1.1", "172.16.1.1", "192.168.1.1", "240.0.0.1"};
  std::vector<std::string> reserved_v6 = {"fc00::1", "fec0::1"};
  std::string blocked_v4 = "203.0.113.200";
  std::string blocked_v6 = "2001:db8:bad::1";
  std::string socket;
  // Appended to surrogated.toml by start() (extra sections such as [pki]).
  std::string extra_config;
  // The daemon's hypervisor. With test:// the guests are simulated network
  // namespaces (guest_ns()); anything else boots real guests through a
  // libvirtd the caller runs in host_ns() (tests/e2e), from templates the
  // caller adds with extra_config.
  std::string libvirt_uri = "test:///default";

 private:
  void link(const Endpoint& e, const std::string& host_if);
  std::string tag_, dir_;
  std::unique_ptr<Netns> host_;
  std::vector<std::unique_ptr<Netns>> others_;
  std::unique_ptr<DaemonProcess> daemon_;
};

// A UDP flow that has seen replies is established in conntrack; the rules
// pass such packets early (the short path, or a level's "established"
// rule). Sends one datagram every 50 ms from one socket (from src_port when
// not 0) for `seconds` from the guest of `vm` to an echo in `ns` at
// addr:port, in the background.
class EstablishedUdpFlow {
 public:
  EstablishedUdpFlow(const Topology& t, const std::string& vm, const std::string& ns, const std::string& addr, int port,
                     int seconds, int src_port = 0);
  ~EstablishedUdpFlow();
  EstablishedUdpFlow(const EstablishedUdpFlow&) = delete;
  EstablishedUdpFlow& operator=(const EstablishedUdpFlow&) = delete;

 private:
  std::thread echo_, sender_;
};

std::string sgprobe_bin();
// The lab's trust policy: the stand-in internet is made of documentation
// ranges, which the default policy (rightly) treats as reserved, so the lab
// lifts them; a block list; `semi_fp` semi-trusted with small allowlists,
// `trusted_fp` trusted. `semi_more` continues the [levels.semi-trusted]
// table (more keys, then further tables).
std::string lab_trust_policy(const std::string& semi_fp, const std::string& trusted_fp,
                             const std::string& semi_more = "");
// A lab PKI made with the openssl CLI as docs/authcert.md shows: ca.pem,
// crl.pem, and nodeA's node.key / node.pem, in `dir`.
RunResult make_lab_pki(const std::string& dir);

}  // namespace sg::test
