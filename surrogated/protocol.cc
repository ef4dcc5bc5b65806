#include "surrogated/protocol.h"

#include <openssl/rand.h>

namespace sg::proto {

std::string signing_payload(const std::string& op, const nlohmann::json& args, const std::string& key_pem,
                            std::int64_t ts, const std::string& nonce) {
  nlohmann::json body = {{"op", op}, {"args", args}, {"key", key_pem}, {"ts", ts}, {"nonce", nonce}};
  return "surrogated-request-v1\n" + body.dump();
}

Result<std::string> encode_request(const std::string& op, const nlohmann::json& args, const certs::KeyPair* key,
                                   std::int64_t now) {
  nlohmann::json req = {{"op", op}, {"args", args}};
  if (key != nullptr) {
    unsigned char raw[16];
    if (RAND_bytes(raw, sizeof raw) != 1) return make_error("no randomness for a request nonce");
    std::string nonce;
    for (unsigned char c : raw) {
      nonce += "0123456789abcdef"[c >> 4U];
      nonce += "0123456789abcdef"[c & 0xfU];
    }
    std::string pem = key->public_key().pem();
    auto sig = key->sign(signing_payload(op, args, pem, now, nonce));
    if (!sig) return sig.error();
    req["auth"] = {{"key", pem}, {"ts", now}, {"nonce", nonce}, {"sig", certs::base64_encode(*sig)}};
  }
  return req.dump() + "\n";
}

Result<Request> decode_request(std::string_view text) {
  if (text.size() > kMaxMessageBytes) {
    return make_error("request is larger than " + std::to_string(kMaxMessageBytes) + " bytes");
  }
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) return make_error("request is not valid JSON");
  if (!j.is_object()) return make_error("request must be a JSON object");
  Request r;
  auto op = j.find("op");
  if (op == j.end() || !op->is_string()) return make_error("request has no \"op\" string");
  r.op = op->get<std::string>();
  if (auto a = j.find("args"); a != j.end()) {
    if (!a->is_object()) return make_error("\"args\" must be a JSON object");
    r.args = *a;
  }
  if (auto a = j.find("auth"); a != j.end()) {
    if (!a->is_object()) return make_error("\"auth\" must be a JSON object");
    auto key = a->find("key");
    auto ts = a->find("ts");
    auto nonce = a->find("nonce");
    auto sig = a->find("sig");
    if (key == a->end() || !key->is_string() || ts == a->end() || !ts->is_number_integer() || nonce == a->end() ||
        !nonce->is_string() || sig == a->end() || !sig->is_string()) {
      return make_error("\"auth\" needs string key, integer ts, string nonce and string sig");
    }
    r.key_pem = key->get<std::string>();
    r.ts = ts->get<std::int64_t>();
    r.nonce = nonce->get<std::string>();
    r.sig_b64 = sig->get<std::string>();
    if (r.nonce.size() < 16 || r.nonce.size() > 64) return make_error("auth nonce must be 16 to 64 characters");
  }
  return r;
}

bool ReplayGuard::seen_or_record(const std::string& nonce, std::int64_t ts, std::int64_t now) {
  for (auto it = seen_.begin(); it != seen_.end();) {
    if (it->second < now - 2 * kMaxClockSkew) {
      it = seen_.erase(it);
    } else {
      ++it;
    }
  }
  return !seen_.emplace(nonce, ts).second;
}

Result<certs::PublicKey> verify_request(const Request& req, std::int64_t now, ReplayGuard& guard) {
  if (!req.key_pem) return make_error("this operation needs a signed request; pass --key FILE");
  auto key = certs::PublicKey::from_pem(*req.key_pem);
  if (!key) return with_context("request key", key.error());
  if (req.ts < now - kMaxClockSkew || req.ts > now + kMaxClockSkew) {
    return make_error("request timestamp is more than " + std::to_string(kMaxClockSkew) +
                      " s away from the host's clock; check the client's clock");
  }
  auto sig = certs::base64_decode(req.sig_b64);
  if (!sig) return make_error("request signature is not valid base64");
  if (auto st = key->verify(signing_payload(req.op, req.args, *req.key_pem, req.ts, req.nonce), *sig); !st) {
    return make_error("request signature does not verify against its key");
  }
  if (guard.seen_or_record(req.nonce, req.ts, now)) return make_error("request was already used (replay refused)");
  return key;
}

nlohmann::json ok_response(nlohmann::json result) { return {{"ok", true}, {"result", std::move(result)}}; }

nlohmann::json error_response(const std::string& code, const std::string& message) {
  return {{"ok", false}, {"code", code}, {"error", message}};
}

}  // namespace sg::proto
