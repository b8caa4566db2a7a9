// Metric declarations; see metrics.hpp.
#include "metrics/metrics.hpp"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <prometheus/text_serializer.h>

#include <sstream>

namespace stp::metrics {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

// Latency buckets from 1 ms to 5 min: handshakes, MTA connects and sessions all fit.
const prometheus::Histogram::BucketBoundaries kLatencyBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};

template <class Enum, class Metric>
void add_all(prometheus::Family<Metric>& family, std::string_view label,
             std::initializer_list<std::pair<Enum, std::string_view>> values,
             ByEnum<Metric, Enum>& out) {
  for (const auto& [value, text] : values) {
    out[static_cast<std::size_t>(value)] = &family.Add({{std::string(label), std::string(text)}});
  }
}

}  // namespace

std::string_view name(Violation v) {
  switch (v) {
    case Violation::pipelined_after_starttls:
      return "pipelined_after_starttls";
    case Violation::client_xclient:
      return "client_xclient";
    case Violation::line_too_long:
      return "line_too_long";
    case Violation::bad_command_character:
      return "bad_command_character";
    case Violation::bare_lf:
      return "bare_lf";
    case Violation::timeout:
      return "timeout";
    case Violation::auth_before_tls:
      return "auth_before_tls";
    case Violation::bad_bdat:
      return "bad_bdat";
    case Violation::client_proxy_header:
      return "client_proxy_header";
    case Violation::empty_command:
      return "empty_command";
    case Violation::too_many_errors:
      return "too_many_errors";
    case Violation::count_:
      break;
  }
  return "unknown";
}

std::string_view name(Rejection r) {
  switch (r) {
    case Rejection::mta_unavailable:
      return "mta_unavailable";
    case Rejection::identity_refused:
      return "identity_refused";
    case Rejection::max_connections:
      return "max_connections";
    case Rejection::max_connections_per_host:
      return "max_connections_per_host";
    case Rejection::proxy_header:
      return "proxy_header";
    case Rejection::count_:
      break;
  }
  return "unknown";
}

std::string endpoint_label(const boost::asio::ip::tcp::endpoint& endpoint) {
  // (fmt, not string concatenation: GCC 12 at -O3 reports a false -Wrestrict in the latter.)
  const auto address = endpoint.address().to_string();
  return endpoint.address().is_v6() ? fmt::format("[{}]:{}", address, endpoint.port())
                                    : fmt::format("{}:{}", address, endpoint.port());
}

Metrics::Metrics(const std::vector<ListenerLabels>& listeners)
    : registry_(std::make_shared<prometheus::Registry>()) {
  // In this order in the exposition.
  declare_connections(listeners);
  declare_tls();
  declare_client_certificates();
  declare_backend();
  declare_traffic();
  declare_operations();
}

// Connections and sessions per listener, and clients turned away.
void Metrics::declare_connections(const std::vector<ListenerLabels>& listeners) {
  auto& r = *registry_;
  auto& connections = BuildCounter()
                          .Name("smtp_tls_proxy_connections_total")
                          .Help("Client connections accepted, by listener and mode")
                          .Register(r);
  auto& active = BuildGauge()
                     .Name("smtp_tls_proxy_sessions_active")
                     .Help("Client sessions in progress, by listener")
                     .Register(r);
  for (const auto& listener : listeners) {
    const auto label = endpoint_label(listener.endpoint);
    listeners_.push_back(
        {&connections.Add({{"listener", label},
                           {"mode", listener.implicit_tls ? "implicit" : "starttls-capable"}}),
         &active.Add({{"listener", label}})});
  }

  auto& rejected = BuildCounter()
                       .Name("smtp_tls_proxy_connections_rejected_total")
                       .Help("Client connections turned away, by reason")
                       .Register(r);
  add_all<Rejection>(
      rejected, "reason",
      {{Rejection::mta_unavailable, name(Rejection::mta_unavailable)},
       {Rejection::identity_refused, name(Rejection::identity_refused)},
       {Rejection::max_connections, name(Rejection::max_connections)},
       {Rejection::max_connections_per_host, name(Rejection::max_connections_per_host)},
       {Rejection::proxy_header, name(Rejection::proxy_header)}},
      rejected_);
}

