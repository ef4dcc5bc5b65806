// libFuzzer target for the authcert parser and verifier: any bytes must be
// accepted or rejected with a reason, never crash, hang or leak. The first
// byte chooses the entry point: the content parser, or the whole CMS
// verification against a fixed trust anchor (the seed corpus holds an
// authcert signed under it, so the fuzzer starts from a valid signature).
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string_view>

#include "certs/authcert.h"
#include "certs/pki.h"

namespace {

const sg::certs::PkiStore& store() {
  static const sg::certs::PkiStore s = [] {
    sg::certs::PkiConfig c;
    c.ca_files = {SG_FUZZ_CA};
    c.crl_mode = sg::certs::CrlMode::when_present;
    auto loaded = sg::certs::PkiStore::load(c);
    return loaded ? std::move(*loaded) : sg::certs::PkiStore();
  }();
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  if (!bytes.empty() && bytes.front() == 's') {
    if (auto c = sg::certs::parse_authcert_content(bytes.substr(1))) (void)sg::certs::format_authcert_content(*c);
    return 0;
  }
  auto v = sg::certs::verify_authcert(bytes, store(), 1'900'000'000);
  if (!v) (void)sg::certs::reject_reason_of(v.error());
  if (auto c = sg::certs::parse_authcert_content(bytes)) (void)sg::certs::format_authcert_content(*c);
  return 0;
}
