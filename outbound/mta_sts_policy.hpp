// MTA-STS (RFC 8461) as text: the _mta-sts TXT record ("v=STSv1; id=..."), the policy file
// served at https://mta-sts.<domain>/.well-known/mta-sts.txt, and the policy's decisions: which
// MX hosts it names, and how long it is kept. Pure functions over bytes.
//
// Trusts nothing: both texts come from the network (the TXT record from DNS, the policy from
// a web server the domain names); anything malformed is nullopt, with why in `error`.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace stp::outbound {

enum class StsMode { enforce, testing, none };
std::string_view to_string(StsMode mode);

struct StsPolicy {
  StsMode mode = StsMode::none;
  std::chrono::seconds max_age{0};
  // "mx:" patterns, lower case, without a trailing dot: "mail.example.com" or "*.example.com"
  // (one left-most label); at most kMaxStsMxPatterns.
  std::vector<std::string> mx;
  // The policy's lines as received (for TLS-RPT's policy-string), CR and LF removed; only the
  // first kMaxStsReportedBytes of them are kept (a real policy is a few hundred bytes).
  std::vector<std::string> lines;
};

// The policy as --relay-mta-sts-cache keeps it: what decides delivery, whole (version, mode,
// every mx pattern, max_age), however long the lines it came in were; parse_sts_policy reads
// it back to the same policy.
std::string sts_policy_file(const StsPolicy& policy);

// RFC 8461 3.2; the policy file is at most this long (its 3.3: 64 KiB).
constexpr std::size_t kMaxStsPolicySize = 64 * 1024;
// max_age is at most a year (31557600 s); a longer one is cut to it.
constexpr std::chrono::seconds kMaxStsMaxAge{31557600};
// Bounds on what a kept policy holds, whatever the file: a policy with more mx patterns is
// refused; lines beyond the reported bytes are not kept.
constexpr std::size_t kMaxStsMxPatterns = 64;
constexpr std::size_t kMaxStsReportedBytes = 4096;

// Parses a policy file. nullopt (with `error`) when it is not one: no "version: STSv1", a mode
// other than enforce/testing/none, no or a malformed max_age, no mx with enforce or testing,
// a malformed mx pattern (or too many), a line without a colon, a control character, bytes
// that are not UTF-8 (extension values may be UTF-8, RFC 8461 3.2).
// Unknown keys are ignored (extensions); of a key given twice the first counts (mx excepted).
std::optional<StsPolicy> parse_sts_policy(std::string_view text, std::string* error = nullptr);

// Parses the TXT record of _mta-sts.<domain> (its strings joined): "v=STSv1; id=ID" with
// other fields ignored. nullopt when it is not one; the id (1 to 32 letters and digits)
// otherwise.
std::optional<std::string> parse_sts_record(std::string_view text, std::string* error = nullptr);

// Of a domain's TXT records at _mta-sts, the id when exactly one begins "v=STSv1" and it is
// valid (RFC 8461 3.1); nullopt (with `error`) otherwise.
std::optional<std::string> sts_record_id(const std::vector<std::string>& records,
                                         std::string* error = nullptr);

// Whether MX host `host` (lower case, no trailing dot) matches one of `policy.mx` (RFC 8461
// 4.1): equal ignoring case, or a "*." pattern whose rest equals the host minus its first label.
bool sts_mx_matches(const StsPolicy& policy, std::string_view host);

}  // namespace stp::outbound