// STARTTLS, handshakes and TLS sessions.
void Metrics::declare_tls() {
  auto& r = *registry_;
  auto& starttls = BuildCounter()
                       .Name("smtp_tls_proxy_starttls_total")
                       .Help("STARTTLS offered (or not) in EHLO replies, used, and refused")
                       .Register(r);
  add_all<StartTls>(starttls, "result",
                    {{StartTls::offered, "offered"},
                     {StartTls::not_offered, "not_offered"},
                     {StartTls::used, "used"},
                     {StartTls::refused, "refused"}},
                    starttls_);

  handshakes_ = &BuildCounter()
                     .Name("smtp_tls_proxy_tls_handshakes_total")
                     .Help("TLS handshakes, by result and negotiated protocol")
                     .Register(r);
  handshake_duration_ = &BuildHistogram()
                             .Name("smtp_tls_proxy_tls_handshake_duration_seconds")
                             .Help("Time from the start of a TLS handshake to its end")
                             .Register(r)
                             .Add({}, kLatencyBuckets);
  tls_sessions_ = &BuildCounter()
                       .Name("smtp_tls_proxy_tls_sessions_total")
                       .Help("Established TLS sessions, by protocol and cipher")
                       .Register(r);
  tls_resumed_ = &BuildCounter()
                      .Name("smtp_tls_proxy_tls_resumed_total")
                      .Help("TLS sessions that resumed an earlier one")
                      .Register(r)
                      .Add({});
}

// Client certificates: outcomes, verification reused, failures.
void Metrics::declare_client_certificates() {
  auto& r = *registry_;
  auto& client_certs = BuildCounter()
                           .Name("smtp_tls_proxy_client_certificates_total")
                           .Help("Client certificates requested, by outcome")
                           .Register(r);
  add_all<ClientCertificate>(client_certs, "result",
                             {{ClientCertificate::verified, "verified"},
                              {ClientCertificate::unverified, "unverified"},
                              {ClientCertificate::absent, "absent"},
                              {ClientCertificate::rejected, "rejected"}},
                             client_cert_);
  auto& verify_cache = BuildCounter()
                           .Name("smtp_tls_proxy_client_certificate_verify_cache_total")
                           .Help(
                               "Client certificate chains whose verification result was reused "
                               "(hit) or computed (miss)")
                           .Register(r);
  add_all<VerifyCache>(verify_cache, "result",
                       {{VerifyCache::hit, "hit"}, {VerifyCache::miss, "miss"}}, verify_cache_);
  verify_failures_ = &BuildCounter()
                          .Name("smtp_tls_proxy_client_certificate_verify_failures_total")
                          .Help("Client certificates that did not verify, by reason")
                          .Register(r);
}

// The MTA: connections that failed, refused XCLIENT, given back when idle.
void Metrics::declare_backend() {
  auto& r = *registry_;
  backend_connect_failures_ = &BuildCounter()
                                   .Name("smtp_tls_proxy_backend_connect_failures_total")
                                   .Help("Connections to the MTA that failed")
                                   .Register(r)
                                   .Add({});
  backend_xclient_failures_ = &BuildCounter()
                                   .Name("smtp_tls_proxy_backend_xclient_failures_total")
                                   .Help("Sessions refused because the MTA would not take XCLIENT")
                                   .Register(r)
                                   .Add({});
  backend_idle_releases_ =
      &BuildCounter()
           .Name("smtp_tls_proxy_backend_idle_releases_total")
           .Help(
               "MTA connections closed because their client was idle outside a transaction "
               "(--backend-idle-timeout)")
           .Register(r)
           .Add({});
  backend_connect_duration_ = &BuildHistogram()
                                   .Name("smtp_tls_proxy_backend_connect_duration_seconds")
                                   .Help("Time to connect to the MTA")
                                   .Register(r)
                                   .Add({}, kLatencyBuckets);
}

