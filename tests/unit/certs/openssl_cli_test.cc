// Interoperability with the stock `openssl` command, which is all a node
// owner needs: the lab PKI and authcert commands of docs/authcert.md are run
// here as written, and our output is checked by `openssl cms -verify`.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>

#include "certs/authcert.h"
#include "common/timeutil.h"
#include "tests/unit/certs/test_pki.h"

namespace sg::certs {
namespace {

using namespace sg::certs::testing;  // NOLINT(google-build-using-namespace)

bool have_openssl() { return std::system("openssl version >/dev/null 2>&1") == 0; }

// Runs a shell script in `dir`; returns its exit code, with its output in `log`.
int run(const TempDir& dir, const std::string& script, std::string* log = nullptr) {
  dir.write("script.sh", "set -e\n" + script);
  int rc = std::system(("cd '" + dir.path() + "' && sh ./script.sh >script.log 2>&1").c_str());
  if (log != nullptr) *log = dir.read("script.log");
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

#define SKIP_WITHOUT_OPENSSL() \
  if (!have_openssl()) GTEST_SKIP() << "the openssl command is not installed; install it (apt-get install openssl)"

// The lab commands of docs/authcert.md ("A lab PKI with openssl"), verbatim.
constexpr const char* kLabPki = R"(
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=Lab CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "nameConstraints=critical,permitted;IP:198.51.100.0/255.255.255.0" \
  -out ca.pem
cat > ca.cnf <<'END'
[ca]
default_ca = lab
[lab]
database = index.txt
crlnumber = crlnumber
default_md = sha256
default_crl_days = 7
END
: > index.txt
echo 01 > crlnumber
openssl ca -config ca.cnf -gencrl -keyfile ca.key -cert ca.pem -out crl.pem

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out node.key
openssl req -new -key node.key -subj "/CN=node-a.example" -out node.csr
cat > node.ext <<'END'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
subjectAltName = IP:198.51.100.7
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
END
openssl x509 -req -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 \
  -extfile node.ext -out node.pem
)";

TEST(OpensslCli, AuthcertMadeWithOpensslCmsSignVerifies) {
  SKIP_WITHOUT_OPENSSL();
  TempDir dir;
  std::string log;
  ASSERT_EQ(run(dir, kLabPki, &log), 0) << log;
  std::int64_t now = now_unix();
  const std::string user = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
  // Written by hand, the way docs/authcert.md shows.
  dir.write("content.txt",
            "surrogate-authcert: 1\n"
            "id: " +
                new_authcert_id() + "\n" + "user: " + user + "\n" +
                "destination: 198.51.100.7\n"
                "protocols: tcp\n"
                "ports: 443\n"
                "not-before: " +
                format_utc(now - 60) + "\n" + "not-after: " + format_utc(now + 86400) + "\n");
  ASSERT_EQ(run(dir,
                "openssl cms -sign -binary -nodetach -outform PEM -in content.txt -signer node.pem -inkey node.key "
                "-out authcert.pem\n"
                "openssl cms -sign -binary -nodetach -outform DER -in content.txt -signer node.pem -inkey node.key "
                "-out authcert.der\n"
                // openssl cms has no -CRLfile: CRLs go into the -CAfile bundle.
                "cat ca.pem crl.pem > ca-and-crl.pem\n"
                "openssl cms -verify -inform PEM -in authcert.pem -CAfile ca-and-crl.pem -binary -x509_strict "
                "-crl_check_all -out checked.txt\n",
                &log),
            0)
      << log;
  EXPECT_EQ(dir.read("checked.txt"), dir.read("content.txt"));

  PkiConfig config;
  config.ca_files = {dir.file("ca.pem")};
  config.crl_files = {dir.file("crl.pem")};
  auto pki = PkiStore::load(config);
  ASSERT_TRUE(pki.ok()) << pki.error().describe();
  VerifyOptions opts;
  opts.expected_user_fingerprint = user;
  for (const char* file : {"authcert.pem", "authcert.der"}) {
    auto v = verify_authcert(dir.read(file), *pki, now, opts);
    ASSERT_TRUE(v.ok()) << file << ": " << v.error().message;
    EXPECT_EQ(v->signer_subject, "CN=node-a.example");
    EXPECT_EQ(v->content.ports.front().first, 443);
  }

  // Revoked with `openssl ca -revoke`, the CRL regenerated: the same authcert is refused.
  ASSERT_EQ(run(dir,
                "openssl ca -config ca.cnf -revoke node.pem -keyfile ca.key -cert ca.pem\n"
                "openssl ca -config ca.cnf -gencrl -keyfile ca.key -cert ca.pem -out crl.pem\n",
                &log),
            0)
      << log;
  auto reloaded = pki->reload();
  ASSERT_TRUE(reloaded.ok()) << reloaded.error().describe();
  // Checked at the time now: the regenerated CRL's lastUpdate may be a
  // second after `now` above, and a CRL is not valid before it.
  auto v = verify_authcert(dir.read("authcert.pem"), *reloaded, now_unix(), opts);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(reason(v.error()), "revoked") << v.error().message;
}

TEST(OpensslCli, SignAuthcertOutputVerifiesWithOpensslCmsVerify) {
  SKIP_WITHOUT_OPENSSL();
  TempDir dir;
  std::int64_t now = now_unix();
  auto root = make_cert("Test Root CA", ca_extensions(), nullptr, now - kDay, now + 3650 * kDay);
  auto inter = make_cert("Test Intermediate CA",
                         ca_extensions(name_constraints_config({*Prefix::parse("198.51.100.0/24")}), "0"), &root,
                         now - kDay, now + 365 * kDay);
  auto node = make_cert("node-a", node_extensions("IP:198.51.100.7"), &inter, now - kDay, now + 30 * kDay);
  auto eku_node = make_cert(
      "node-b", node_extensions("IP:198.51.100.7", "critical,digitalSignature", std::string(kAuthcertSigningEku)),
      &inter, now - kDay, now + 30 * kDay);
  AuthcertContent c;
  c.id = new_authcert_id();
  c.user_fingerprint = KeyPair::generate(KeyType::p256).value().public_key().fingerprint();
  c.destination = *Prefix::parse("198.51.100.7");
  c.not_before = now - 60;
  c.not_after = now + 3600;
  auto pem = sign_authcert(c, node.key_pem(), node.pem(), {inter.pem()});
  ASSERT_TRUE(pem.ok()) << pem.error().describe();
  auto eku_pem = sign_authcert(c, eku_node.key_pem(), eku_node.pem(), {inter.pem()});
  ASSERT_TRUE(eku_pem.ok()) << eku_pem.error().describe();
  dir.write("root.pem", root.pem());
  dir.write("authcert.pem", *pem);
  dir.write("authcert-eku.pem", *eku_pem);
  std::string log;
  ASSERT_EQ(run(dir,
                "openssl cms -verify -inform PEM -in authcert.pem -CAfile root.pem -binary -x509_strict "
                "-out content.txt\n"
                // A certificate with the authcert-signing EKU is no S/MIME certificate: -purpose any.
                "openssl cms -verify -inform PEM -in authcert-eku.pem -CAfile root.pem -binary -purpose any "
                "-out content-eku.txt\n",
                &log),
            0)
      << log;
  EXPECT_EQ(dir.read("content.txt"), format_authcert_content(c));
  EXPECT_EQ(dir.read("content-eku.txt"), format_authcert_content(c));
  // And the openssl check really checks: a tampered copy fails.
  std::string der = pem_to_der(*pem);
  auto pos = der.find("198.51.100.7");
  ASSERT_NE(pos, std::string::npos);
  der[pos + 11] = '8';
  dir.write("tampered.der", der);
  EXPECT_NE(run(dir, "openssl cms -verify -inform DER -in tampered.der -CAfile root.pem -binary -out x.txt\n"), 0);
}

}  // namespace
}  // namespace sg::certs
