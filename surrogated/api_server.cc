#include "surrogated/api_server.h"

#include <httplib.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <thread>
#include <unordered_map>

#include "certs/identity.h"
#include "common/log.h"

namespace sg {

int http_status_for(const std::string& code) {
  if (code == "bad_request") return 400;
  if (code == "unauthorized") return 401;
  if (code == "forbidden") return 403;
  if (code == "not_found") return 404;
  if (code == "too_large") return 413;
  if (code == "too_many") return 429;
  if (code == "exhausted" || code == "unavailable") return 503;
  return 500;
}

namespace {

std::string key_fingerprint(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(key, &der);
  if (len <= 0) return "";
  std::string out = "sha256:" + certs::sha256_hex(std::string_view(reinterpret_cast<char*>(der), len));
  OPENSSL_free(der);
  return out;
}

std::string key_pem(EVP_PKEY* key) {
  BIO* bio = BIO_new(BIO_s_mem());
  if (bio == nullptr) return "";
  std::string out;
  if (PEM_write_bio_PUBKEY(bio, key) == 1) {
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    out.assign(data, static_cast<std::size_t>(n));
  }
  BIO_free(bio);
  return out;
}

// Why a client certificate was refused, in words a client can act on.
std::string verify_failure(long result) {
  switch (result) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
      return "your client certificate has expired; ask the host owner's CA for a new one";
    case X509_V_ERR_CERT_NOT_YET_VALID: return "your client certificate is not valid yet (check the clocks)";
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
      return "your client certificate is not issued by a CA this host accepts for clients; get one from the "
             "host owner (docs/api.md)";
    case X509_V_ERR_INVALID_PURPOSE:
      return "your certificate is not meant for TLS client authentication (extendedKeyUsage clientAuth)";
    default: return std::string("your client certificate was refused: ") + X509_verify_cert_error_string(result);
  }
}

struct TlsIdentity {
  std::string key_pem;
  std::string fingerprint;
  std::optional<std::string> issuer_ca_fp;
};

Result<TlsIdentity> identity_of(const SSL* ssl) {
  if (ssl == nullptr) return make_error("not a TLS connection");
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr) {
    return make_error(
        "no client certificate: this API identifies clients by certificate (curl --cert FILE "
        "--key FILE; surrogatectl --remote URL --cert FILE --key FILE)");
  }
  if (long vr = SSL_get_verify_result(ssl); vr != X509_V_OK) return make_error(verify_failure(vr));
  TlsIdentity id;
  id.key_pem = key_pem(X509_get0_pubkey(cert));
  auto pub = certs::PublicKey::from_pem(id.key_pem);
  if (!pub)
    return make_error(
        "your certificate's key must be Ed25519 or ECDSA P-256 (the same kinds of keys "
        "'surrogatectl keygen' makes): " +
        pub.error().message);
  id.fingerprint = pub->fingerprint();
  // The CA that signed the client's certificate: next in the verified chain.
  if (STACK_OF(X509)* chain = SSL_get0_verified_chain(ssl); chain != nullptr && sk_X509_num(chain) >= 2) {
    id.issuer_ca_fp = key_fingerprint(X509_get0_pubkey(sk_X509_value(chain, 1)));
  }
  return id;
}

// A token bucket per client: `rate` requests a second, up to `burst` at once.
class RateLimiter {
 public:
  RateLimiter(double rate, double burst) : rate_(rate), burst_(burst) {}
  // True when the request may go on; otherwise `retry_s` says when to retry.
  bool take(const std::string& who, int& retry_s) {
    auto now = std::chrono::steady_clock::now();
    std::lock_guard lock(mu_);
    if (buckets_.size() > 100000) prune(now);
    auto [it, fresh] = buckets_.try_emplace(who, Bucket{burst_, now});
    Bucket& b = it->second;
    if (!fresh) {
      b.tokens = std::min(burst_, b.tokens + rate_ * std::chrono::duration<double>(now - b.last).count());
      b.last = now;
    }
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return true;
    }
    retry_s = std::max(1, static_cast<int>(std::ceil((1 - b.tokens) / rate_)));
    return false;
  }

 private:
  struct Bucket {
    double tokens;
    std::chrono::steady_clock::time_point last;
  };
  // Full buckets carry no state worth keeping.
  void prune(std::chrono::steady_clock::time_point now) {
    for (auto it = buckets_.begin(); it != buckets_.end();) {
      double t = it->second.tokens + rate_ * std::chrono::duration<double>(now - it->second.last).count();
      it = t >= burst_ ? buckets_.erase(it) : std::next(it);
    }
  }
  double rate_, burst_;
  std::mutex mu_;
  std::unordered_map<std::string, Bucket> buckets_;
};