// Messages, bytes, session durations and protocol violations.
void Metrics::declare_traffic() {
  auto& r = *registry_;
  auto& messages = BuildCounter()
                       .Name("smtp_tls_proxy_messages_total")
                       .Help("Messages relayed, by the MTA's verdict")
                       .Register(r);
  add_all<Message>(messages, "result",
                   {{Message::accepted, "accepted"},
                    {Message::rejected, "rejected"},
                    {Message::tempfailed, "tempfailed"}},
                   messages_);
  auto& bytes = BuildCounter()
                    .Name("smtp_tls_proxy_bytes_total")
                    .Help("Bytes of plaintext relayed, by direction")
                    .Register(r);
  bytes_from_client_ = &bytes.Add({{"direction", "from_client"}});
  bytes_to_client_ = &bytes.Add({{"direction", "to_client"}});
  session_duration_ = &BuildHistogram()
                           .Name("smtp_tls_proxy_session_duration_seconds")
                           .Help("Client session duration")
                           .Register(r)
                           .Add({}, kLatencyBuckets);

  auto& violations = BuildCounter()
                         .Name("smtp_tls_proxy_protocol_violations_total")
                         .Help("Client protocol violations, by kind")
                         .Register(r);
  for (std::size_t i = 0; i < violations_.size(); ++i) {
    violations_[i] = &violations.Add({{"kind", std::string(name(static_cast<Violation>(i)))}});
  }
}

// Certificates, reloads and the build.
void Metrics::declare_operations() {
  auto& r = *registry_;
  certificate_expiry_ = &BuildGauge()
                             .Name("smtp_tls_proxy_certificate_expiry_timestamp_seconds")
                             .Help(
                                 "notAfter of each server certificate in use (subject CN and key "
                                 "type, file), Unix time")
                             .Register(r);
  auto& reloads = BuildCounter()
                      .Name("smtp_tls_proxy_config_reloads_total")
                      .Help("Certificate and configuration reloads, by result")
                      .Register(r);
  add_all<Reload>(reloads, "result", {{Reload::success, "success"}, {Reload::failure, "failure"}},
                  reloads_);
  BuildGauge()
      .Name("smtp_tls_proxy_build_info")
      .Help("Version of smtp-tls-proxy and of the OpenSSL it runs with")
      .Register(r)
      .Add({{"version", STP_VERSION}, {"openssl", OpenSSL_version(OPENSSL_VERSION_STRING)}})
      .Set(1);
}

std::string Metrics::serialize() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, registry_->Collect());
  return out.str();
}

void Metrics::handshake(Handshake result, std::string_view protocol, double seconds) {
  handshakes_
      ->Add({{"result", result == Handshake::ok ? "ok" : "failed"},
             {"protocol", std::string(protocol)}})
      .Increment();
  handshake_duration_->Observe(seconds);
}

void Metrics::tls_session(std::string_view protocol, std::string_view cipher, bool resumed) {
  tls_sessions_->Add({{"protocol", std::string(protocol)}, {"cipher", std::string(cipher)}})
      .Increment();
  if (resumed) tls_resumed_->Increment();
}

void Metrics::verify_failure(std::string_view reason) {
  verify_failures_->Add({{"reason", std::string(reason)}}).Increment();
}

void Metrics::set_certificate_expiry(const std::vector<ServerCertificate>& certificates) {
  std::lock_guard lock(certificate_mutex_);
  for (auto* gauge : certificate_gauges_) certificate_expiry_->Remove(gauge);
  certificate_gauges_.clear();
  for (const auto& c : certificates) {
    auto& gauge = certificate_expiry_->Add({{"certificate", c.label}, {"file", c.file}});
    gauge.Set(c.not_after);
    certificate_gauges_.push_back(&gauge);
  }
}

}  // namespace stp::metrics
