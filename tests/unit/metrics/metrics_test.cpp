// Metrics, read back through Registry::Collect() as a scraper sees them: every family of issue 4
// with its type and help, per-listener children, the closed label sets present at 0 from the
// start, the labelled helpers, histograms, the certificate expiry series being replaced, build
// info, and the text exposition.
#include "metrics/metrics.hpp"

#include <gtest/gtest.h>
#include <openssl/crypto.h>
#include <prometheus/metric_family.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace stp::metrics {
namespace {

namespace ip = boost::asio::ip;
using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;
using LabelSet = std::map<std::string, std::string>;

std::vector<ListenerLabels> listeners() {
  return {
      {.endpoint = {ip::make_address("127.0.0.1"), 25}, .implicit_tls = false},
      {.endpoint = {ip::make_address("::1"), 465}, .implicit_tls = true},
      {.endpoint = {ip::make_address("0.0.0.0"), 587}, .implicit_tls = false},
  };
}

const MetricFamily* find_family(const std::vector<MetricFamily>& families, std::string_view name) {
  for (const auto& f : families) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

LabelSet labels_of(const ClientMetric& m) {
  LabelSet out;
  for (const auto& l : m.label) out[l.name] = l.value;
  return out;
}

const ClientMetric* find_child(const MetricFamily& family, const LabelSet& labels) {
  for (const auto& m : family.metric) {
    if (labels_of(m) == labels) return &m;
  }
  return nullptr;
}

// The family `name`, which must exist; fails the test and returns an empty family otherwise.
MetricFamily family(Metrics& metrics, std::string_view name) {
  const auto families = metrics.registry().Collect();
  if (const auto* f = find_family(families, name)) return *f;
  ADD_FAILURE() << "no family " << name;
  return {};
}

// The value of the counter or gauge child with exactly these labels; NaN when absent.
double value(Metrics& metrics, std::string_view name, const LabelSet& labels) {
  const MetricFamily f = family(metrics, name);
  const ClientMetric* m = find_child(f, labels);
  if (!m) {
    ADD_FAILURE() << "no child of " << name << " with the given labels";
    return std::nan("");
  }
  return f.type == MetricType::Gauge ? m->gauge.value : m->counter.value;
}

// The label values of `label` over all children of a family.
std::vector<std::string> label_values(const MetricFamily& f, const std::string& label) {
  std::vector<std::string> out;
  for (const auto& m : f.metric) {
    const auto labels = labels_of(m);
    EXPECT_EQ(labels.size(), 1u) << f.name;
    const auto it = labels.find(label);
    out.push_back(it == labels.end() ? "<missing>" : it->second);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Makes the families whose children come from use (protocol, cipher, reason, certificate) appear.
void use_dynamic_families(Metrics& m) {
  m.handshake(Handshake::ok, "TLSv1.3", 0.003);
  m.tls_session("TLSv1.3", "TLS_AES_256_GCM_SHA384", false);
  m.verify_failure("expired");
  m.set_certificate_expiry({{"mx.example.org EC", "/etc/tls/ec.pem", 1795600800}});
}

struct Expected {
  const char* name;
  MetricType type;
  const char* help;
};

const Expected kFamilies[] = {
    {"smtp_tls_proxy_connections_total", MetricType::Counter,
     "Client connections accepted, by listener and mode"},
    {"smtp_tls_proxy_sessions_active", MetricType::Gauge,
     "Client sessions in progress, by listener"},
    {"smtp_tls_proxy_connections_rejected_total", MetricType::Counter,
     "Client connections turned away, by reason"},
    {"smtp_tls_proxy_starttls_total", MetricType::Counter,
     "STARTTLS offered (or not) in EHLO replies, used, and refused"},
    {"smtp_tls_proxy_tls_handshakes_total", MetricType::Counter,
     "TLS handshakes, by result and negotiated protocol"},
    {"smtp_tls_proxy_tls_handshake_duration_seconds", MetricType::Histogram,
     "Time from the start of a TLS handshake to its end"},
    {"smtp_tls_proxy_tls_sessions_total", MetricType::Counter,
     "Established TLS sessions, by protocol and cipher"},
    {"smtp_tls_proxy_tls_resumed_total", MetricType::Counter,
     "TLS sessions that resumed an earlier one"},
    {"smtp_tls_proxy_client_certificates_total", MetricType::Counter,
     "Client certificates requested, by outcome"},
    {"smtp_tls_proxy_client_certificate_verify_failures_total", MetricType::Counter,
     "Client certificates that did not verify, by reason"},
    {"smtp_tls_proxy_client_certificate_verify_cache_total", MetricType::Counter,
     "Client certificate chains whose verification result was reused (hit) or computed (miss)"},
    {"smtp_tls_proxy_backend_connect_failures_total", MetricType::Counter,
     "Connections to the MTA that failed"},
    {"smtp_tls_proxy_backend_xclient_failures_total", MetricType::Counter,
     "Sessions refused because the MTA would not take XCLIENT"},
    {"smtp_tls_proxy_backend_idle_releases_total", MetricType::Counter,
     "MTA connections closed because their client was idle outside a transaction "
     "(--backend-idle-timeout)"},
    {"smtp_tls_proxy_backend_connect_duration_seconds", MetricType::Histogram,
     "Time to connect to the MTA"},
    {"smtp_tls_proxy_messages_total", MetricType::Counter,
     "Messages relayed, by the MTA's verdict"},
    {"smtp_tls_proxy_bytes_total", MetricType::Counter, "Bytes of plaintext relayed, by direction"},
    {"smtp_tls_proxy_session_duration_seconds", MetricType::Histogram, "Client session duration"},
    {"smtp_tls_proxy_protocol_violations_total", MetricType::Counter,
     "Client protocol violations, by kind"},
    {"smtp_tls_proxy_certificate_expiry_timestamp_seconds", MetricType::Gauge,
     "notAfter of each server certificate in use (subject CN and key type, file), Unix time"},
    {"smtp_tls_proxy_config_reloads_total", MetricType::Counter,
     "Certificate and configuration reloads, by result"},
    {"smtp_tls_proxy_build_info", MetricType::Gauge,
     "Version of smtp-tls-proxy and of the OpenSSL it runs with"},
};

TEST(Metrics, EveryFamilyExistsWithItsTypeAndHelp) {
  Metrics m(listeners());
  use_dynamic_families(m);
  const auto families = m.registry().Collect();
  for (const auto& e : kFamilies) {
    SCOPED_TRACE(e.name);
    const MetricFamily* f = find_family(families, e.name);
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f->type, e.type);
    EXPECT_EQ(f->help, e.help);
    EXPECT_FALSE(f->metric.empty());
  }
  EXPECT_EQ(families.size(), std::size(kFamilies));
}

TEST(Metrics, FamiliesWithFixedLabelsExistBeforeAnyUse) {
  Metrics m(listeners());
  const auto families = m.registry().Collect();
  for (const auto& e : kFamilies) {
    const std::string_view name = e.name;
    if (name == "smtp_tls_proxy_tls_handshakes_total" ||
        name == "smtp_tls_proxy_tls_sessions_total" ||
        name == "smtp_tls_proxy_client_certificate_verify_failures_total" ||
        name == "smtp_tls_proxy_certificate_expiry_timestamp_seconds") {
      continue;  // labelled by what happens (protocol, cipher, reason, certificate)
    }
    EXPECT_NE(find_family(families, name), nullptr) << name;
  }
}

TEST(Metrics, ListenerChildrenPerConfiguredListener) {
  Metrics m(listeners());
  const MetricFamily connections = family(m, "smtp_tls_proxy_connections_total");
  ASSERT_EQ(connections.metric.size(), 3u);
  for (const LabelSet& labels : {
           LabelSet{{"listener", "127.0.0.1:25"}, {"mode", "starttls-capable"}},
           LabelSet{{"listener", "[::1]:465"}, {"mode", "implicit"}},
           LabelSet{{"listener", "0.0.0.0:587"}, {"mode", "starttls-capable"}},
       }) {
    const ClientMetric* child = find_child(connections, labels);
    ASSERT_NE(child, nullptr) << labels.at("listener");
    EXPECT_EQ(child->counter.value, 0.0);
  }
  const MetricFamily active = family(m, "smtp_tls_proxy_sessions_active");
  EXPECT_EQ(label_values(active, "listener"),
            (std::vector<std::string>{"0.0.0.0:587", "127.0.0.1:25", "[::1]:465"}));

  // listener(i) holds the children of the i-th configured listener.
  m.listener(1).connections->Increment();
  m.listener(1).connections->Increment();
  m.listener(1).sessions_active->Increment();
  m.listener(2).connections->Increment();
  EXPECT_EQ(value(m, "smtp_tls_proxy_connections_total",
                  {{"listener", "127.0.0.1:25"}, {"mode", "starttls-capable"}}),
            0.0);
  EXPECT_EQ(value(m, "smtp_tls_proxy_connections_total",
                  {{"listener", "[::1]:465"}, {"mode", "implicit"}}),
            2.0);
  EXPECT_EQ(value(m, "smtp_tls_proxy_connections_total",
                  {{"listener", "0.0.0.0:587"}, {"mode", "starttls-capable"}}),
            1.0);
  EXPECT_EQ(value(m, "smtp_tls_proxy_sessions_active", {{"listener", "[::1]:465"}}), 1.0);
  EXPECT_EQ(value(m, "smtp_tls_proxy_sessions_active", {{"listener", "127.0.0.1:25"}}), 0.0);
}

TEST(Metrics, NoListenersNoListenerChildren) {
  Metrics m({});
  const auto families = m.registry().Collect();
  // A family without children is not collected.
  for (const char* name : {"smtp_tls_proxy_connections_total", "smtp_tls_proxy_sessions_active"}) {
    const MetricFamily* f = find_family(families, name);
    EXPECT_TRUE(f == nullptr || f->metric.empty()) << name;
  }
}

void expect_closed_set_at_zero(Metrics& m, const char* name, const char* label,
                               std::vector<std::string> expected) {
  SCOPED_TRACE(name);
  const MetricFamily f = family(m, name);
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(label_values(f, label), expected);
  for (const auto& child : f.metric) EXPECT_EQ(child.counter.value, 0.0);
}

TEST(Metrics, ClosedLabelSetsArePreAddedAtZero) {
  Metrics m(listeners());
  expect_closed_set_at_zero(m, "smtp_tls_proxy_starttls_total", "result",
                            {"offered", "used", "refused", "not_offered"});
  expect_closed_set_at_zero(m, "smtp_tls_proxy_client_certificates_total", "result",
                            {"verified", "unverified", "absent", "rejected"});
  expect_closed_set_at_zero(m, "smtp_tls_proxy_messages_total", "result",
                            {"accepted", "rejected", "tempfailed"});
  expect_closed_set_at_zero(m, "smtp_tls_proxy_connections_rejected_total", "reason",
                            {"mta_unavailable", "identity_refused", "max_connections",
                             "max_connections_per_host", "proxy_header"});
  expect_closed_set_at_zero(
      m, "smtp_tls_proxy_protocol_violations_total", "kind",
      {"pipelined_after_starttls", "client_xclient", "line_too_long", "bad_command_character",
       "bare_lf", "timeout", "auth_before_tls", "bad_bdat", "client_proxy_header", "empty_command",
       "too_many_errors"});
  expect_closed_set_at_zero(m, "smtp_tls_proxy_config_reloads_total", "result",
                            {"success", "failure"});
  expect_closed_set_at_zero(m, "smtp_tls_proxy_bytes_total", "direction",
                            {"from_client", "to_client"});
}

TEST(Metrics, UnlabelledCountersStartAtZero) {
  Metrics m(listeners());
  for (const char* name :
       {"smtp_tls_proxy_tls_resumed_total", "smtp_tls_proxy_backend_connect_failures_total",
        "smtp_tls_proxy_backend_xclient_failures_total",
        "smtp_tls_proxy_backend_idle_releases_total"}) {
    EXPECT_EQ(value(m, name, {}), 0.0) << name;
  }
}

// Each accessor reaches the child of its own label value: the i-th value is incremented i+1
// times, so a swapped pair shows.
TEST(Metrics, EnumAccessorsReachTheirOwnChild) {
  Metrics m(listeners());
  const std::pair<StartTls, const char*> starttls[] = {{StartTls::offered, "offered"},
                                                       {StartTls::not_offered, "not_offered"},
                                                       {StartTls::used, "used"},
                                                       {StartTls::refused, "refused"}};
  const std::pair<ClientCertificate, const char*> certs[] = {
      {ClientCertificate::verified, "verified"},
      {ClientCertificate::unverified, "unverified"},
      {ClientCertificate::absent, "absent"},
      {ClientCertificate::rejected, "rejected"}};
  const std::pair<Message, const char*> messages[] = {{Message::accepted, "accepted"},
                                                      {Message::rejected, "rejected"},
                                                      {Message::tempfailed, "tempfailed"}};
  const std::pair<Reload, const char*> reloads[] = {{Reload::success, "success"},
                                                    {Reload::failure, "failure"}};
  for (int i = 0; i < 4; ++i) {
    for (int n = 0; n <= i; ++n) {
      m.starttls(starttls[i].first).Increment();
      m.client_certificate(certs[i].first).Increment();
      if (i < 3) m.message(messages[i].first).Increment();
      if (i < 2) m.reload(reloads[i].first).Increment();
    }
  }
  for (int i = 0; i < 4; ++i) {
    const double expected = i + 1;
    EXPECT_EQ(value(m, "smtp_tls_proxy_starttls_total", {{"result", starttls[i].second}}),
              expected);
    EXPECT_EQ(value(m, "smtp_tls_proxy_client_certificates_total", {{"result", certs[i].second}}),
              expected);
    if (i < 3) {
      EXPECT_EQ(value(m, "smtp_tls_proxy_messages_total", {{"result", messages[i].second}}),
                expected);
    }
    if (i < 2) {
      EXPECT_EQ(value(m, "smtp_tls_proxy_config_reloads_total", {{"result", reloads[i].second}}),
                expected);
    }
  }
}

TEST(Metrics, RejectionAndViolationAccessorsMatchTheirNames) {
  Metrics m(listeners());
  for (std::size_t i = 0; i < static_cast<std::size_t>(Rejection::count_); ++i) {
    const auto r = static_cast<Rejection>(i);
    for (std::size_t n = 0; n <= i; ++n) m.rejected(r).Increment();
  }
  for (std::size_t i = 0; i < static_cast<std::size_t>(Violation::count_); ++i) {
    const auto v = static_cast<Violation>(i);
    for (std::size_t n = 0; n <= i; ++n) m.violation(v).Increment();
  }
  for (std::size_t i = 0; i < static_cast<std::size_t>(Rejection::count_); ++i) {
    const auto label = std::string(name(static_cast<Rejection>(i)));
    EXPECT_EQ(value(m, "smtp_tls_proxy_connections_rejected_total", {{"reason", label}}),
              static_cast<double>(i + 1))
        << label;
  }
  for (std::size_t i = 0; i < static_cast<std::size_t>(Violation::count_); ++i) {
    const auto label = std::string(name(static_cast<Violation>(i)));
    EXPECT_EQ(value(m, "smtp_tls_proxy_protocol_violations_total", {{"kind", label}}),
              static_cast<double>(i + 1))
        << label;
  }
}

TEST(Metrics, EnumNames) {
  EXPECT_EQ(name(Violation::pipelined_after_starttls), "pipelined_after_starttls");
  EXPECT_EQ(name(Violation::client_xclient), "client_xclient");
  EXPECT_EQ(name(Violation::line_too_long), "line_too_long");
  EXPECT_EQ(name(Violation::bad_command_character), "bad_command_character");
  EXPECT_EQ(name(Violation::bare_lf), "bare_lf");
  EXPECT_EQ(name(Violation::timeout), "timeout");
  EXPECT_EQ(name(Violation::auth_before_tls), "auth_before_tls");
  EXPECT_EQ(name(Violation::client_proxy_header), "client_proxy_header");
  EXPECT_EQ(name(Violation::too_many_errors), "too_many_errors");
  EXPECT_EQ(name(Violation::bad_bdat), "bad_bdat");
  EXPECT_EQ(name(Rejection::mta_unavailable), "mta_unavailable");
  EXPECT_EQ(name(Rejection::identity_refused), "identity_refused");
  EXPECT_EQ(name(Rejection::max_connections), "max_connections");
  EXPECT_EQ(name(Rejection::max_connections_per_host), "max_connections_per_host");
  EXPECT_EQ(name(Rejection::proxy_header), "proxy_header");
}

TEST(Metrics, BytesAndBackendCounters) {
  Metrics m(listeners());
  m.bytes_from_client().Increment(1000);
  m.bytes_to_client().Increment(25);
  m.backend_connect_failures().Increment();
  m.backend_xclient_failures().Increment(3);
  m.backend_idle_releases().Increment(2);
  EXPECT_EQ(value(m, "smtp_tls_proxy_bytes_total", {{"direction", "from_client"}}), 1000.0);
  EXPECT_EQ(value(m, "smtp_tls_proxy_bytes_total", {{"direction", "to_client"}}), 25.0);
  EXPECT_EQ(value(m, "smtp_tls_proxy_backend_connect_failures_total", {}), 1.0);
  EXPECT_EQ(value(m, "smtp_tls_proxy_backend_xclient_failures_total", {}), 3.0);
  EXPECT_EQ(value(m, "smtp_tls_proxy_backend_idle_releases_total", {}), 2.0);
}

TEST(Metrics, HandshakeCountsByResultAndProtocol) {
  Metrics m(listeners());
  m.handshake(Handshake::ok, "TLSv1.3", 0.003);
  m.handshake(Handshake::ok, "TLSv1.3", 0.02);
  m.handshake(Handshake::ok, "TLSv1.2", 0.02);
  m.handshake(Handshake::failed, "none", 0.5);
  const MetricFamily f = family(m, "smtp_tls_proxy_tls_handshakes_total");
  EXPECT_EQ(f.metric.size(), 3u);
  EXPECT_EQ(
      value(m, "smtp_tls_proxy_tls_handshakes_total", {{"result", "ok"}, {"protocol", "TLSv1.3"}}),
      2.0);
  EXPECT_EQ(
      value(m, "smtp_tls_proxy_tls_handshakes_total", {{"result", "ok"}, {"protocol", "TLSv1.2"}}),
      1.0);
  EXPECT_EQ(
      value(m, "smtp_tls_proxy_tls_handshakes_total", {{"result", "failed"}, {"protocol", "none"}}),
      1.0);

  // Every handshake, failed or not, is observed in the duration histogram.
  const MetricFamily d = family(m, "smtp_tls_proxy_tls_handshake_duration_seconds");
  ASSERT_EQ(d.metric.size(), 1u);
  const auto& h = d.metric[0].histogram;
  EXPECT_EQ(h.sample_count, 4u);
  EXPECT_DOUBLE_EQ(h.sample_sum, 0.543);
}

TEST(Metrics, TlsSessionsByProtocolAndCipherAndResumed) {
  Metrics m(listeners());
  m.tls_session("TLSv1.3", "TLS_AES_256_GCM_SHA384", false);
  m.tls_session("TLSv1.3", "TLS_AES_256_GCM_SHA384", true);
  m.tls_session("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", true);
  EXPECT_EQ(value(m, "smtp_tls_proxy_tls_sessions_total",
                  {{"protocol", "TLSv1.3"}, {"cipher", "TLS_AES_256_GCM_SHA384"}}),
            2.0);
  EXPECT_EQ(value(m, "smtp_tls_proxy_tls_sessions_total",
                  {{"protocol", "TLSv1.2"}, {"cipher", "ECDHE-RSA-AES128-GCM-SHA256"}}),
            1.0);
  EXPECT_EQ(family(m, "smtp_tls_proxy_tls_sessions_total").metric.size(), 2u);
  EXPECT_EQ(value(m, "smtp_tls_proxy_tls_resumed_total", {}), 2.0);
}

TEST(Metrics, VerifyFailuresByReason) {
  Metrics m(listeners());
  m.verify_failure("expired");
  m.verify_failure("revoked");
  m.verify_failure("expired");
  EXPECT_EQ(
      value(m, "smtp_tls_proxy_client_certificate_verify_failures_total", {{"reason", "expired"}}),
      2.0);
  EXPECT_EQ(
      value(m, "smtp_tls_proxy_client_certificate_verify_failures_total", {{"reason", "revoked"}}),
      1.0);
  EXPECT_EQ(family(m, "smtp_tls_proxy_client_certificate_verify_failures_total").metric.size(), 2u);
}

void expect_histogram(Metrics& m, const char* name, std::uint64_t count, double sum,
                      const std::vector<std::uint64_t>& cumulative) {
  SCOPED_TRACE(name);
  const MetricFamily f = family(m, name);
  ASSERT_EQ(f.type, MetricType::Histogram);
  ASSERT_EQ(f.metric.size(), 1u);
  EXPECT_TRUE(f.metric[0].label.empty());
  const auto& h = f.metric[0].histogram;
  EXPECT_EQ(h.sample_count, count);
  EXPECT_DOUBLE_EQ(h.sample_sum, sum);
  const std::vector<double> bounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                      0.5,   1,      2.5,   5,    10,    30,   60,  300};
  ASSERT_EQ(h.bucket.size(), bounds.size() + 1);
  for (std::size_t i = 0; i < bounds.size(); ++i) {
    EXPECT_DOUBLE_EQ(h.bucket[i].upper_bound, bounds[i]) << i;
    EXPECT_EQ(h.bucket[i].cumulative_count, cumulative[i]) << "le=" << bounds[i];
  }
  EXPECT_TRUE(std::isinf(h.bucket.back().upper_bound));
  EXPECT_EQ(h.bucket.back().cumulative_count, count);
}

TEST(Metrics, HistogramsObserve) {
  Metrics m(listeners());
  m.handshake(Handshake::ok, "TLSv1.3", 0.003);
  m.handshake(Handshake::ok, "TLSv1.3", 0.2);
  m.backend_connect_duration().Observe(0.0005);
  m.session_duration().Observe(45);
  m.session_duration().Observe(1000);  // above the last bound: only +Inf
  //                                             .001 .0025 .005 .01 .025 .05 .1 .25 .5 1 2.5 5 10
  //                                             30 60 300
  expect_histogram(m, "smtp_tls_proxy_tls_handshake_duration_seconds", 2, 0.203,
                   {0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2});
  expect_histogram(m, "smtp_tls_proxy_backend_connect_duration_seconds", 1, 0.0005,
                   {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1});
  expect_histogram(m, "smtp_tls_proxy_session_duration_seconds", 2, 1045,
                   {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1});
}

TEST(Metrics, CertificateExpiryIsReplaced) {
  Metrics m(listeners());
  const char* name = "smtp_tls_proxy_certificate_expiry_timestamp_seconds";
  m.set_certificate_expiry({{"mx.example.org EC", "/etc/tls/ec.pem", 1795600800},
                            {"mx.example.org RSA", "/etc/tls/rsa.pem", 1790000000},
                            {"mx.example.org RSA", "/etc/tls/partner-rsa.pem", 1780000000}});
  EXPECT_EQ(family(m, name).metric.size(), 3u);
  EXPECT_EQ(value(m, name, {{"certificate", "mx.example.org EC"}, {"file", "/etc/tls/ec.pem"}}),
            1795600800.0);
  EXPECT_EQ(value(m, name, {{"certificate", "mx.example.org RSA"}, {"file", "/etc/tls/rsa.pem"}}),
            1790000000.0);
  EXPECT_EQ(
      value(m, name, {{"certificate", "mx.example.org RSA"}, {"file", "/etc/tls/partner-rsa.pem"}}),
      1780000000.0);

  // A reload with a renewed RSA certificate and without the EC one: the EC series is gone.
  m.set_certificate_expiry({{"mx.example.org RSA", "/etc/tls/rsa.pem", 1800000000},
                            {"new.example.org RSA", "/etc/tls/new.pem", 1.9e9}});
  const MetricFamily f = family(m, name);
  EXPECT_EQ(f.metric.size(), 2u);
  EXPECT_EQ(find_child(f, {{"certificate", "mx.example.org EC"}, {"file", "/etc/tls/ec.pem"}}),
            nullptr);
  EXPECT_EQ(value(m, name, {{"certificate", "mx.example.org RSA"}, {"file", "/etc/tls/rsa.pem"}}),
            1800000000.0);
  EXPECT_EQ(value(m, name, {{"certificate", "new.example.org RSA"}, {"file", "/etc/tls/new.pem"}}),
            1.9e9);

  // No certificates: no series.
  m.set_certificate_expiry({});
  const auto families = m.registry().Collect();
  const MetricFamily* empty = find_family(families, name);
  EXPECT_TRUE(empty == nullptr || empty->metric.empty());
}

TEST(Metrics, BuildInfo) {
  Metrics m(listeners());
  const MetricFamily f = family(m, "smtp_tls_proxy_build_info");
  ASSERT_EQ(f.metric.size(), 1u);
  EXPECT_EQ(
      labels_of(f.metric[0]),
      (LabelSet{{"version", STP_VERSION}, {"openssl", OpenSSL_version(OPENSSL_VERSION_STRING)}}));
  EXPECT_EQ(f.metric[0].gauge.value, 1.0);
  EXPECT_FALSE(std::string(STP_VERSION).empty());
  EXPECT_FALSE(std::string(OpenSSL_version(OPENSSL_VERSION_STRING)).empty());
}

TEST(Metrics, SerializeHasASampleLineForEachFamily) {
  Metrics m(listeners());
  use_dynamic_families(m);
  const std::string text = m.serialize();
  auto has_line_starting = [&](const std::string& prefix) {
    return text.rfind(prefix, 0) == 0 || text.find("\n" + prefix) != std::string::npos;
  };
  for (const auto& e : kFamilies) {
    const std::string name = e.name;
    SCOPED_TRACE(name);
    const char* type = e.type == MetricType::Counter ? "counter"
                       : e.type == MetricType::Gauge ? "gauge"
                                                     : "histogram";
    EXPECT_TRUE(has_line_starting("# HELP " + name + " " + e.help + "\n"));
    EXPECT_TRUE(has_line_starting("# TYPE " + name + " " + type + "\n"));
    if (e.type == MetricType::Histogram) {
      EXPECT_TRUE(has_line_starting(name + "_bucket{le=\"+Inf\"} "));
      EXPECT_TRUE(has_line_starting(name + "_count "));
      EXPECT_TRUE(has_line_starting(name + "_sum "));
    } else {
      EXPECT_TRUE(has_line_starting(name + "{") || has_line_starting(name + " "));
    }
  }
  // A few exact samples.
  EXPECT_TRUE(has_line_starting(
      "smtp_tls_proxy_connections_total{listener=\"[::1]:465\",mode=\"implicit\"} 0\n"));
  EXPECT_TRUE(has_line_starting("smtp_tls_proxy_starttls_total{result=\"not_offered\"} 0\n"));
  EXPECT_TRUE(has_line_starting(
      "smtp_tls_proxy_tls_handshakes_total{protocol=\"TLSv1.3\",result=\"ok\"} 1\n"));
  EXPECT_TRUE(has_line_starting(
      "smtp_tls_proxy_certificate_expiry_timestamp_seconds{certificate=\"mx.example.org EC\","
      "file=\"/etc/tls/ec.pem\"} 1795600800\n"));
  EXPECT_TRUE(has_line_starting("smtp_tls_proxy_tls_handshake_duration_seconds_count 1\n"));
}

}  // namespace
}  // namespace stp::metrics
