// TLS reports (RFC 8460): result types from OpenSSL's verdicts, and the JSON report a day's
// outcomes make, read back and checked against the RFC's fields.
#include "outbound/tls_report.hpp"

#include <openssl/x509_vfy.h>
#include <nlohmann/json.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>

namespace stp::outbound {
namespace {

TEST(TlsReport, ResultTypesFromVerifyResults) {
  EXPECT_EQ(result_type_of(X509_V_ERR_HOSTNAME_MISMATCH), "certificate-host-mismatch");
  EXPECT_EQ(result_type_of(X509_V_ERR_CERT_HAS_EXPIRED), "certificate-expired");
  EXPECT_EQ(result_type_of(X509_V_ERR_DANE_NO_MATCH), "tlsa-invalid");
  EXPECT_EQ(result_type_of(X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY),
            "certificate-not-trusted");
  EXPECT_EQ(result_type_of(X509_V_OK), "validation-failure");
}

std::string today() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[16];
  std::strftime(text, sizeof text, "%Y-%m-%d", &tm);
  return text;
}

TEST(TlsReport, ADaysOutcomesMakeOneReportPerPolicyDomain) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("stp-tls-rpt-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  TlsReports reports(dir.string(), "relay.example.org");
  const auto lines = std::make_shared<const std::vector<std::string>>(std::vector<std::string>{
      "version: STSv1", "mode: testing", "mx: mx.example.com", "max_age: 86400"});
  TlsOutcome outcome{.policy_domain = "example.com",
                     .policy = ReportPolicy::sts,
                     .policy_strings = lines,
                     .mx_host = "mx.example.com",
                     .receiving_ip = "192.0.2.1",
                     .sending_ip = "198.51.100.1",
                     .result = std::string(kResultSuccess)};
  reports.record(outcome);
  reports.record(outcome);
  outcome.result = "certificate-host-mismatch";
  reports.record(outcome);
  outcome.policy_domain = "other.example";
  outcome.policy = ReportPolicy::no_policy_found;
  outcome.policy_strings = nullptr;
  outcome.result = "starttls-not-supported";
  reports.record(outcome);
  reports.write();

  std::ifstream in(dir / today() / "example.com.json");
  ASSERT_TRUE(in) << (dir / today() / "example.com.json");
  const auto report = nlohmann::json::parse(in);
  EXPECT_EQ(report["organization-name"], "relay.example.org");
  EXPECT_EQ(report["date-range"]["start-datetime"], today() + "T00:00:00Z");
  EXPECT_EQ(report["date-range"]["end-datetime"], today() + "T23:59:59Z");
  EXPECT_TRUE(report["report-id"].is_string());
  EXPECT_TRUE(report["contact-info"].is_string());
  ASSERT_EQ(report["policies"].size(), 1u);
  const auto& policy = report["policies"][0];
  EXPECT_EQ(policy["policy"]["policy-type"], "sts");
  EXPECT_EQ(policy["policy"]["policy-domain"], "example.com");
  EXPECT_EQ(policy["policy"]["policy-string"].size(), 4u);
  EXPECT_EQ(policy["policy"]["mx-host"][0], "mx.example.com");
  EXPECT_EQ(policy["summary"]["total-successful-session-count"], 2);
  EXPECT_EQ(policy["summary"]["total-failure-session-count"], 1);
  ASSERT_EQ(policy["failure-details"].size(), 1u);
  const auto& failure = policy["failure-details"][0];
  EXPECT_EQ(failure["result-type"], "certificate-host-mismatch");
  EXPECT_EQ(failure["sending-mta-ip"], "198.51.100.1");
  EXPECT_EQ(failure["receiving-mx-hostname"], "mx.example.com");
  EXPECT_EQ(failure["receiving-ip"], "192.0.2.1");
  EXPECT_EQ(failure["failed-session-count"], 1);

  std::ifstream other(dir / today() / "other.example.json");
  ASSERT_TRUE(other);
  const auto none = nlohmann::json::parse(other);
  EXPECT_EQ(none["policies"][0]["policy"]["policy-type"], "no-policy-found");
  EXPECT_FALSE(none["policies"][0]["policy"].contains("policy-string"));
  std::filesystem::remove_all(dir);
}

TEST(TlsReport, ADomainCountsAtMostEightPoliciesADay) {
  // A domain whose TLSA records change at every attempt: each new text is another policy,
  // and the day keeps the first eight, so its memory stays bounded.
  const auto dir =
      std::filesystem::temp_directory_path() / ("stp-tls-rpt-many-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  TlsReports reports(dir.string(), "relay.example.org");
  for (int i = 0; i < 50; ++i) {
    reports.record({.policy_domain = "example.com",
                    .policy = ReportPolicy::tlsa,
                    .policy_strings = std::make_shared<const std::vector<std::string>>(
                        std::vector<std::string>{"3 1 1 " + std::to_string(i)}),
                    .mx_host = "mx.example.com",
                    .receiving_ip = {},
                    .sending_ip = {},
                    .result = std::string(kResultSuccess)});
  }
  reports.write();
  std::ifstream in(dir / today() / "example.com.json");
  ASSERT_TRUE(in);
  EXPECT_EQ(nlohmann::json::parse(in)["policies"].size(), 8u);
  std::filesystem::remove_all(dir);
}

TEST(TlsReport, BytesThatAreNotUtf8NeverStopAReport) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("stp-tls-rpt-utf8-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  TlsReports reports(dir.string(), "relay.example.org");
  reports.record({.policy_domain = "example.com",
                  .policy = ReportPolicy::sts,
                  .policy_strings = std::make_shared<const std::vector<std::string>>(
                      std::vector<std::string>{"x-ext: \xff\xfe"}),
                  .mx_host = "mx.example.com",
                  .receiving_ip = {},
                  .sending_ip = {},
                  .result = std::string(kResultSuccess)});
  EXPECT_NO_THROW(reports.write());
  std::ifstream in(dir / today() / "example.com.json");
  ASSERT_TRUE(in);
  const auto report = nlohmann::json::parse(in);
  EXPECT_EQ(report["policies"][0]["summary"]["total-successful-session-count"], 1);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace stp::outbound
