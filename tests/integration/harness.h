// Test harness for tier-2 tests: private network namespaces, a real
// surrogated process inside one, and surrogatectl runs against it. Every
// resource is named after the test process's PID and removed in TearDown,
// even when the test fails.
#pragma once

#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

namespace sg::test {

// Empty when this process may create network namespaces; else the reason.
std::string why_no_namespaces();

struct RunResult {
  int code = -1;
  std::string out;
  std::string err;
};

struct RunOptions {
  std::map<std::string, std::string> env;  // added to the environment
  uid_t uid = 0;                           // run as this user when not 0
  std::string netns;                       // run inside this named netns
  std::string stdin_data;
};

RunResult run(const std::vector<std::string>& argv, const RunOptions& opts = {});
// run(), or a std::runtime_error naming the command when it exits non-zero
// (for benchmarks and setup steps that cannot go on without it).
RunResult must(const std::vector<std::string>& argv, const std::string& netns = "");

// Moves the calling thread into a named network namespace for its lifetime
// (a netlink socket opened meanwhile stays there) and back at the end; it
// aborts rather than let the thread run on in the wrong namespace.
class EnterNetns {
 public:
  explicit EnterNetns(const std::string& name);
  ~EnterNetns();
  EnterNetns(const EnterNetns&) = delete;
  EnterNetns& operator=(const EnterNetns&) = delete;
  [[nodiscard]] bool ok() const { return ok_; }

 private:
  int original_ = -1;
  bool ok_ = false;
};

// A named network namespace (ip netns add/del) with lo up.
class Netns {
 public:
  explicit Netns(std::string name);
  ~Netns();
  Netns(const Netns&) = delete;
  Netns& operator=(const Netns&) = delete;
  [[nodiscard]] const std::string& name() const { return name_; }
  // Runs a command inside the namespace and returns its result.
  RunResult exec(const std::vector<std::string>& argv) const;

 private:
  std::string name_;
};

// Removes every named netns whose name starts with prefix.
void remove_netns_with_prefix(const std::string& prefix);
bool netns_exists(const std::string& name);

std::string make_temp_dir();
void remove_tree(const std::string& dir);
std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& content);

// A surrogated process in a network namespace.
class DaemonProcess {
 public:
  DaemonProcess(std::string netns, std::string config, std::string socket, std::string log);
  ~DaemonProcess();
  // Starts and waits until the control socket answers; false on failure.
  bool start();
  void stop();   // SIGTERM, then wait
  void kill9();  // crash it
  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] std::string log() const { return read_file(log_); }

 private:
  std::string netns_, config_, socket_, log_;
  pid_t pid_ = -1;
};

// Paths of the built binaries (set by CMake).
std::string surrogated_bin();
std::string surrogatectl_bin();

}  // namespace sg::test
