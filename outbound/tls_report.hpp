// TLS reporting (RFC 8460) for delivery by MX: the result type of each connection made under a
// policy (DANE's TLSA records, MTA-STS, none found), counted per policy domain and UTC day, and
// written as the RFC's JSON report to DIR/<day>/<policy domain>.json (--relay-tls-rpt-dir).
// Sending the reports to the domains' rua addresses is not done here.
//
// Trusts its callers' facts; domain and host names in them come from DNS and were checked as
// host names there. Reports are rewritten whole (a temporary file renamed over the last), so a
// reader never sees half of one.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

namespace stp::outbound {

// RFC 8460 4.4's policy-type.
enum class ReportPolicy { tlsa, sts, no_policy_found };
std::string_view to_string(ReportPolicy policy);

// RFC 8460 4.3's result type of a handshake OpenSSL judged `verify_result` (X509_V_OK when the
// chain verified but the handshake failed otherwise): certificate-host-mismatch,
// certificate-expired, certificate-not-trusted, tlsa-invalid (no TLSA record matched),
// validation-failure.
std::string_view result_type_of(long verify_result);

inline constexpr std::string_view kResultSuccess = "success";

// One connection (or one attempt that never got one) under a policy.
struct TlsOutcome {
  std::string policy_domain;  // the recipient domain
  ReportPolicy policy = ReportPolicy::no_policy_found;
  // The policy as text: MTA-STS's lines, TLSA records in presentation form; null for none.
  std::shared_ptr<const std::vector<std::string>> policy_strings;
  std::string mx_host;       // receiving-mx-hostname
  std::string receiving_ip;  // empty when no connection was made
  std::string sending_ip;    // this end's address, when connected
  std::string result;        // kResultSuccess or a failure's result type
};

class TlsReports {
 public:
  // `organization`: the reporting organization's name (--hostname).
  TlsReports(std::string directory, std::string organization);
  TlsReports(const TlsReports&) = delete;
  TlsReports& operator=(const TlsReports&) = delete;

  // From any thread.
  void record(const TlsOutcome& outcome);
  // Writes the reports of the days counted (each day's whole, so far); a day before today is
  // then forgotten. From any thread; write errors are logged.
  void write();

 private:
  // One policy as reported: its type, its text.
  using PolicyKey = std::tuple<ReportPolicy, std::vector<std::string>>;
  // result type, sending ip, mx host, receiving ip
  using FailureKey = std::tuple<std::string, std::string, std::string, std::string>;
  struct PolicyCounts {
    std::vector<std::string> mx_hosts;  // every MX host seen under it
    std::uint64_t successes = 0;
    std::map<FailureKey, std::uint64_t> failures;
  };
  // day ("2026-12-07") -> domain -> policy -> counts
  using Day = std::map<std::string, std::map<PolicyKey, PolicyCounts>>;

  void write_day(const std::string& day, const Day& domains) const;

  // Policy domains counted per day: beyond it, outcomes for other domains are not counted.
  static constexpr std::size_t kMaxDomains = 10000;
  // Policies (each with its text) per domain and day: a domain whose TLSA records or MTA-STS
  // policy change often cannot grow the day's memory without bound. Beyond it, outcomes
  // under a new policy are not counted.
  static constexpr std::size_t kMaxPoliciesPerDomain = 8;

  const std::string directory_;
  const std::string organization_;
  std::mutex mutex_;
  std::map<std::string, Day> days_;
  bool full_logged_ = false;
};

}  // namespace stp::outbound