void send_json(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  res.set_content(body.dump(2) + "\n", "application/json");
}

void send_error(httplib::Response& res, const std::string& code, const std::string& message) {
  send_json(res, http_status_for(code), {{"code", code}, {"error", message}});
}

// How a route turns an HTTP request into a control operation's arguments.
enum class Body : std::uint8_t { none, json, authcert };

}  // namespace

struct ApiServer::Impl {
  ApiConfig cfg;
  LoopBridge& bridge;
  ApiDispatch dispatch;
  LabeledCounter& statuses;
  RateLimiter limiter;
  std::unique_ptr<httplib::SSLServer> server;
  std::thread thread;

  Impl(ApiConfig c, LoopBridge& b, ApiDispatch d, LabeledCounter& s)
      : cfg(std::move(c)),
        bridge(b),
        dispatch(std::move(d)),
        statuses(s),
        limiter(cfg.requests_per_second, cfg.burst) {}

  // Identity, rate limit, arguments, then the operation on the event loop.
  void serve(const httplib::Request& req, httplib::Response& res, const std::string& op, nlohmann::json args, Body body,
             int ok_status = 200) {
    int retry_s = 0;
    auto id = identity_of(req.ssl);
    if (!id) {
      // Refused before any work; still limited per address so a flood of
      // bad handshakes costs no more than a flood of good ones.
      if (!limiter.take("addr " + req.remote_addr, retry_s)) {
        res.set_header("Retry-After", std::to_string(retry_s));
        return send_error(res, "too_many", "too many requests from " + req.remote_addr);
      }
      return send_error(res, "unauthorized", id.error().message);
    }
    if (!limiter.take(id->fingerprint, retry_s)) {
      res.set_header("Retry-After", std::to_string(retry_s));
      return send_error(res, "too_many",
                        "rate limit: " + std::to_string(cfg.requests_per_second) + " requests a second (burst " +
                            std::to_string(cfg.burst) + ") per client; retry in " + std::to_string(retry_s) + " s");
    }
    if (body == Body::json && !req.body.empty()) {
      auto j = nlohmann::json::parse(req.body, nullptr, false);
      if (j.is_discarded() || !j.is_object()) {
        return send_error(res, "bad_request", "the request body must be a JSON object (see docs/api.md)");
      }
      for (auto& [k, v] : j.items()) {
        if (!args.contains(k)) args[k] = v;  // the path's VM name wins over the body's
      }
    } else if (body == Body::authcert) {
      if (req.body.rfind("-----BEGIN", 0) == 0) {
        args["authcert"] = req.body;  // curl --data-binary @authcert.pem
      } else {
        auto j = nlohmann::json::parse(req.body, nullptr, false);
        if (j.is_discarded() || !j.is_object() || !j.contains("authcert")) {
          return send_error(res, "bad_request",
                            "send the authcert as PEM (curl --data-binary @FILE) or as {\"authcert\": \"PEM\"}");
        }
        args["authcert"] = j["authcert"];
      }
    }
    proto::Request r;
    r.op = op;
    r.args = std::move(args);
    Peer peer;
    peer.uid = static_cast<uid_t>(-1);
    peer.gid = static_cast<gid_t>(-1);
    peer.tls_key_pem = id->key_pem;
    peer.issuer_ca_fp = id->issuer_ca_fp;
    if (auto a = IpAddress::parse(req.remote_addr)) peer.remote = *a;
    peer.via = "api";
    auto answer = bridge.call<nlohmann::json>([d = dispatch, r, peer] { return d(r, peer); },
                                              std::chrono::seconds(cfg.request_timeout_s));
    if (!answer) {
      return send_error(res, "unavailable",
                        "the daemon did not answer within " + std::to_string(cfg.request_timeout_s) +
                            " s or is shutting down; try again shortly");
    }
    if (answer->value("ok", false)) return send_json(res, ok_status, (*answer)["result"]);
    std::string code = answer->value("code", "internal");
    if (code == "too_many") res.set_header("Retry-After", "60");
    send_error(res, code, answer->value("error", "unknown error"));
  }

  // Query parameters that are whole numbers in the control protocol.
  static Result<nlohmann::json> query_args(const httplib::Request& req, std::initializer_list<const char*> strings,
                                           std::initializer_list<const char*> ints) {
    nlohmann::json args = nlohmann::json::object();
    for (const char* k : strings) {
      if (req.has_param(k)) args[k] = req.get_param_value(k);
    }
    for (const char* k : ints) {
      if (!req.has_param(k)) continue;
      std::string v = req.get_param_value(k);
      if (v.empty() || v.size() > 9 || v.find_first_not_of("0123456789") != std::string::npos) {
        return make_error(std::string("query parameter '") + k + "' must be a whole number");
      }
      args[k] = std::stoi(v);
    }
    return args;
  }

