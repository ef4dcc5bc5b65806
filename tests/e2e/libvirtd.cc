#include "tests/e2e/libvirtd.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <sstream>
#include <thread>

#include "tests/integration/harness.h"

namespace sg::test {
namespace {

// root runs QEMU, with no security driver: the test machine has no
// libvirt-qemu user nor AppArmor profiles. stdio_handler "file": QEMU's own
// log goes to a file, so no virtlogd is needed.
constexpr const char* kQemuConf = R"(user = "root"
group = "root"
security_driver = "none"
stdio_handler = "file"
)";

constexpr const char* kLibvirtdConf = R"(unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
log_outputs = "3:stderr"
)";

bool wait_exit(pid_t pid, int timeout_ms) {
  for (int waited = 0; waited < timeout_ms; waited += 50) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

}  // namespace

std::string why_no_qemu() {
  if (geteuid() != 0) return "needs root to run libvirtd and QEMU (run scripts/test as root)";
  for (const char* bin : {"/usr/bin/qemu-system-x86_64", "/usr/sbin/libvirtd", "/usr/bin/virsh"}) {
    if (access(bin, X_OK) != 0) return std::string(bin) + " is missing: run scripts/install-deps";
  }
  auto r = run({"/usr/bin/qemu-system-x86_64", "-version"});
  if (r.code != 0) return "QEMU cannot run here: " + r.err;
  return "";
}

Libvirtd::Libvirtd(std::string netns, std::string dir, std::string cache)
    : netns_(std::move(netns)), dir_(std::move(dir)), cache_(std::move(cache)) {
  for (const char* d : {"etc", "run", "lib", "log"}) std::filesystem::create_directories(dir_ + "/" + d);
  std::filesystem::create_directories(cache_);
  write_file(dir_ + "/etc/qemu.conf", kQemuConf);
  write_file(dir_ + "/etc/libvirtd.conf", kLibvirtdConf);
  // libvirt's QEMU driver looks its default user up before it reads
  // qemu.conf: give it one in the private mount namespace's /etc/passwd.
  write_file(dir_ + "/passwd", read_file("/etc/passwd") + "libvirt-qemu:x:64055:64055::/nonexistent:/bin/false\n");
  write_file(dir_ + "/group", read_file("/etc/group") + "libvirt-qemu:x:64055:\nkvm:x:64056:\n");
  std::string script = "set -e\n";
  for (const auto& [src, dst] : std::vector<std::pair<std::string, std::string>>{{dir_ + "/etc", "/etc/libvirt"},
                                                                                 {dir_ + "/run", "/run/libvirt"},
                                                                                 {dir_ + "/lib", "/var/lib/libvirt"},
                                                                                 {dir_ + "/log", "/var/log/libvirt"},
                                                                                 {cache_, "/var/cache/libvirt"}}) {
    script += "mkdir -p " + dst + "\nmount --bind " + src + " " + dst + "\n";
  }
  script += "mount --bind " + dir_ + "/passwd /etc/passwd\nmount --bind " + dir_ + "/group /etc/group\n";
  script += "exec /usr/sbin/libvirtd -f /etc/libvirt/libvirtd.conf\n";
  write_file(dir_ + "/start.sh", script);
}

Libvirtd::~Libvirtd() {
  destroy_all_domains();
  stop();
}

bool Libvirtd::start() {
  pid_ = fork();
  if (pid_ == 0) {
    int fd = open((dir_ + "/libvirtd.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    setsid();  // not in the test's process group: ctest's signals are ours to forward
    std::string net = "--net=/run/netns/" + netns_;
    std::string script = dir_ + "/start.sh";
    // unshare and nsenter exec their command, and the script execs
    // libvirtd: pid_ is libvirtd's own PID.
    execlp("unshare", "unshare", "--mount", "--propagation", "private", "--", "nsenter", net.c_str(), "--", "/bin/sh",
           script.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    if (run({"virsh", "-q", "-c", uri(), "uri"}).code == 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

void Libvirtd::stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  if (!wait_exit(pid_, 15000)) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  pid_ = -1;
}

std::vector<std::string> Libvirtd::running() const {
  std::vector<std::string> out;
  std::istringstream in(virsh({"list", "--name"}));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) out.push_back(line);
  }
  return out;
}

std::string Libvirtd::virsh(const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {"virsh", "-q", "-c", uri()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv).out;
}

void Libvirtd::destroy_all_domains() {
  if (pid_ > 0) {
    std::istringstream in(virsh({"list", "--all", "--name"}));
    for (std::string name; std::getline(in, name);) {
      if (name.empty()) continue;
      virsh({"destroy", name});
      virsh({"undefine", name});
    }
  }
  // Whatever QEMU is left (libvirtd was down or refused): its PID is in the
  // private state dir. Only processes of this test's libvirtd are named there.
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir_ + "/run/qemu", ec)) {
    if (e.path().extension() != ".pid") continue;
    pid_t qemu = static_cast<pid_t>(std::atol(read_file(e.path()).c_str()));
    if (qemu > 1 && kill(qemu, SIGKILL) == 0) {
      for (int i = 0; i < 100 && kill(qemu, 0) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

std::string Libvirtd::log() const { return read_file(dir_ + "/libvirtd.log"); }

std::string Libvirtd::console(const std::string& domain) const {
  return read_file(dir_ + "/log/" + domain + ".console.log");
}

}  // namespace sg::test
