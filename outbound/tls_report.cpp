// TLS reports (RFC 8460); see tls_report.hpp.
#include "outbound/tls_report.hpp"

#include "proxy/log.hpp"

#include <openssl/x509_vfy.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <fstream>

namespace stp::outbound {
namespace {

std::string utc_day(std::chrono::system_clock::time_point when) {
  const std::time_t t = std::chrono::system_clock::to_time_t(when);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[16];
  std::strftime(text, sizeof text, "%Y-%m-%d", &tm);
  return text;
}

// Postfix's and Exim's reports are bounded too: a domain that names a thousand MX hosts does
// not grow the report without end.
constexpr std::size_t kMaxMxHosts = 20;
constexpr std::size_t kMaxFailureRows = 200;

}  // namespace

std::string_view to_string(ReportPolicy policy) {
  switch (policy) {
    case ReportPolicy::tlsa:
      return "tlsa";
    case ReportPolicy::sts:
      return "sts";
    case ReportPolicy::no_policy_found:
      return "no-policy-found";
  }
  return "no-policy-found";
}

std::string_view result_type_of(long verify_result) {
  switch (verify_result) {
    case X509_V_OK:
      return "validation-failure";
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
      return "certificate-host-mismatch";
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return "certificate-expired";
    case X509_V_ERR_DANE_NO_MATCH:
      return "tlsa-invalid";
    default:
      return "certificate-not-trusted";
  }
}

TlsReports::TlsReports(std::string directory, std::string organization)
    : directory_(std::move(directory)), organization_(std::move(organization)) {}

void TlsReports::record(const TlsOutcome& outcome) {
  const std::string day = utc_day(std::chrono::system_clock::now());
  std::lock_guard lock(mutex_);
  auto& domains = days_[day];
  if (domains.size() >= kMaxDomains && !domains.contains(outcome.policy_domain)) {
    if (!full_logged_) {
      spdlog::warn("--relay-tls-rpt-dir: {} policy domains today; no more are counted",
                   kMaxDomains);
    }
    full_logged_ = true;
    return;
  }
  auto& policies = domains[outcome.policy_domain];
  PolicyKey policy{outcome.policy,
                   outcome.policy_strings ? *outcome.policy_strings : std::vector<std::string>{}};
  if (policies.size() >= kMaxPoliciesPerDomain && !policies.contains(policy)) return;
  auto& counts = policies[std::move(policy)];
  if (!outcome.mx_host.empty() && counts.mx_hosts.size() < kMaxMxHosts &&
      std::find(counts.mx_hosts.begin(), counts.mx_hosts.end(), outcome.mx_host) ==
          counts.mx_hosts.end()) {
    counts.mx_hosts.push_back(outcome.mx_host);
  }
  if (outcome.result == kResultSuccess) {
    ++counts.successes;
    return;
  }
  FailureKey key{outcome.result, outcome.sending_ip, outcome.mx_host, outcome.receiving_ip};
  if (counts.failures.size() >= kMaxFailureRows && !counts.failures.contains(key)) {
    std::get<1>(key).clear();  // beyond the bound, rows merge by result type and host alone
    std::get<3>(key).clear();
  }
  ++counts.failures[key];
}

void TlsReports::write() {
  std::map<std::string, Day> days;
  {
    std::lock_guard lock(mutex_);
    days = days_;
    // Past days are written one last time below and forgotten.
    const std::string today = utc_day(std::chrono::system_clock::now());
    if (std::erase_if(days_, [&](const auto& entry) { return entry.first < today; }) > 0) {
      full_logged_ = false;
    }
  }
  for (const auto& [day, domains] : days) {
    try {
      write_day(day, domains);
    } catch (const std::exception& e) {  // never out of a shutdown or a timer's loop
      spdlog::error("--relay-tls-rpt-dir: the reports of {} not written: {}", day, e.what());
    }
  }
}

void TlsReports::write_day(const std::string& day, const Day& domains) const {
  namespace fs = std::filesystem;
  const fs::path folder = fs::path(directory_) / day;
  std::error_code ec;
  fs::create_directories(folder, ec);
  if (ec) {
    spdlog::error("--relay-tls-rpt-dir: cannot make {}: {}", log::escape(folder.string(), 300),
                  ec.message());
    return;
  }
  for (const auto& [domain, policies] : domains) {
    nlohmann::ordered_json report;
    report["organization-name"] = organization_;
    report["date-range"] = {{"start-datetime", day + "T00:00:00Z"},
                            {"end-datetime", day + "T23:59:59Z"}};
    report["contact-info"] = "postmaster@" + organization_;
    report["report-id"] = day + "_" + domain + "@" + organization_;
    auto& list = report["policies"] = nlohmann::ordered_json::array();
    for (const auto& [key, counts] : policies) {
      const auto& [type, strings] = key;
      nlohmann::ordered_json policy;
      policy["policy-type"] = to_string(type);
      if (!strings.empty()) policy["policy-string"] = strings;
      policy["policy-domain"] = domain;
      if (!counts.mx_hosts.empty()) policy["mx-host"] = counts.mx_hosts;
      std::uint64_t failed = 0;
      auto details = nlohmann::ordered_json::array();
      for (const auto& [failure, sessions] : counts.failures) {
        const auto& [result, sending_ip, mx_host, receiving_ip] = failure;
        nlohmann::ordered_json row;
        row["result-type"] = result;
        if (!sending_ip.empty()) row["sending-mta-ip"] = sending_ip;
        if (!mx_host.empty()) row["receiving-mx-hostname"] = mx_host;
        if (!receiving_ip.empty()) row["receiving-ip"] = receiving_ip;
        row["failed-session-count"] = sessions;
        details.push_back(std::move(row));
        failed += sessions;
      }
      nlohmann::ordered_json entry;
      entry["policy"] = std::move(policy);
      entry["summary"] = {{"total-successful-session-count", counts.successes},
                          {"total-failure-session-count", failed}};
      if (!details.empty()) entry["failure-details"] = std::move(details);
      list.push_back(std::move(entry));
    }
    const fs::path path = folder / (domain + ".json");
    const fs::path temporary = folder / (domain + ".json.new");
    {
      std::ofstream out(temporary, std::ios::trunc);
      // Invalid UTF-8 (none should get here) is replaced rather than thrown on.
      out << report.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
      out.flush();
      if (!out) {
        spdlog::error("--relay-tls-rpt-dir: cannot write {}", log::escape(temporary.string(), 300));
        continue;
      }
    }
    fs::rename(temporary, path, ec);
    if (ec) {
      spdlog::error("--relay-tls-rpt-dir: cannot write {}: {}", log::escape(path.string(), 300),
                    ec.message());
    }
  }
}

}  // namespace stp::outbound
