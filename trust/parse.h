// Parsing and validating the trust-policy file (docs/trust-policy.md).
// Every problem is reported, not just the first, each with its position and
// what to write instead; a policy with any problem is rejected as a whole so
// the running policy stays in force.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "trust/policy.h"

namespace sg::trust {

struct Diagnostic {
  std::string file;
  int line = 0;  // 1-based; 0 when the problem has no single place
  int column = 0;
  std::string message;  // what is wrong
  std::string hint;     // what to write instead

  // "trust-policy.toml:12:3: unknown key 'tpc' in [levels.semi-trusted]; did you mean 'tcp'?"
  [[nodiscard]] std::string to_string() const;
};

struct ParseOutcome {
  std::optional<Policy> policy;         // set only when diagnostics is empty
  std::vector<Diagnostic> diagnostics;  // sorted by position

  [[nodiscard]] bool ok() const { return policy.has_value(); }
};

// Files larger than this are refused before parsing: a policy is hand-written.
inline constexpr std::size_t kMaxPolicyBytes = 1 << 20;

// Parses and validates; `filename` is used in diagnostics and kept in the policy.
ParseOutcome parse_policy_detailed(std::string_view toml_text, const std::string& filename);
// The same, with every diagnostic joined by '\n' into the error message.
Result<Policy> parse_policy(std::string_view toml_text, const std::string& filename);
// Reads `path` and parses it. A missing file is an error, not the defaults:
// the owner who points the daemon at a file means that file.
Result<Policy> load_policy_file(const std::string& path);

}  // namespace sg::trust
