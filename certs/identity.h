// Client identity: an Ed25519 or ECDSA P-256 key pair. The fingerprint of
// the public key (SHA-256 over its DER SubjectPublicKeyInfo) names the
// client everywhere: owner of a VM, subject of trust rules, flow-log rows.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/raii/openssl.h"
#include "common/result.h"

namespace sg::certs {

enum class KeyType { ed25519, p256 };

class PublicKey {
 public:
  static Result<PublicKey> from_pem(std::string_view pem);
  [[nodiscard]] std::string pem() const;
  // "sha256:" followed by 64 lowercase hex digits.
  [[nodiscard]] const std::string& fingerprint() const { return fingerprint_; }
  [[nodiscard]] Status verify(std::string_view message, std::string_view signature) const;
  [[nodiscard]] EVP_PKEY* get() const { return key_.get(); }

 private:
  explicit PublicKey(ossl::PKey key);
  std::shared_ptr<EVP_PKEY> key_;
  std::string fingerprint_;
  friend class KeyPair;
};

class KeyPair {
 public:
  static Result<KeyPair> generate(KeyType type);
  static Result<KeyPair> load_pem_file(const std::string& path);
  static Result<KeyPair> from_pem(std::string_view pem, const std::string& origin);
  // Writes the private key (mode 0600, refuses to overwrite) and "<path>.pub".
  [[nodiscard]] Status save(const std::string& path) const;
  [[nodiscard]] std::string private_pem() const;
  [[nodiscard]] const PublicKey& public_key() const { return public_; }
  [[nodiscard]] Result<std::string> sign(std::string_view message) const;

 private:
  KeyPair(ossl::PKey key, PublicKey pub) : key_(std::move(key)), public_(std::move(pub)) {}
  std::shared_ptr<EVP_PKEY> key_;
  PublicKey public_;
};

std::string base64_encode(std::string_view data);
Result<std::string> base64_decode(std::string_view text);
std::string sha256_hex(std::string_view data);
// The most recent OpenSSL error as text, for error messages.
std::string openssl_error();

}  // namespace sg::certs
