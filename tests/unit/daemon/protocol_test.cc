#include "surrogated/protocol.h"

#include <gtest/gtest.h>

namespace sg::proto {
namespace {

constexpr std::int64_t kNow = 1790000000;

TEST(Protocol, SignedRequestVerifiesAndNamesTheSigner) {
  auto kp = certs::KeyPair::generate(certs::KeyType::ed25519);
  auto wire = encode_request("allocate", {{"template", "small"}}, &*kp, kNow);
  ASSERT_TRUE(wire.ok());
  auto req = decode_request(*wire);
  ASSERT_TRUE(req.ok()) << req.error().message;
  ReplayGuard guard;
  auto who = verify_request(*req, kNow + 5, guard);
  ASSERT_TRUE(who.ok()) << who.error().message;
  EXPECT_EQ(who->fingerprint(), kp->public_key().fingerprint());
}

TEST(Protocol, P256RequestsVerifyToo) {
  auto kp = certs::KeyPair::generate(certs::KeyType::p256);
  auto req = decode_request(*encode_request("list", nlohmann::json::object(), &*kp, kNow));
  ReplayGuard guard;
  EXPECT_TRUE(verify_request(*req, kNow, guard).ok());
}

TEST(Protocol, ReplayIsRefused) {
  auto kp = certs::KeyPair::generate(certs::KeyType::ed25519);
  auto req = decode_request(*encode_request("release", {{"vm", "sg1"}}, &*kp, kNow));
  ReplayGuard guard;
  ASSERT_TRUE(verify_request(*req, kNow, guard).ok());
  auto again = verify_request(*req, kNow + 1, guard);
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.error().message.find("replay"), std::string::npos);
}

TEST(Protocol, TamperedArgumentsOrOpFail) {
  auto kp = certs::KeyPair::generate(certs::KeyType::ed25519);
  auto wire = nlohmann::json::parse(*encode_request("release", {{"vm", "sg1"}}, &*kp, kNow));
  ReplayGuard guard;
  auto j = wire;
  j["args"]["vm"] = "sg2";
  EXPECT_FALSE(verify_request(*decode_request(j.dump()), kNow, guard).ok());
  j = wire;
  j["op"] = "show";
  EXPECT_FALSE(verify_request(*decode_request(j.dump()), kNow, guard).ok());
  j = wire;
  j["auth"]["ts"] = kNow + 1;
  EXPECT_FALSE(verify_request(*decode_request(j.dump()), kNow, guard).ok());
}

TEST(Protocol, SomeoneElsesKeyWithMySignatureFails) {
  auto mine = certs::KeyPair::generate(certs::KeyType::ed25519);
  auto theirs = certs::KeyPair::generate(certs::KeyType::ed25519);
  auto j = nlohmann::json::parse(*encode_request("release", {{"vm", "sg1"}}, &*mine, kNow));
  j["auth"]["key"] = theirs->public_key().pem();
  ReplayGuard guard;
  auto r = verify_request(*decode_request(j.dump()), kNow, guard);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("does not verify"), std::string::npos);
}

TEST(Protocol, ClockSkewIsBounded) {
  auto kp = certs::KeyPair::generate(certs::KeyType::ed25519);
  auto req = decode_request(*encode_request("list", nlohmann::json::object(), &*kp, kNow));
  ReplayGuard guard;
  auto r = verify_request(*req, kNow + kMaxClockSkew + 1, guard);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("clock"), std::string::npos);
}

TEST(Protocol, UnsignedRequestCannotBeVerified) {
  auto req = decode_request(*encode_request("allocate", nlohmann::json::object(), nullptr, kNow));
  ASSERT_TRUE(req.ok());
  ReplayGuard guard;
  auto r = verify_request(*req, kNow, guard);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("--key"), std::string::npos);
}

TEST(Protocol, MalformedRequestsAreExplained) {
  EXPECT_NE(decode_request("{nope").error().message.find("not valid JSON"), std::string::npos);
  EXPECT_NE(decode_request("[1]").error().message.find("JSON object"), std::string::npos);
  EXPECT_NE(decode_request("{}").error().message.find("\"op\""), std::string::npos);
  EXPECT_NE(decode_request(R"({"op":"x","args":[]})").error().message.find("args"), std::string::npos);
  EXPECT_NE(decode_request(R"({"op":"x","auth":{"key":1}})").error().message.find("auth"), std::string::npos);
  EXPECT_NE(decode_request(std::string(kMaxMessageBytes + 1, ' ')).error().message.find("larger"), std::string::npos);
}

}  // namespace
}  // namespace sg::proto
