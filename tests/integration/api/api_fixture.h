// A namespace topology with surrogated serving the HTTPS API (and the web
// page) inside its host namespace, a throwaway PKI made by make_pki.sh, and
// curl / surrogatectl --remote run in that same namespace: the daemon's
// loopback is the host namespace's, never the machine's.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "tests/integration/topology.h"

namespace sg::test {

struct HttpResult {
  int status = 0;  // 0: no HTTP answer (TLS or connection failure)
  std::string body;
  nlohmann::json json;  // body parsed, or discarded
  std::string err;
};

class ApiTest : public ::testing::Test {
 protected:
  static constexpr const char* kApi = "https://127.0.0.1:8443";
  static constexpr const char* kWeb = "http://127.0.0.1:8080";

  // `api_extra` goes into [api] (limits); `policy` is the trust policy.
  void start(const std::string& policy = "", const std::string& api_extra = "") {
    if (auto why = why_no_namespaces(); !why.empty()) GTEST_SKIP() << why;
    topo_ = std::make_unique<Topology>("sga" + std::to_string(getpid()));
    pki_ = topo_->dir() + "/pki";
    auto r = run({SG_API_TEST_DIR "/make_pki.sh", pki_});
    ASSERT_EQ(r.code, 0) << r.err;
    topo_->extra_config =
        "[shaping]\nenabled = false\n[flowlog]\nbatch_ms = 200\n[api]\nlisten = \"127.0.0.1:8443\"\n"
        "cert = \"" +
        pki_ + "/server.pem\"\nkey = \"" + pki_ +
        "/server.key\"\n"
        "client_ca_files = [\"" +
        pki_ + "/client-ca.pem\"]\n" + api_extra + "\n[web]\nlisten = \"127.0.0.1:8080\"\ntoken_file = \"" +
        topo_->dir() + "/web-token\"\n";
    ASSERT_TRUE(topo_->start(policy)) << topo_->daemon().log();
  }
  void TearDown() override {
    if (HasFailure() && topo_) std::cerr << "---- daemon log ----\n" << topo_->daemon().log();
    topo_.reset();
  }

  // curl in the daemon's namespace as client `who` ("" for no certificate).
  HttpResult curl(const std::string& who, const std::string& method, const std::string& path,
                  const std::vector<std::string>& extra = {}) const {
    std::vector<std::string> argv = {"curl", "-s",   "-S", "--max-time",    "30", "--cacert", pki_ + "/host-ca.pem",
                                     "-X",   method, "-w", "\n%{http_code}"};
    if (!who.empty()) {
      argv.insert(argv.end(), {"--cert", pki_ + "/" + who + ".pem", "--key", pki_ + "/" + who + ".key"});
    }
    argv.insert(argv.end(), extra.begin(), extra.end());
    argv.push_back(std::string(kApi) + path);
    RunOptions o;
    o.netns = topo_->host_ns();
    auto r = run(argv, o);
    HttpResult h;
    h.err = r.err;
    auto nl = r.out.rfind('\n');
    if (nl == std::string::npos) return h;
    h.status = std::atoi(r.out.c_str() + nl + 1);
    h.body = r.out.substr(0, nl);
    h.json = nlohmann::json::parse(h.body, nullptr, false);
    return h;
  }

  // surrogatectl --remote in the daemon's namespace as client `who`.
  RunResult remote(const std::string& who, std::vector<std::string> args) const {
    std::vector<std::string> argv = {surrogatectl_bin(),
                                     "--remote",
                                     kApi,
                                     "--cert",
                                     pki_ + "/" + who + ".pem",
                                     "--key",
                                     pki_ + "/" + who + ".key",
                                     "--cacert",
                                     pki_ + "/host-ca.pem"};
    argv.insert(argv.end(), args.begin(), args.end());
    RunOptions o;
    o.netns = topo_->host_ns();
    return run(argv, o);
  }

  // "sha256:..." of a PEM certificate's public key (SubjectPublicKeyInfo).
  std::string key_fp(const std::string& pem) const {
    auto r = run({"bash", "-c",
                  "openssl x509 -in '" + pem +
                      "' -pubkey -noout | openssl pkey -pubin -outform DER | "
                      "sha256sum | cut -d' ' -f1"});
    std::string hex = r.out.substr(0, 64);
    return "sha256:" + hex;
  }
  std::string client_fp(const std::string& who) const { return key_fp(pki_ + "/" + who + ".pem"); }

  std::unique_ptr<Topology> topo_;
  std::string pki_;
};

}  // namespace sg::test
