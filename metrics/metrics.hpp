// Every Prometheus metric of the proxy, declared once at start-up in one place.
//
// Label values are small closed sets (enums here) or come from the configuration (listeners,
// certificates) or from OpenSSL's own names (protocol, cipher); never an address, a host name or
// a DN. Children for the closed sets are added up front, so a session only touches references
// it already holds: no label lookups, no locks on its path.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <boost/asio/ip/tcp.hpp>

#include <array>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace stp::metrics {

enum class StartTls { offered, not_offered, used, refused, count_ };
enum class Handshake { ok, failed, count_ };
enum class ClientCertificate { verified, unverified, absent, rejected, count_ };
enum class Message { accepted, rejected, tempfailed, count_ };
enum class Rejection {
  mta_unavailable,
  identity_refused,
  max_connections,
  max_connections_per_host,
  proxy_header,
  count_
};
enum class Violation {
  pipelined_after_starttls,
  client_xclient,
  line_too_long,
  bad_command_character,
  bare_lf,
  timeout,
  auth_before_tls,
  bad_bdat,
  client_proxy_header,  // a PROXY line from a client that is not a trusted load balancer
  empty_command,
  too_many_errors,
  count_
};
enum class Reload { success, failure, count_ };
enum class VerifyCache { hit, miss, count_ };

std::string_view name(Violation v);
std::string_view name(Rejection r);

template <class Metric, class Enum>
using ByEnum = std::array<Metric*, static_cast<std::size_t>(Enum::count_)>;

// "addr:port", "[v6addr]:port": how a listening endpoint is named in labels and messages.
std::string endpoint_label(const boost::asio::ip::tcp::endpoint& endpoint);

// What a listener's metrics are labelled with.
struct ListenerLabels {
  boost::asio::ip::tcp::endpoint endpoint;
  bool implicit_tls = false;
};

class Metrics {
 public:
  explicit Metrics(const std::vector<ListenerLabels>& listeners);

  prometheus::Registry& registry() { return *registry_; }
  std::shared_ptr<prometheus::Registry> shared_registry() { return registry_; }
  // The text exposition format of everything registered.
  std::string serialize() const;

  struct ListenerMetrics {
    prometheus::Counter* connections;
    prometheus::Gauge* sessions_active;
  };
  const ListenerMetrics& listener(std::size_t index) const { return listeners_[index]; }

  prometheus::Counter& starttls(StartTls r) { return *starttls_[index(r)]; }
  prometheus::Counter& client_certificate(ClientCertificate r) { return *client_cert_[index(r)]; }
  prometheus::Counter& message(Message r) { return *messages_[index(r)]; }
  prometheus::Counter& rejected(Rejection r) { return *rejected_[index(r)]; }
  prometheus::Counter& violation(Violation v) { return *violations_[index(v)]; }
  prometheus::Counter& reload(Reload r) { return *reloads_[index(r)]; }
  prometheus::Counter& verify_cache(VerifyCache r) { return *verify_cache_[index(r)]; }

  // Counted once per handshake; protocol is OpenSSL's name ("TLSv1.3"), or "none" on failure.
  void handshake(Handshake result, std::string_view protocol, double seconds);
  // Counted once per established TLS session.
  void tls_session(std::string_view protocol, std::string_view cipher, bool resumed);
  void verify_failure(std::string_view reason);
  struct ServerCertificate {
    std::string label;  // subject CN and key type
    std::string file;   // the file it came from (never a client's name)
    double not_after;   // Unix time
  };
  // Replaces the certificate expiry series with these.
  void set_certificate_expiry(const std::vector<ServerCertificate>& certificates);

  prometheus::Counter& backend_connect_failures() { return *backend_connect_failures_; }
  prometheus::Counter& backend_xclient_failures() { return *backend_xclient_failures_; }
  prometheus::Counter& backend_idle_releases() { return *backend_idle_releases_; }
  prometheus::Histogram& backend_connect_duration() { return *backend_connect_duration_; }
  prometheus::Counter& bytes_from_client() { return *bytes_from_client_; }
  prometheus::Counter& bytes_to_client() { return *bytes_to_client_; }
  prometheus::Histogram& session_duration() { return *session_duration_; }

 private:
  template <class Enum>
  static std::size_t index(Enum e) {
    return static_cast<std::size_t>(e);
  }

  // The constructor's parts, one per group of families.
  void declare_connections(const std::vector<ListenerLabels>& listeners);
  void declare_tls();
  void declare_client_certificates();
  void declare_backend();
  void declare_traffic();
  void declare_operations();

  std::shared_ptr<prometheus::Registry> registry_;
  std::vector<ListenerMetrics> listeners_;
  ByEnum<prometheus::Counter, StartTls> starttls_{};
  ByEnum<prometheus::Counter, ClientCertificate> client_cert_{};
  ByEnum<prometheus::Counter, Message> messages_{};
  ByEnum<prometheus::Counter, Rejection> rejected_{};
  ByEnum<prometheus::Counter, Violation> violations_{};
  ByEnum<prometheus::Counter, Reload> reloads_{};
  ByEnum<prometheus::Counter, VerifyCache> verify_cache_{};

  prometheus::Family<prometheus::Counter>* handshakes_;
  prometheus::Histogram* handshake_duration_;
  prometheus::Family<prometheus::Counter>* tls_sessions_;
  prometheus::Counter* tls_resumed_;
  prometheus::Family<prometheus::Counter>* verify_failures_;
  prometheus::Family<prometheus::Gauge>* certificate_expiry_;
  std::mutex certificate_mutex_;
  std::vector<prometheus::Gauge*> certificate_gauges_;

  prometheus::Counter* backend_connect_failures_;
  prometheus::Counter* backend_xclient_failures_;
  prometheus::Counter* backend_idle_releases_;
  prometheus::Histogram* backend_connect_duration_;
  prometheus::Counter* bytes_from_client_;
  prometheus::Counter* bytes_to_client_;
  prometheus::Histogram* session_duration_;
};

}  // namespace stp::metrics
