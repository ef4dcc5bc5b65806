#include "tests/integration/topology.h"

#include <sys/stat.h>

#include <chrono>
#include <regex>

namespace sg::test {

std::string sgprobe_bin() { return SG_SGPROBE_BIN; }

namespace {

// Sensor: named counters of what arrives from the VM pool (v4 and v6, but
// not neighbour discovery, which is link noise).
constexpr const char* kSensor = R"(table inet sensor {
  counter v4 { }
  counter v6 { }
  chain input {
    type filter hook prerouting priority -300; policy accept;
    ip saddr 198.51.100.0/24 counter name "v4"
    ip6 saddr 2001:db8:5::/48 meta l4proto != ipv6-icmp counter name "v6"
    ip6 saddr 2001:db8:5::/48 icmpv6 type { echo-request, echo-reply } counter name "v6"
  }
}
)";

// Duplicate address detection holds new addresses back for a second; the
// lab's addresses are unique by construction.
void no_dad(const std::string& ns) {
  RunOptions o;
  o.netns = ns;
  run({"sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"}, o);
}

}  // namespace

Topology::Topology(const std::string& tag) : tag_(tag) {
  dir_ = make_temp_dir();
  socket = dir_ + "/control.sock";
  host_ = std::make_unique<Netns>(tag_ + "-host");
  no_dad(host_->name());
  client = {tag_ + "-client", "203.0.113.2", "2001:db8:c::2", "203.0.113.1", "2001:db8:c::1"};
  nodeA = {tag_ + "-nodeA", "203.0.113.18", "2001:db8:a::2", "203.0.113.17", "2001:db8:a::1"};
  internet = {tag_ + "-inet", "203.0.113.34", "2001:db8:e::2", "203.0.113.33", "2001:db8:e::1"};
  link(client, "c0");
  link(nodeA, "n0");
  link(internet, "i0");
  // Far-away destinations live on the internet namespace's loopback.
  std::vector<std::string> far = reserved_v4;
  far.push_back(blocked_v4);
  for (const auto& a : far) {
    in_ns(internet.ns, {"ip", "addr", "add", a + "/32", "dev", "lo"});
    in_ns(host_->name(), {"ip", "route", "add", a + "/32", "via", internet.v4});
  }
  std::vector<std::string> far6 = reserved_v6;
  far6.push_back(blocked_v6);
  for (const auto& a : far6) {
    in_ns(internet.ns, {"ip", "addr", "add", a + "/128", "dev", "lo"});
    in_ns(host_->name(), {"ip", "-6", "route", "add", a + "/128", "via", internet.v6});
  }
  in_ns(host_->name(), {"sysctl", "-qw", "net.ipv4.ip_forward=1"});
  in_ns(host_->name(), {"sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"});
  for (const auto* e : {&client, &nodeA, &internet}) {
    RunOptions o;
    o.netns = e->ns;
    o.stdin_data = kSensor;
    run({"nft", "-f", "-"}, o);
  }
}

Topology::~Topology() {
  if (daemon_) daemon_->stop();
  daemon_.reset();
  remove_netns_with_prefix(tag_ + "-g-");
  others_.clear();
  host_.reset();
  remove_tree(dir_);
}

void Topology::link(const Endpoint& e, const std::string& host_if) {
  others_.push_back(std::make_unique<Netns>(e.ns));
  no_dad(e.ns);
  in_ns(host_->name(), {"ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", e.ns});
  in_ns(host_->name(), {"ip", "addr", "add", e.host_v4 + "/28", "dev", host_if});
  in_ns(host_->name(), {"ip", "addr", "add", e.host_v6 + "/64", "dev", host_if, "nodad"});
  in_ns(host_->name(), {"ip", "link", "set", host_if, "up"});
  in_ns(e.ns, {"ip", "addr", "add", e.v4 + "/28", "dev", "eth0"});
  in_ns(e.ns, {"ip", "addr", "add", e.v6 + "/64", "dev", "eth0", "nodad"});
  in_ns(e.ns, {"ip", "link", "set", "eth0", "up"});
  in_ns(e.ns, {"ip", "route", "add", "default", "via", e.host_v4});
  in_ns(e.ns, {"ip", "-6", "route", "add", "default", "via", e.host_v6});
}

