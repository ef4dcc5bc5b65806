#include "surrogated/ctl_remote.h"

#include <httplib.h>

#include <cctype>

namespace sg {
namespace {

struct Route {
  std::string method;  // GET, POST, DELETE
  std::string path;
  httplib::Params query;
  std::string body;  // JSON, for POST
};

// Percent-encodes one path segment.
std::string encode_segment(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) != 0 || c == '-' || c == '_' || c == '.' || c == '~' || c == ':') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string arg(const nlohmann::json& args, const char* key) {
  auto it = args.find(key);
  if (it == args.end() || it->is_null()) return "";
  return it->is_string() ? it->get<std::string>() : it->dump();
}

// The REST route of a control operation (docs/api.md has the table).
Result<Route> route_of(const std::string& op, const nlohmann::json& args) {
  std::string vm = encode_segment(arg(args, "vm"));
  auto need_vm = [&]() -> Status {
    if (vm.empty()) return make_error(op + " needs a VM name");
    return {};
  };
  auto query = [&](std::initializer_list<const char*> keys) {
    httplib::Params q;
    for (const char* k : keys) {
      if (std::string v = arg(args, k); !v.empty()) q.emplace(k, v);
    }
    return q;
  };
  if (op == "status") return Route{"GET", "/v1/status", {}, ""};
  if (op == "policy-show") return Route{"GET", "/v1/policy", {}, ""};
  if (op == "allocate") return Route{"POST", "/v1/vms", {}, args.dump()};
  if (op == "list") return Route{"GET", "/v1/vms", {}, ""};
  if (op == "show" || op == "release") {
    if (auto st = need_vm(); !st) return st.error();
    return Route{op == "show" ? "GET" : "DELETE", "/v1/vms/" + vm, {}, ""};
  }
  if (op == "authcert-submit") {
    if (auto st = need_vm(); !st) return st.error();
    return Route{
        "POST", "/v1/vms/" + vm + "/authcerts", {}, nlohmann::json{{"authcert", args.value("authcert", "")}}.dump()};
  }
  if (op == "authcert-list") return Route{"GET", vm.empty() ? "/v1/authcerts" : "/v1/vms/" + vm + "/authcerts", {}, ""};
  if (op == "authcert-revoke") {
    return Route{"DELETE", "/v1/authcerts/" + encode_segment(arg(args, "id")), {}, ""};
  }
  if (op == "flows") return Route{"GET", "/v1/flows", query({"vm", "to", "port", "since", "until", "limit"}), ""};
  if (op == "drops") {
    if (auto st = need_vm(); !st) return st.error();
    return Route{"GET", "/v1/vms/" + vm + "/drops", query({"since", "until", "reason", "to", "limit"}), ""};
  }
  if (op == "rules-show" || op == "hole-list") {
    if (auto st = need_vm(); !st) return st.error();
    return Route{"GET", "/v1/vms/" + vm + (op == "rules-show" ? "/rules" : "/holes"), {}, ""};
  }
  if (op == "pki" && (arg(args, "what") == "ca" || arg(args, "what") == "crl")) {
    return Route{"GET", "/v1/pki/" + arg(args, "what"), {}, ""};
  }
  if (op == "tunnel-up" || op == "tunnel-down" || op == "tunnel-status") {
    if (auto st = need_vm(); !st) return st.error();
    std::string method = op == "tunnel-up" ? "POST" : op == "tunnel-down" ? "DELETE" : "GET";
    return Route{method, "/v1/vms/" + vm + "/tunnel", {}, op == "tunnel-up" ? args.dump() : ""};
  }
  return make_error("'" + op +
                    "' is not available over --remote (the HTTPS API serves client operations; the "
                    "host owner's operations need the control socket)");
}

}  // namespace

Result<nlohmann::json> call_remote(const RemoteOptions& opt, const std::string& op, const nlohmann::json& args) {
  auto route = route_of(op, args);
  if (!route) return route.error();
  if (opt.url.rfind("https://", 0) != 0) return make_error("--remote must be an https:// URL, e.g. https://host:8443");
  if (opt.cert.empty() || opt.key.empty()) {
    return make_error("--remote needs your client certificate and its key: --cert FILE --key FILE");
  }
  std::string base = opt.url;
  while (!base.empty() && base.back() == '/') base.pop_back();
  httplib::Client cli(base, opt.cert, opt.key);
  if (!cli.is_valid()) return make_error("cannot use --cert " + opt.cert + " / --key " + opt.key + " (readable PEM?)");
  cli.enable_server_certificate_verification(true);
  if (!opt.cacert.empty()) cli.set_ca_cert_path(opt.cacert.c_str());
  cli.set_connection_timeout(10, 0);
  cli.set_read_timeout(opt.timeout_s, 0);
  cli.set_write_timeout(30, 0);
  httplib::Headers headers = {{"Accept", "application/json"}};
  auto send = [&]() {
    if (route->method == "GET") return cli.Get(route->path, route->query, headers);
    if (route->method == "POST") return cli.Post(route->path, headers, route->body, "application/json");
    return cli.Delete(route->path, headers);
  };
  httplib::Result res = send();
  if (!res) {
    std::string why = httplib::to_string(res.error());
    if (res.error() == httplib::Error::SSLServerVerification) {
      why += " (is --cacert the CA of the host's API certificate, and does it name the address you used?)";
    }
    return make_error("cannot reach " + base + ": " + why);
  }
  auto body = nlohmann::json::parse(res->body, nullptr, false);
  if (res->status >= 200 && res->status < 300) {
    if (body.is_discarded()) return make_error(base + " sent an answer that is not JSON");
    return nlohmann::json{{"ok", true}, {"result", body}};
  }
  if (body.is_discarded() || !body.is_object()) {
    return nlohmann::json{{"ok", false}, {"code", "internal"}, {"error", "HTTP " + std::to_string(res->status)}};
  }
  return nlohmann::json{{"ok", false},
                        {"code", body.value("code", "internal")},
                        {"error", body.value("error", "HTTP " + std::to_string(res->status))},
                        {"http_status", res->status}};
}

}  // namespace sg
