// Tier 2: the HTTPS API over real TLS with client certificates, against a
// real daemon in a network namespace: the client operations through curl
// and through surrogatectl --remote, and every refusal with its status.
#include <sstream>
#include <thread>

#include "tests/integration/api/api_fixture.h"

namespace sg::test {
namespace {

TEST_F(ApiTest, AllocateListShowReleaseWithCurl) {
  start();
  auto a = curl("alice", "POST", "/v1/vms",
                {"-H", "Content-Type: application/json", "-d",
                 R"({"title":"api test","contact":"alice@example.org","lifetime":"30m"})"});
  ASSERT_EQ(a.status, 201) << a.body << a.err;
  std::string vm = a.json.value("name", "");
  ASSERT_FALSE(vm.empty());
  EXPECT_EQ(a.json.value("owner", ""), client_fp("alice")) << "the certificate's key is the client's identity";
  EXPECT_EQ(a.json.value("title", ""), "api test");

  auto list = curl("alice", "GET", "/v1/vms");
  ASSERT_EQ(list.status, 200) << list.body;
  ASSERT_TRUE(list.json.is_array());
  ASSERT_EQ(list.json.size(), 1U);
  EXPECT_EQ(list.json[0].value("name", ""), vm);
  EXPECT_TRUE(curl("bob", "GET", "/v1/vms").json.empty()) << "bob sees only his own VMs";

  auto show = curl("alice", "GET", "/v1/vms/" + vm);
  ASSERT_EQ(show.status, 200) << show.body;
  EXPECT_EQ(show.json.value("contact", ""), "alice@example.org");

  // The owner's flows, through the API too (an empty list is an answer).
  auto flows = curl("alice", "GET", "/v1/flows?vm=" + vm + "&limit=10");
  EXPECT_EQ(flows.status, 200) << flows.body;
  EXPECT_TRUE(flows.json.is_array());

  auto rel = curl("alice", "DELETE", "/v1/vms/" + vm);
  ASSERT_EQ(rel.status, 200) << rel.body;
  EXPECT_TRUE(rel.json.value("released", false));
  EXPECT_EQ(curl("alice", "GET", "/v1/vms/" + vm).status, 404);
  // The audit names the API client as the actor.
  auto audit = topo_->ctl_json({"audit", "list"});
  ASSERT_TRUE(audit.is_array()) << audit.dump();
  EXPECT_NE(audit.dump().find("client " + client_fp("alice")), std::string::npos);
}

TEST_F(ApiTest, SurrogatectlRemoteDrivesTheClientOperations) {
  start();
  auto a = remote("carol", {"--json", "allocate", "--title", "remote", "--contact", "carol@example.org"});
  ASSERT_EQ(a.code, 0) << a.err;
  auto vm = nlohmann::json::parse(a.out).value("name", "");
  ASSERT_FALSE(vm.empty());
  auto list = remote("carol", {"list"});
  ASSERT_EQ(list.code, 0) << list.err;
  EXPECT_NE(list.out.find(vm), std::string::npos) << list.out;
  auto show = remote("carol", {"show", vm});
  ASSERT_EQ(show.code, 0) << show.err;
  EXPECT_NE(show.out.find("carol@example.org"), std::string::npos) << show.out;
  // Another client's VM is not found (exit 4), not forbidden: names cannot be probed.
  auto other = remote("alice", {"show", vm});
  EXPECT_EQ(other.code, 4) << other.out << other.err;
  EXPECT_NE(other.err.find("not_found"), std::string::npos) << other.err;
  // The owner's operations are not on the API.
  auto admin = remote("carol", {"blocks"});
  EXPECT_NE(admin.code, 0);
  auto rel = remote("carol", {"release", vm});
  ASSERT_EQ(rel.code, 0) << rel.err;
  EXPECT_NE(rel.out.find("released " + vm), std::string::npos) << rel.out;
}

TEST_F(ApiTest, RefusalsSayWhyWithTheRightStatus) {
  start();
  auto none = curl("", "GET", "/v1/vms");
  EXPECT_EQ(none.status, 401) << none.body << none.err;
  EXPECT_NE(none.json.value("error", "").find("no client certificate"), std::string::npos) << none.body;

  auto rogue = curl("mallory", "GET", "/v1/vms");
  EXPECT_EQ(rogue.status, 401) << rogue.body << rogue.err;
  EXPECT_NE(rogue.json.value("error", "").find("not issued by a CA this host accepts"), std::string::npos)
      << rogue.body;

  auto expired = curl("expired", "GET", "/v1/vms");
  EXPECT_EQ(expired.status, 401) << expired.body << expired.err;
  EXPECT_NE(expired.json.value("error", "").find("expired"), std::string::npos) << expired.body;
  // None of them got anything done.
  EXPECT_EQ(curl("mallory", "POST", "/v1/vms", {"-d", "{}"}).status, 401);
  EXPECT_EQ(curl("expired", "POST", "/v1/vms", {"-d", "{}"}).status, 401);
  EXPECT_EQ(topo_->ctl_json({"list"}).size(), 0U);

  // Another client's VM: 404 for show, release and authcerts alike.
  auto a = curl("alice", "POST", "/v1/vms", {"-d", "{}"});
  ASSERT_EQ(a.status, 201) << a.body;
  std::string vm = a.json.value("name", "");
  EXPECT_EQ(curl("bob", "GET", "/v1/vms/" + vm).status, 404);
  EXPECT_EQ(curl("bob", "DELETE", "/v1/vms/" + vm).status, 404);
  EXPECT_EQ(curl("bob", "POST", "/v1/vms/" + vm + "/authcerts", {"--data-binary", "-----BEGIN X-----"}).status, 404);
  EXPECT_EQ(curl("alice", "GET", "/v1/vms/" + vm).status, 200) << "still alice's";

  // Malformed input: 400 with a reason.
  auto bad = curl("alice", "POST", "/v1/vms", {"-d", "not json"});
  EXPECT_EQ(bad.status, 400) << bad.body;
  auto bad_life = curl("alice", "POST", "/v1/vms", {"-d", R"({"lifetime":"forever"})"});
  EXPECT_EQ(bad_life.status, 400) << bad_life.body;
  EXPECT_EQ(curl("alice", "GET", "/v1/nothing-here").status, 404);
  // An authcert that is not one: 403 forbidden (rejected), with the reason.
  auto cert = curl("alice", "POST", "/v1/vms/" + vm + "/authcerts",
                   {"--data-binary", "-----BEGIN AUTHCERT-----\nAAAA\n-----END AUTHCERT-----\n"});
  EXPECT_TRUE(cert.status == 403 || cert.status == 400) << cert.status << " " << cert.body;
}

TEST_F(ApiTest, OversizedBodyIs413) {
  start("", "max_body_kb = 8\n");
  std::string big = topo_->dir() + "/big.json";
  write_file(big, "{\"title\":\"" + std::string(20000, 'x') + "\"}");
  auto r = curl("alice", "POST", "/v1/vms", {"--data-binary", "@" + big});
  EXPECT_EQ(r.status, 413) << r.body << r.err;
  EXPECT_NE(r.json.value("error", "").find("8 KiB"), std::string::npos) << r.body;
  EXPECT_EQ(topo_->ctl_json({"list"}).size(), 0U);
}

TEST_F(ApiTest, RateLimitPerClientIs429WithRetryAfter) {
  start("", "requests_per_second = 1\nburst = 3\n");
  // Ten requests at once from alice in one curl (one connection).
  std::vector<std::string> argv = {
      "curl", "-s", "--cacert", pki_ + "/host-ca.pem", "--cert", pki_ + "/alice.pem", "--key", pki_ + "/alice.key"};
  for (int i = 0; i < 10; ++i) {
    argv.insert(argv.end(), {"-o", "/dev/null", "-w", "%{http_code}\n", std::string(kApi) + "/v1/vms"});
  }
  RunOptions o;
  o.netns = topo_->host_ns();
  auto r = run(argv, o);
  int ok = 0, limited = 0;
  std::stringstream ss(r.out);
  for (std::string line; std::getline(ss, line);) {
    if (line == "200") ++ok;
    if (line == "429") ++limited;
  }
  EXPECT_GE(ok, 3) << r.out;
  EXPECT_LE(ok, 5) << r.out;
  EXPECT_GE(limited, 5) << r.out;
  auto one = curl("alice", "GET", "/v1/vms", {"-i"});
  EXPECT_EQ(one.status, 429) << one.body;
  EXPECT_NE(one.body.find("Retry-After"), std::string::npos) << one.body;
  // Another client has its own bucket.
  EXPECT_EQ(curl("bob", "GET", "/v1/vms").status, 200);
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  EXPECT_EQ(curl("alice", "GET", "/v1/vms").status, 200) << "the bucket refills";
}

TEST_F(ApiTest, VmLimitsPerClientAndPerLevel) {
  start("", "max_vms_per_client = 1\nmax_vms_untrusted = 2\n");
  ASSERT_EQ(curl("alice", "POST", "/v1/vms", {"-d", "{}"}).status, 201);
  auto second = curl("alice", "POST", "/v1/vms", {"-d", "{}"});
  EXPECT_EQ(second.status, 429) << second.body;
  EXPECT_NE(second.json.value("error", "").find("max_vms_per_client"), std::string::npos) << second.body;
  ASSERT_EQ(curl("bob", "POST", "/v1/vms", {"-d", "{}"}).status, 201);
  auto third = curl("carol", "POST", "/v1/vms", {"-d", "{}"});
  EXPECT_EQ(third.status, 429) << third.body;
  EXPECT_NE(third.json.value("error", "").find("max_vms_untrusted"), std::string::npos) << third.body;
}

TEST_F(ApiTest, PolicyClassifiesApiClientsByIssuingCa) {
  // Clients with a certificate from the client CA are trusted; the same key
  // on the control socket (no certificate, no issuer) is not.
  std::string policy_placeholder = "[[clients.rules]]\nissuer_ca = \"{CA}\"\nlevel = \"trusted\"\n";
  // The CA exists only once the PKI is made: start, then load the policy.
  start();
  std::string ca = key_fp(pki_ + "/client-ca.pem");
  std::string policy = policy_placeholder.replace(policy_placeholder.find("{CA}"), 4, ca);
  topo_->write_policy(policy);
  ASSERT_EQ(topo_->ctl({"policy", "reload"}).code, 0) << topo_->daemon().log();
  auto a = curl("alice", "POST", "/v1/vms", {"-d", "{}"});
  ASSERT_EQ(a.status, 201) << a.body;
  EXPECT_EQ(a.json.value("trust_level", ""), "trusted") << a.body;
  // The same key through the socket: classified without an issuer.
  auto r = topo_->ctl({"--json", "allocate"}, pki_ + "/alice.key");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out).value("trust_level", ""), "untrusted") << r.out;
}

TEST_F(ApiTest, MetricsCountApiRequestsByStatus) {
  start();
  curl("alice", "GET", "/v1/vms");
  curl("", "GET", "/v1/vms");
  RunOptions o;
  o.netns = topo_->host_ns();
  auto m = run({"curl", "-s", std::string(kWeb) + "/metrics"}, o);
  EXPECT_NE(m.out.find("surrogated_api_requests_total{status=\"200\"} 1"), std::string::npos) << m.out;
  EXPECT_NE(m.out.find("surrogated_api_requests_total{status=\"401\"} 1"), std::string::npos) << m.out;
  EXPECT_NE(m.out.find("surrogated_rule_apply_seconds_count"), std::string::npos) << m.out;
  EXPECT_NE(m.out.find("surrogated_vms{trust_level=\"untrusted\"} 0"), std::string::npos) << m.out;
}

}  // namespace
}  // namespace sg::test