void Topology::write_policy(const std::string& policy) { write_file(dir_ + "/trust-policy.toml", policy); }

bool Topology::start(const std::string& policy) {
  write_policy(policy);
  write_file(dir_ + "/surrogated.toml",
             "[daemon]\nstate_dir = \"" + dir_ + "/state\"\nsocket = \"" + socket +
                 "\"\nlog_level = \"debug\"\ntrust_policy = \"" + dir_ +
                 "/trust-policy.toml\"\n"
                 "[libvirt]\nuri = \"" +
                 libvirt_uri + "\"\n" +
                 (libvirt_uri.rfind("test:", 0) == 0
                      ? "simulate_guest_network = true\nguest_netns_prefix = \"" + tag_ + "-g-\"\n"
                      : std::string()) +
                 "[pool]\nipv4 = \"198.51.100.0/24\"\nipv6 = \"2001:db8:5::/56\"\nmax_vms = 16\n"
                 "[templates.small]\nmax_lifetime = \"2h\"\ndefault_lifetime = \"1h\"\n" +
                 extra_config);
  daemon_ = std::make_unique<DaemonProcess>(host_->name(), dir_ + "/surrogated.toml", socket, dir_ + "/daemon.log");
  return daemon_->start();
}

RunResult Topology::ctl(std::vector<std::string> args, const std::string& key, uid_t uid) const {
  std::vector<std::string> argv = {surrogatectl_bin(), "--socket", socket};
  if (!key.empty()) {
    argv.push_back("--key");
    argv.push_back(key);
  }
  argv.insert(argv.end(), args.begin(), args.end());
  RunOptions o;
  o.uid = uid;
  return run(argv, o);
}

nlohmann::json Topology::ctl_json(std::vector<std::string> args, const std::string& key) const {
  args.insert(args.begin(), "--json");
  auto r = ctl(args, key);
  if (r.code != 0) return nlohmann::json{{"error", r.err}};
  return nlohmann::json::parse(r.out, nullptr, false);
}

std::string Topology::keygen(const std::string& who) {
  std::string path = dir_ + "/" + who + ".key";
  run({surrogatectl_bin(), "keygen", path});
  chmod(path.c_str(), 0644);
  return path;
}

std::string Topology::fingerprint(const std::string& key) const {
  auto r = run({surrogatectl_bin(), "--key", key, "fingerprint"});
  std::string fp = r.out;
  while (!fp.empty() && (fp.back() == '\n' || fp.back() == ' ')) fp.pop_back();
  return fp;
}

RunResult Topology::in_ns(const std::string& ns, const std::vector<std::string>& argv) const {
  RunOptions o;
  o.netns = ns;
  return run(argv, o);
}

RunResult Topology::in_guest(const std::string& vm, const std::vector<std::string>& argv) const {
  return in_ns(guest_ns(vm), argv);
}

