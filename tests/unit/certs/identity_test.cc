#include "certs/identity.h"

#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <vector>

namespace sg::certs {
namespace {

class KeyTypes : public ::testing::TestWithParam<KeyType> {};

TEST_P(KeyTypes, SignVerifyAndTamper) {
  auto kp = KeyPair::generate(GetParam());
  ASSERT_TRUE(kp.ok()) << kp.error().describe();
  auto sig = kp->sign("allocate a VM");
  ASSERT_TRUE(sig.ok());
  EXPECT_TRUE(kp->public_key().verify("allocate a VM", *sig).ok());
  EXPECT_FALSE(kp->public_key().verify("allocate a VN", *sig).ok());
  std::string bad = *sig;
  bad[bad.size() / 2] ^= 0x01;
  EXPECT_FALSE(kp->public_key().verify("allocate a VM", bad).ok());
  EXPECT_FALSE(kp->public_key().verify("allocate a VM", "").ok());
  auto other = KeyPair::generate(GetParam());
  EXPECT_FALSE(other->public_key().verify("allocate a VM", *sig).ok());
}

TEST_P(KeyTypes, PemRoundTripKeepsFingerprint) {
  auto kp = KeyPair::generate(GetParam());
  ASSERT_TRUE(kp.ok());
  auto again = KeyPair::from_pem(kp->private_pem(), "mem");
  ASSERT_TRUE(again.ok()) << again.error().describe();
  EXPECT_EQ(again->public_key().fingerprint(), kp->public_key().fingerprint());
  auto pub = PublicKey::from_pem(kp->public_key().pem());
  ASSERT_TRUE(pub.ok());
  EXPECT_EQ(pub->fingerprint(), kp->public_key().fingerprint());
  EXPECT_EQ(pub->fingerprint().rfind("sha256:", 0), 0U);
  EXPECT_EQ(pub->fingerprint().size(), 7U + 64U);
}

INSTANTIATE_TEST_SUITE_P(Both, KeyTypes, ::testing::Values(KeyType::ed25519, KeyType::p256));

TEST(KeyPair, RejectsUnsupportedKeyTypes) {
  // An RSA key is refused with advice to make a supported one.
  ossl::PKey rsa_key(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(1024)));
  ASSERT_TRUE(rsa_key);
  ossl::Bio bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), rsa_key.get(), nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  std::string rsa(data, static_cast<size_t>(len));
  auto kp = KeyPair::from_pem(rsa, "rsa.pem");
  ASSERT_FALSE(kp.ok());
  EXPECT_NE(kp.error().message.find("Ed25519 or ECDSA P-256"), std::string::npos) << kp.error().message;
}

TEST(KeyPair, GarbageAndMissingFilesSayWhatToDo) {
  auto g = KeyPair::from_pem("hello", "junk.pem");
  ASSERT_FALSE(g.ok());
  EXPECT_NE(g.error().message.find("surrogatectl keygen"), std::string::npos);
  auto m = KeyPair::load_pem_file("/nonexistent/key.pem");
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.error().describe().find("/nonexistent/key.pem"), std::string::npos);
  EXPECT_FALSE(PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").ok());
  EXPECT_FALSE(PublicKey::from_pem(std::string(100000, 'A')).ok());
}

TEST(KeyPair, SaveIsPrivateAndNeverOverwrites) {
  char dir[] = "/tmp/sg-keytest-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  std::string path = std::string(dir) + "/client.key";
  auto kp = KeyPair::generate(KeyType::ed25519);
  ASSERT_TRUE(kp->save(path).ok());
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600U);
  auto again = kp->save(path);
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.error().message.find("already exists"), std::string::npos);
  auto loaded = KeyPair::load_pem_file(path);
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->public_key().fingerprint(), kp->public_key().fingerprint());
  unlink(path.c_str());
  unlink((path + ".pub").c_str());
  rmdir(dir);
}

TEST(Base64, RoundTripAndErrors) {
  for (const std::string& s : std::vector<std::string>{"", "a", "ab", "abc", "abcd", std::string("\0\xff\x10", 3)}) {
    auto d = base64_decode(base64_encode(s));
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(*d, s);
  }
  EXPECT_FALSE(base64_decode("abc").ok());
  EXPECT_FALSE(base64_decode("ab!d").ok());
}

}  // namespace
}  // namespace sg::certs