  void routes() {
    auto& s = *server;
    const std::string vm = R"(/v1/vms/([A-Za-z0-9_.-]{1,64}))";
    s.Get("/v1/status", [this](const auto& req, auto& res) { serve(req, res, "status", {}, Body::none); });
    s.Get("/v1/policy", [this](const auto& req, auto& res) { serve(req, res, "policy-show", {}, Body::none); });
    s.Post("/v1/vms", [this](const auto& req, auto& res) {
      serve(req, res, "allocate", nlohmann::json::object(), Body::json, 201);
    });
    s.Get("/v1/vms", [this](const auto& req, auto& res) { serve(req, res, "list", {{"mine", true}}, Body::none); });
    s.Get(vm, [this](const auto& req, auto& res) { serve(req, res, "show", {{"vm", req.matches[1]}}, Body::none); });
    s.Delete(vm, [this](const auto& req, auto& res) {
      serve(req, res, "release", {{"vm", req.matches[1]}}, Body::none);
    });
    s.Post(vm + "/authcerts", [this](const auto& req, auto& res) {
      serve(req, res, "authcert-submit", {{"vm", req.matches[1]}}, Body::authcert, 201);
    });
    s.Get(vm + "/authcerts", [this](const auto& req, auto& res) {
      serve(req, res, "authcert-list", {{"vm", req.matches[1]}}, Body::none);
    });
    s.Get("/v1/authcerts", [this](const auto& req, auto& res) {
      serve(req, res, "authcert-list", nlohmann::json::object(), Body::none);
    });
    s.Delete(R"(/v1/authcerts/([A-Za-z0-9_.:-]{1,128}))", [this](const auto& req, auto& res) {
      serve(req, res, "authcert-revoke", {{"id", req.matches[1]}}, Body::none);
    });
    s.Get(vm + "/rules", [this](const auto& req, auto& res) {
      serve(req, res, "rules-show", {{"vm", req.matches[1]}}, Body::none);
    });
    s.Get(vm + "/holes", [this](const auto& req, auto& res) {
      serve(req, res, "hole-list", {{"vm", req.matches[1]}}, Body::none);
    });
    s.Post(vm + "/tunnel", [this](const auto& req, auto& res) {
      serve(req, res, "tunnel-up", {{"vm", req.matches[1]}}, Body::json, 201);
    });
    s.Get(vm + "/tunnel", [this](const auto& req, auto& res) {
      serve(req, res, "tunnel-status", {{"vm", req.matches[1]}}, Body::none);
    });
    s.Delete(vm + "/tunnel", [this](const auto& req, auto& res) {
      serve(req, res, "tunnel-down", {{"vm", req.matches[1]}}, Body::none);
    });
    s.Get(vm + "/drops", [this](const auto& req, auto& res) {
      auto args = query_args(req, {"since", "until", "reason", "to"}, {"limit"});
      if (!args) return send_error(res, "bad_request", args.error().message);
      (*args)["vm"] = req.matches[1];
      serve(req, res, "drops", *args, Body::none);
    });
    s.Get("/v1/flows", [this](const auto& req, auto& res) {
      auto args = query_args(req, {"vm", "to", "since", "until"}, {"port", "limit"});
      if (!args) return send_error(res, "bad_request", args.error().message);
      serve(req, res, "flows", *args, Body::none);
    });
    s.Get("/v1/pki/(ca|crl)", [this](const auto& req, auto& res) {
      serve(req, res, "pki", {{"what", req.matches[1]}}, Body::none);
    });
  }
};

Result<std::vector<std::string>> ca_key_fingerprints(const std::string& pem_file) {
  FILE* f = std::fopen(pem_file.c_str(), "r");
  if (f == nullptr) return make_sys_error("cannot read " + pem_file);
  std::vector<std::string> out;
  while (X509* cert = PEM_read_X509(f, nullptr, nullptr, nullptr)) {
    out.push_back(key_fingerprint(X509_get0_pubkey(cert)));
    X509_free(cert);
  }
  ERR_clear_error();  // the end of the file reads as an error
  (void)std::fclose(f);
  if (out.empty()) return make_error(pem_file + " holds no PEM certificate");
  return out;
}

ApiServer::ApiServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ApiServer::~ApiServer() { stop(); }

