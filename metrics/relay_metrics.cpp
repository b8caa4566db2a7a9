// The outbound relay's metrics; see relay_metrics.hpp.
#include "metrics/relay_metrics.hpp"

namespace stp::metrics {
namespace {

prometheus::Family<prometheus::Counter>& family(prometheus::Registry& r, const std::string& name,
                                                const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r);
}

std::string text(std::string_view s) {
  return std::string(s);
}

}  // namespace

RelayMetrics::RelayMetrics(prometheus::Registry& r)
    : connections_(family(r, "smtp_tls_proxy_relay_connections_total",
                          "Relay host connections made, by relay host and TLS outcome")),
      passed_over_(family(r, "smtp_tls_proxy_relay_hosts_passed_over_total",
                          "Relay host addresses passed over (the next one tried), by reason")),
      tryclear_(family(r, "smtp_tls_proxy_relay_tryclear_total",
                       "Deliveries in the clear after STARTTLS failed (tls_tempfail_tryclear)")),
      reuses_(family(r, "smtp_tls_proxy_relay_connection_reuses_total",
                     "Relay host connections reused for another local session")),
      auth_(family(r, "smtp_tls_proxy_relay_auth_total", "AUTH to relay hosts, by result")),
      messages_(family(r, "smtp_tls_proxy_relay_messages_total",
                       "Messages relayed, by the relay host's verdict")),
      tls_policy_results_(
          family(r, "smtp_tls_proxy_relay_tls_policy_results_total",
                 "Routing by MX: connections and policy lookups by TLS policy type and RFC 8460 "
                 "result type")),
      clients_refused_(family(r, "smtp_tls_proxy_relay_clients_refused_total",
                              "Local clients refused (not in --relay-clients)")
                           .Add({})),
      dns_validating_(prometheus::BuildGauge()
                          .Name("smtp_tls_proxy_dns_validating")
                          .Help("1 while the outbound resolver validates DNSSEC (routing by MX; "
                                "0: DANE unavailable, MX deliveries defer)")
                          .Register(r)
                          .Add({})) {}

void RelayMetrics::connection(std::string_view relay_host, std::string_view tls) {
  connections_.Add({{"relay_host", text(relay_host)}, {"tls", text(tls)}}).Increment();
}

void RelayMetrics::passed_over(std::string_view relay_host, std::string_view reason) {
  passed_over_.Add({{"relay_host", text(relay_host)}, {"reason", text(reason)}}).Increment();
}

void RelayMetrics::tryclear(std::string_view relay_host) {
  tryclear_.Add({{"relay_host", text(relay_host)}}).Increment();
}

void RelayMetrics::reused(std::string_view relay_host) {
  reuses_.Add({{"relay_host", text(relay_host)}}).Increment();
}

void RelayMetrics::auth(std::string_view relay_host, std::string_view result) {
  auth_.Add({{"relay_host", text(relay_host)}, {"result", text(result)}}).Increment();
}

void RelayMetrics::message(std::string_view relay_host, std::string_view verdict) {
  messages_.Add({{"relay_host", text(relay_host)}, {"verdict", text(verdict)}}).Increment();
}

void RelayMetrics::tls_policy_result(std::string_view policy, std::string_view result) {
  tls_policy_results_.Add({{"policy", text(policy)}, {"result", text(result)}}).Increment();
}

void RelayMetrics::client_refused() {
  clients_refused_.Increment();
}

}  // namespace stp::metrics
