#include "certs/identity.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <sstream>

#include "common/raii/fd.h"

namespace sg::certs {
namespace {

constexpr size_t kMaxKeyFile = 64 * 1024;

std::shared_ptr<EVP_PKEY> share(ossl::PKey key) { return {key.release(), EVP_PKEY_free}; }

Status check_key_type(EVP_PKEY* key) {
  int id = EVP_PKEY_get_base_id(key);
  if (id == EVP_PKEY_ED25519) return {};
  if (id == EVP_PKEY_EC) {
    char group[64] = {};
    size_t len = 0;
    if (EVP_PKEY_get_group_name(key, group, sizeof group, &len) == 1 && std::string(group) == "prime256v1") {
      return {};
    }
  }
  return make_error("unsupported key type; use an Ed25519 or ECDSA P-256 key (surrogatectl keygen makes one)");
}

Result<std::string> spki_der(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(key, &der);
  if (len <= 0) return make_error("cannot encode public key: " + openssl_error());
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

}  // namespace

std::string openssl_error() {
  unsigned long code = ERR_get_error();
  if (code == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(code, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

std::string sha256_hex(std::string_view data) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), md);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : md) {
    out += hex[c >> 4U];
    out += hex[c & 0xfU];
  }
  return out;
}

std::string base64_encode(std::string_view data) {
  std::string out(4 * ((data.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(data.data()), static_cast<int>(data.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

Result<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0 || text.size() > 1024 * 1024) return make_error("malformed base64 (bad length)");
  std::string out(3 * text.size() / 4 + 1, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(text.data()), static_cast<int>(text.size()));
  if (n < 0) return make_error("malformed base64");
  size_t pad = 0;
  if (!text.empty() && text.back() == '=') ++pad;
  if (text.size() > 1 && text[text.size() - 2] == '=') ++pad;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

PublicKey::PublicKey(ossl::PKey key) : key_(share(std::move(key))) {
  auto der = spki_der(key_.get());
  fingerprint_ = "sha256:" + (der ? sha256_hex(*der) : std::string("invalid"));
}

Result<PublicKey> PublicKey::from_pem(std::string_view pem) {
  if (pem.size() > kMaxKeyFile) return make_error("public key is too large");
  ossl::Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  ossl::PKey key(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  if (!key) {
    ERR_clear_error();
    return make_error("not a PEM public key (expected '-----BEGIN PUBLIC KEY-----')");
  }
  if (auto st = check_key_type(key.get()); !st) return st.error();
  return PublicKey(std::move(key));
}

std::string PublicKey::pem() const {
  ossl::Bio bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PUBKEY(bio.get(), key_.get());
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return {data, static_cast<size_t>(len)};
}

Status PublicKey::verify(std::string_view message, std::string_view signature) const {
  ossl::MdCtx ctx(EVP_MD_CTX_new());
  const EVP_MD* md = EVP_PKEY_get_base_id(key_.get()) == EVP_PKEY_ED25519 ? nullptr : EVP_sha256();
  if (EVP_DigestVerifyInit(ctx.get(), nullptr, md, nullptr, key_.get()) != 1) {
    return make_error("cannot set up signature check: " + openssl_error());
  }
  int rc = EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
                            reinterpret_cast<const unsigned char*>(message.data()), message.size());
  ERR_clear_error();
  if (rc != 1) return make_error("signature does not match the public key");
  return {};
}

Result<KeyPair> KeyPair::generate(KeyType type) {
  ossl::PKey key(type == KeyType::ed25519 ? EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519")
                                          : EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!key) return make_error("key generation failed: " + openssl_error());
  auto der = spki_der(key.get());
  if (!der) return der.error();
  const auto* p = reinterpret_cast<const unsigned char*>(der->data());
  ossl::PKey pub(d2i_PUBKEY(nullptr, &p, static_cast<long>(der->size())));
  return KeyPair(std::move(key), PublicKey(std::move(pub)));
}

Result<KeyPair> KeyPair::from_pem(std::string_view pem, const std::string& origin) {
  if (pem.size() > kMaxKeyFile) return make_error(origin + ": key file is too large to be a private key");
  ossl::Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  ossl::PKey key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) {
    ERR_clear_error();
    return make_error(origin +
                      ": not a PEM private key (expected '-----BEGIN PRIVATE KEY-----'; "
                      "create one with 'surrogatectl keygen FILE')");
  }
  if (auto st = check_key_type(key.get()); !st) return with_context(origin, st.error());
  auto der = spki_der(key.get());
  if (!der) return der.error();
  const auto* p = reinterpret_cast<const unsigned char*>(der->data());
  ossl::PKey pub(d2i_PUBKEY(nullptr, &p, static_cast<long>(der->size())));
  return KeyPair(std::move(key), PublicKey(std::move(pub)));
}

Result<KeyPair> KeyPair::load_pem_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_sys_error("cannot read key file " + path + " (check the path and its permissions)");
  std::ostringstream ss;
  ss << in.rdbuf();
  return from_pem(ss.str(), path);
}

std::string KeyPair::private_pem() const {
  ossl::Bio bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), key_.get(), nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return {data, static_cast<size_t>(len)};
}

Status KeyPair::save(const std::string& path) const {
  auto write_file = [](const std::string& p, const std::string& content, mode_t mode) -> Status {
    Fd fd(::open(p.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
    if (!fd.valid()) {
      if (errno == EEXIST) return make_error(p + " already exists; choose another file name or remove it first");
      return make_sys_error("cannot create " + p);
    }
    if (::write(fd.get(), content.data(), content.size()) != static_cast<ssize_t>(content.size())) {
      return make_sys_error("cannot write " + p);
    }
    return {};
  };
  if (auto st = write_file(path, private_pem(), 0600); !st) return st;
  return write_file(path + ".pub", public_.pem(), 0644);
}

Result<std::string> KeyPair::sign(std::string_view message) const {
  ossl::MdCtx ctx(EVP_MD_CTX_new());
  const EVP_MD* md = EVP_PKEY_get_base_id(key_.get()) == EVP_PKEY_ED25519 ? nullptr : EVP_sha256();
  if (EVP_DigestSignInit(ctx.get(), nullptr, md, nullptr, key_.get()) != 1) {
    return make_error("cannot set up signing: " + openssl_error());
  }
  size_t len = 0;
  if (EVP_DigestSign(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(message.data()),
                     message.size()) != 1) {
    return make_error("signing failed: " + openssl_error());
  }
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                     reinterpret_cast<const unsigned char*>(message.data()), message.size()) != 1) {
    return make_error("signing failed: " + openssl_error());
  }
  sig.resize(len);
  return sig;
}

}  // namespace sg::certs
