// The outbound relay's metrics, in the process's registry: per configured relay host (its
// "name:port" as --relay-host gives it, a low-cardinality label; never a recipient or an
// address), the connections made and how TLS went, the reasons a host was passed over,
// tryclear fallbacks, reuses, AUTH results and the relay hosts' verdicts on messages.
// Counted a few times per connection and message; each call looks its series up under the
// family's lock.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/registry.h>

#include <string>
#include <string_view>

namespace stp::metrics {

class RelayMetrics {
 public:
  explicit RelayMetrics(prometheus::Registry& registry);

  // tls: "dane" (matched DNSSEC-signed TLSA records), "verified", "encrypted" (not
  // verified), "clear".
  void connection(std::string_view relay_host, std::string_view tls);
  // reason: a short word ("connect", "greeting", "ehlo", "tls_required", "tls_failed",
  // "verify", "auth", "resolve").
  void passed_over(std::string_view relay_host, std::string_view reason);
  void tryclear(std::string_view relay_host);
  void reused(std::string_view relay_host);
  // result: "ok" or "refused" (the proxy's own credentials); "client_ok" or "client_refused"
  // (a local client's AUTH relayed).
  void auth(std::string_view relay_host, std::string_view result);
  // verdict: "accepted" (2xx), "rejected" (5xx), "tempfailed" (4xx), "lost" (no reply).
  void message(std::string_view relay_host, std::string_view verdict);
  void client_refused();
  // Routing by MX: whether the resolver validates DNSSEC (its trust anchor's keys came back
  // secure at the last check).
  void dns_validating(bool validating) { dns_validating_.Set(validating ? 1 : 0); }
  // Routing by MX, a connection's outcome under its TLS policy, in RFC 8460's words: policy
  // "tlsa", "sts", "no-policy-found"; result "success" or a result type
  // ("starttls-not-supported", "certificate-host-mismatch", "tlsa-invalid",
  // "sts-policy-fetch-error", ...). Both from fixed sets, never a domain.
  void tls_policy_result(std::string_view policy, std::string_view result);

 private:
  prometheus::Family<prometheus::Counter>& connections_;
  prometheus::Family<prometheus::Counter>& passed_over_;
  prometheus::Family<prometheus::Counter>& tryclear_;
  prometheus::Family<prometheus::Counter>& reuses_;
  prometheus::Family<prometheus::Counter>& auth_;
  prometheus::Family<prometheus::Counter>& messages_;
  prometheus::Family<prometheus::Counter>& tls_policy_results_;
  prometheus::Counter& clients_refused_;
  prometheus::Gauge& dns_validating_;
};

}  // namespace stp::metrics