void ApiServer::stop() {
  if (!impl_ || !impl_->server) return;
  impl_->server->stop();
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_->server.reset();
}

Result<std::unique_ptr<ApiServer>> ApiServer::start(const ApiConfig& cfg, LoopBridge& bridge, ApiDispatch dispatch,
                                                    LabeledCounter& statuses) {
  auto where = parse_listen(cfg.listen);
  if (!where) return with_context("[api] listen", where.error());
  std::vector<std::string> ca_fps;
  for (const auto& f : cfg.client_ca_files) {
    auto fps = ca_key_fingerprints(f);
    if (!fps) return with_context("[api] client_ca_files", fps.error());
    ca_fps.insert(ca_fps.end(), fps->begin(), fps->end());
  }
  auto impl = std::make_unique<Impl>(cfg, bridge, std::move(dispatch), statuses);
  std::string tls_error;
  impl->server = std::make_unique<httplib::SSLServer>([&](SSL_CTX& ctx) {
    auto fail = [&](const std::string& what) {
      tls_error = what + ": " + certs::openssl_error();
      return false;
    };
    SSL_CTX_set_min_proto_version(&ctx, TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(&ctx, cfg.cert.c_str()) != 1) {
      return fail("cannot load the server certificate [api] cert = " + cfg.cert);
    }
    if (SSL_CTX_use_PrivateKey_file(&ctx, cfg.key.c_str(), SSL_FILETYPE_PEM) != 1) {
      return fail("cannot load the server key [api] key = " + cfg.key);
    }
    if (SSL_CTX_check_private_key(&ctx) != 1) return fail("[api] key does not belong to [api] cert");
    for (const auto& f : cfg.client_ca_files) {
      if (SSL_CTX_load_verify_locations(&ctx, f.c_str(), nullptr) != 1) return fail("cannot load client CA " + f);
    }
    // Ask every client for a certificate but finish the handshake even when
    // it is missing or invalid: the request is then refused with a 401 that
    // says why (nginx's "optional_no_ca" pattern). identity_of() checks the
    // verification result before any operation runs.
    SSL_CTX_set_verify(&ctx, SSL_VERIFY_PEER, [](int, X509_STORE_CTX*) { return 1; });
    SSL_CTX_set_verify_depth(&ctx, 5);
    static const unsigned char kSid[] = "surrogated-api";
    SSL_CTX_set_session_id_context(&ctx, kSid, sizeof kSid - 1);
    return true;
  });
  if (!impl->server->is_valid()) return make_error("HTTPS API: " + tls_error);
  auto& s = *impl->server;
  int threads = cfg.threads;
  s.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<std::size_t>(threads)); };
  s.set_read_timeout(cfg.io_timeout_s, 0);
  s.set_write_timeout(cfg.io_timeout_s, 0);
  s.set_keep_alive_timeout(cfg.io_timeout_s);
  s.set_keep_alive_max_count(1000);
  s.set_payload_max_length(static_cast<std::size_t>(cfg.max_body_kb) * 1024);
  s.set_logger(
      [&statuses](const httplib::Request&, const httplib::Response& res) { statuses.add(std::to_string(res.status)); });
  int max_kb = cfg.max_body_kb;
  s.set_error_handler([max_kb](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 413) {
      send_error(res, "too_large", "request body larger than " + std::to_string(max_kb) + " KiB ([api] max_body_kb)");
      res.status = 413;
    } else if (res.status == 404) {
      send_json(res, 404, {{"code", "not_found"}, {"error", "no such route; see docs/api.md"}});
    } else if (res.status == 405) {
      send_json(res, 405, {{"code", "bad_request"}, {"error", "method not allowed on this route; see docs/api.md"}});
    } else {
      int st = res.status;
      send_json(res, st, {{"code", st >= 500 ? "internal" : "bad_request"}, {"error", "HTTP " + std::to_string(st)}});
    }
  });
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    send_error(res, "internal", "internal error; the daemon's log says more");
  });
  impl->routes();
  if (!s.bind_to_port(where->first, where->second)) {
    return make_sys_error("HTTPS API: cannot listen on " + cfg.listen + " (in use? wrong address?)");
  }
  impl->thread = std::thread([srv = impl->server.get()] { srv->listen_after_bind(); });
  std::string fps;
  for (const auto& fp : ca_fps) fps += (fps.empty() ? "" : ", ") + fp;
  log::notice("HTTPS API on " + cfg.listen + "; client certificates accepted from CA key(s) " + fps);
  return std::unique_ptr<ApiServer>(new ApiServer(std::move(impl)));
}

}  // namespace sg