bool Topology::ping(const std::string& vm, const std::string& addr, const std::vector<std::string>& extra) const {
  std::vector<std::string> argv = {"ping", "-n", "-c", "1", "-W", "2"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  argv.push_back(addr);
  return in_guest(vm, argv).code == 0;
}

bool Topology::tcp_reaches(const std::string& vm, const std::string& addr, int port) const {
  auto r = in_guest(vm, {sgprobe_bin(), "tcp-connect", addr, std::to_string(port), "1000"});
  return r.code == 0 || r.code == 2;
}

std::uint64_t Topology::sensor(const std::string& ns) const {
  std::uint64_t total = 0;
  for (const char* c : {"v4", "v6"}) {
    auto r = in_ns(ns, {"nft", "list", "counter", "inet", "sensor", c});
    std::smatch m;
    if (std::regex_search(r.out, m, std::regex("packets ([0-9]+)"))) total += std::stoull(m[1]);
  }
  return total;
}

std::uint64_t Topology::sensor_bytes(const std::string& ns) const {
  std::uint64_t total = 0;
  for (const char* c : {"v4", "v6"}) {
    auto r = in_ns(ns, {"nft", "list", "counter", "inet", "sensor", c});
    std::smatch m;
    if (std::regex_search(r.out, m, std::regex("bytes ([0-9]+)"))) total += std::stoull(m[1]);
  }
  return total;
}

void Topology::reset_sensors() const {
  for (const auto* e : {&client, &nodeA, &internet})
    in_ns(e->ns, {"nft", "reset", "counters", "table", "inet", "sensor"});
}

std::string Topology::nft_list() const { return in_ns(host_->name(), {"nft", "list", "ruleset"}).out; }

std::uint64_t Topology::drop_counter(const std::string& prefix) const {
  // "sg3 reserved": that VM's count in the shared drop counter set
  // (`"sg3" . "reserved" counter packets N ...`); "sg? no-chain": the
  // counters of the shared rules logging with that prefix.
  std::string text = nft_list();
  auto escape = [](const std::string& in) {
    std::string out;
    for (char c : in) {
      if (std::string("\\^$.|?*+()[]{}").find(c) != std::string::npos) out += '\\';
      out += c;
    }
    return out;
  };
  std::regex re;
  const auto space = prefix.find(' ');
  if (prefix.rfind("sg?", 0) == 0 || space == std::string::npos) {
    re = std::regex("counter packets ([0-9]+) bytes [0-9]+ log (?:group [0-9]+ )?prefix \"" + escape(prefix));
  } else {
    re = std::regex("\"" + escape(prefix.substr(0, space)) + "\" \\. \"" + escape(prefix.substr(space + 1)) +
                    "\" counter packets ([0-9]+)");
  }
  std::uint64_t total = 0;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator(); ++it) {
    total += std::stoull((*it)[1]);
  }
  return total;
}

// The documented lab commands (docs/authcert.md, section 3): a CA limited
// to 203.0.113.0/24, its CRL, and a node certificate for nodeA (node.key,
// node.pem), all in `dir`.
RunResult make_lab_pki(const std::string& dir) {
  std::string script = "set -e; mkdir -p " + dir + "; cd " + dir + R"(
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=Lab CA" \
-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
-addext "nameConstraints=critical,permitted;IP:203.0.113.0/255.255.255.0" -out ca.pem
printf '[ca]\ndefault_ca = lab\n[lab]\ndatabase = index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 7\n' > ca.cnf
: > index.txt; echo 01 > crlnumber
openssl ca -config ca.cnf -gencrl -keyfile ca.key -cert ca.pem -out crl.pem 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out node.key 2>/dev/null
openssl req -new -key node.key -subj "/CN=node-a.example" -out node.csr
printf 'basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\nsubjectAltName = IP:203.0.113.18\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n' > node.ext
openssl x509 -req -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -extfile node.ext -out node.pem 2>/dev/null
)";
  return run({"bash", "-c", script});
}

std::string lab_trust_policy(const std::string& semi_fp, const std::string& trusted_fp, const std::string& semi_more) {
  return R"(
[guardrails]
allow_reserved = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]
block = ["203.0.113.192/27", "2001:db8:bad::/48"]

[[clients.rules]]
name = "lab machine"
fingerprint = ")" +
         semi_fp + R"("
level = "semi-trusted"

[[clients.rules]]
name = "owner"
fingerprint = ")" +
         trusted_fp + R"("
level = "trusted"

[levels.semi-trusted]
tcp = ["203.0.113.32/28:80", "[2001:db8:e::/64]:80"]
udp = ["203.0.113.34:5353"]
icmp = ["echo-request"]
icmpv6 = ["echo-request"]
)" + semi_more;
}

EstablishedUdpFlow::EstablishedUdpFlow(const Topology& t, const std::string& vm, const std::string& ns,
                                       const std::string& addr, int port, int seconds, int src_port)
    : echo_([&t, ns, addr, port, seconds] {
        t.in_ns(ns, {sgprobe_bin(), "udp-echo", std::to_string(port), std::to_string(seconds + 2), addr});
      }),
      sender_([&t, vm, addr, port, seconds, src_port] {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the echo is listening
        t.in_guest(vm, {sgprobe_bin(), "udp-send", addr, std::to_string(port), std::to_string(seconds * 20), "50",
                        std::to_string(src_port)});
      }) {}

EstablishedUdpFlow::~EstablishedUdpFlow() {
  sender_.join();
  echo_.join();
}

}  // namespace sg::test
