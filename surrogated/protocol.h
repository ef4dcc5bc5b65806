// Control protocol: one JSON object per connection, each way, ended by a
// newline. A request that acts for a client carries "auth": the client's
// public key, a timestamp, a nonce and a signature over all of it and the
// operation, so the daemon knows who asks without trusting the socket.
//
//   {"op":"allocate","args":{...},
//    "auth":{"key":"-----BEGIN PUBLIC KEY-----...","ts":1790000000,"nonce":"9f..","sig":"base64"}}
//
// The signed bytes are "surrogated-request-v1\n" followed by the compact
// JSON of {"args","key","nonce","op","ts"} with keys sorted.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "certs/identity.h"
#include "common/result.h"

namespace sg::proto {

constexpr std::size_t kMaxMessageBytes = 256 * 1024;
constexpr std::int64_t kMaxClockSkew = 300;  // seconds a signed request stays valid

struct Request {
  std::string op;
  nlohmann::json args = nlohmann::json::object();
  // Present when the request is signed.
  std::optional<std::string> key_pem;
  std::int64_t ts = 0;
  std::string nonce;
  std::string sig_b64;
};

std::string signing_payload(const std::string& op, const nlohmann::json& args, const std::string& key_pem,
                            std::int64_t ts, const std::string& nonce);

// Builds the wire form of a request, signed when `key` is given.
Result<std::string> encode_request(const std::string& op, const nlohmann::json& args, const certs::KeyPair* key,
                                   std::int64_t now);
Result<Request> decode_request(std::string_view text);

// Remembers the nonces of recently accepted requests so a captured request
// cannot be replayed within its validity window.
class ReplayGuard {
 public:
  bool seen_or_record(const std::string& nonce, std::int64_t ts, std::int64_t now);

 private:
  std::map<std::string, std::int64_t> seen_;
};

// Checks the signature, the clock window and the nonce; returns the signer.
Result<certs::PublicKey> verify_request(const Request& req, std::int64_t now, ReplayGuard& guard);

nlohmann::json ok_response(nlohmann::json result);
// `code` is a stable machine-readable word: bad_request, unauthorized,
// forbidden, not_found, exhausted, unavailable, internal.
nlohmann::json error_response(const std::string& code, const std::string& message);

}  // namespace sg::proto
