#include "tests/integration/harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace sg::test {

RunResult must(const std::vector<std::string>& argv, const std::string& netns) {
  RunOptions o;
  o.netns = netns;
  auto r = run(argv, o);
  if (r.code != 0) {
    std::string cmd;
    for (const auto& a : argv) cmd += a + " ";
    throw std::runtime_error("command failed" + (netns.empty() ? "" : " in " + netns) + ": " + cmd + "(" +
                             std::to_string(r.code) + "): " + r.err);
  }
  return r;
}

EnterNetns::EnterNetns(const std::string& name) : original_(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)) {
  const int target = ::open(("/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC);
  ok_ = original_ >= 0 && target >= 0 && setns(target, CLONE_NEWNET) == 0;
  if (target >= 0) ::close(target);
}

EnterNetns::~EnterNetns() {
  if (ok_ && setns(original_, CLONE_NEWNET) != 0) std::abort();  // never run on in a test namespace
  if (original_ >= 0) ::close(original_);
}

std::string surrogated_bin() { return SG_SURROGATED_BIN; }
std::string surrogatectl_bin() { return SG_SURROGATECTL_BIN; }

std::string why_no_namespaces() {
  if (geteuid() != 0) return "needs root to create network namespaces (run scripts/test as root)";
  auto r = run({"ip", "netns", "add", "sgt-probe-" + std::to_string(getpid())});
  if (r.code != 0) return "cannot create a network namespace here: " + r.err;
  run({"ip", "netns", "del", "sgt-probe-" + std::to_string(getpid())});
  return "";
}

RunResult run(const std::vector<std::string>& argv, const RunOptions& opts) {
  int out_pipe[2], err_pipe[2], in_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0 || pipe2(in_pipe, O_CLOEXEC) != 0) {
    return {-1, "", "pipe failed"};
  }
  std::vector<std::string> full;
  if (!opts.netns.empty()) full = {"nsenter", "--net=/run/netns/" + opts.netns, "--"};
  full.insert(full.end(), argv.begin(), argv.end());
  pid_t pid = fork();
  if (pid == 0) {
    dup2(in_pipe[0], 0);
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    for (const auto& [k, v] : opts.env) setenv(k.c_str(), v.c_str(), 1);
    if (opts.uid != 0) {
      if (setgid(65534) != 0 || setuid(opts.uid) != 0) _exit(126);
    }
    std::vector<char*> args;
    args.reserve(full.size() + 1);
    for (auto& a : full) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(out_pipe[1]);
  close(err_pipe[1]);
  close(in_pipe[0]);
  if (!opts.stdin_data.empty()) {
    (void)!write(in_pipe[1], opts.stdin_data.data(), opts.stdin_data.size());
  }
  close(in_pipe[1]);
  RunResult r;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  char buf[4096];
  while (open_fds > 0) {
    if (poll(fds, 2, -1) < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      } else {
        (i == 0 ? r.out : r.err).append(buf, static_cast<size_t>(n));
      }
    }
  }
  int status = 0;
  waitpid(pid, &status, 0);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

Netns::Netns(std::string name) : name_(std::move(name)) {
  run({"ip", "netns", "del", name_});
  run({"ip", "netns", "add", name_});
  run({"ip", "-n", name_, "link", "set", "lo", "up"});
}

Netns::~Netns() { run({"ip", "netns", "del", name_}); }

RunResult Netns::exec(const std::vector<std::string>& argv) const {
  RunOptions o;
  o.netns = name_;
  return run(argv, o);
}

bool netns_exists(const std::string& name) {
  struct stat st {};
  return stat(("/run/netns/" + name).c_str(), &st) == 0;
}

void remove_netns_with_prefix(const std::string& prefix) {
  DIR* d = opendir("/run/netns");
  if (d == nullptr) return;
  std::vector<std::string> names;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n.rfind(prefix, 0) == 0) names.push_back(n);
  }
  closedir(d);
  for (const auto& n : names) run({"ip", "netns", "del", n});
}

std::string make_temp_dir() {
  char tmpl[] = "/tmp/sg-itest-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return "/tmp";
  chmod(tmpl, 0755);
  return tmpl;
}

void remove_tree(const std::string& dir) {
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& content) {
  std::ofstream out(path);
  out << content;
}

DaemonProcess::DaemonProcess(std::string netns, std::string config, std::string socket, std::string log)
    : netns_(std::move(netns)), config_(std::move(config)), socket_(std::move(socket)), log_(std::move(log)) {}

DaemonProcess::~DaemonProcess() { stop(); }

bool DaemonProcess::start() {
  pid_ = fork();
  if (pid_ == 0) {
    int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    std::string net = "--net=/run/netns/" + netns_;
    std::string bin = surrogated_bin();
    execlp("nsenter", "nsenter", net.c_str(), "--", bin.c_str(), "-c", config_.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    auto r = run({surrogatectl_bin(), "--socket", socket_, "status"});
    if (r.code == 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

void DaemonProcess::stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  int status = 0;
  for (int i = 0; i < 200; ++i) {
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

void DaemonProcess::kill9() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

}  // namespace sg::test
