// The outbound relay's session: a local MTA or device (a --relay-clients address on a
// --relay-listen port) hands mail to the proxy, which relays it to a relay host over the
// connection of relay_link.hpp. The local client hears the relay host's own verdicts (its
// RCPT, DATA and BDAT replies); whatever the proxy itself cannot do (no relay host, TLS
// policy not met, AUTH refused, the relay host lost) is a 4xx naming the cause, so the local
// MTA keeps the message queued: never a 5xx for a local failure, never a 2xx the relay host
// did not give.
//
// Trusts the local client only as far as --relay-clients says; its commands are parsed as
// the inbound side parses them, and XCLIENT, XFORWARD and TURN are not passed on. Its own
// AUTH is relayed only over an encrypted relay host connection for which the proxy holds no
// credentials, and such a connection is never kept for another session.
#pragma once

#include "dns/resolver.hpp"
#include "metrics/metrics.hpp"
#include "metrics/relay_metrics.hpp"
#include "outbound/credentials.hpp"
#include "outbound/link_pool.hpp"
#include "outbound/mta_sts.hpp"
#include "outbound/relay_link.hpp"
#include "outbound/relay_probe.hpp"
#include "outbound/tls_report.hpp"
#include "proxy/runtime.hpp"

#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>

namespace stp::outbound {

// What every relay session shares; the server's SessionFactory for --relay-listen ports.
class SessionServices final : public SessionFactory {
 public:
  // Reads --relay-auth-file and builds the TLS client context; throws std::invalid_argument
  // naming the flag.
  explicit SessionServices(Runtime& runtime);
  ~SessionServices();

  void start(boost::asio::ip::tcp::socket socket, std::size_t listener_index,
             WorkerState& worker) override;
  void start_serving(boost::asio::io_context& io) override;
  void stop_serving() override;
  // Routing by MX there is no one relay host to probe: ready while the resolver validates.
  bool ready() const override { return resolver ? validating_.load() : probe_ && probe_->up(); }

  // The relay host connections kept on `worker`'s thread (made at its first use).
  LinkPool& pool_for(const WorkerState& worker);

  Runtime& runtime;
  const Config& config;
  Credentials credentials;
  metrics::RelayMetrics metrics;
  std::unique_ptr<TlsReports> reports;  // --relay-tls-rpt-dir; before policy, which points to it
  RelayPolicy policy;
  std::atomic<std::uint64_t> next_session_id{1};
  std::shared_ptr<dns::Resolver> resolver;  // --relay-route mx; made by start_serving
  std::shared_ptr<StsPolicies> sts;         // and --relay-mta-sts on

 private:
  // Routing by MX: checks, at start and every --backend-probe-interval, that the resolver
  // validates (the trust anchor's own keys come back secure); says so loudly when it stops.
  boost::asio::awaitable<void> watch_validation();
  // Rewrites the TLS reports every few minutes.
  boost::asio::awaitable<void> write_reports();

  std::unique_ptr<RelayProbe> probe_;
  std::unique_ptr<boost::asio::steady_timer> validation_timer_;
  std::unique_ptr<boost::asio::steady_timer> report_timer_;
  std::atomic<bool> validating_{false};
  std::atomic<bool> stopping_{false};
  std::mutex pools_mutex_;
  std::map<const WorkerState*, std::unique_ptr<LinkPool>> pools_;
};

}  // namespace stp::outbound
