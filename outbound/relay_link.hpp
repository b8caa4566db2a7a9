// A connection to a relay host and how one is made: the relay hosts of --relay-host tried in
// order, each address of a name in turn, with Exim's smtp transport semantics for TLS
// (hosts_avoid_tls, hosts_require_tls, tls_tempfail_tryclear, tls_verify_hosts,
// tls_verify_cert_hostnames; a host with credentials requires TLS) and AUTH PLAIN or LOGIN
// with the host's credentials, only under TLS.
//
// Trusts nothing from the relay host: its replies go through Upstream (bounded, checked), its
// certificate through OpenSSL against the configured CAs and names.
#pragma once

#include "metrics/relay_metrics.hpp"
#include "outbound/credentials.hpp"
#include "proxy/config.hpp"
#include "proxy/deadline.hpp"
#include "proxy/upstream.hpp"
#include "smtp/smtp_parse.hpp"
#include "tls/client_context.hpp"
#include "tls/session_facts.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace stp::outbound {

class TlsReports;

// What every connection shares: the configuration, the TLS client context, the credentials,
// the metrics (null in tests that need none).
struct RelayPolicy {
  const Config& config;
  std::shared_ptr<const tls::ClientContext> tls;
  const Credentials& credentials;
  metrics::RelayMetrics* metrics = nullptr;
  TlsReports* reports = nullptr;  // --relay-tls-rpt-dir; null without
};

// A relay host as metrics and logs name it: "smtp.example.net:587".
std::string label_of(const RelayHost& host);

// Where a connection's TLS terms come from, by issue 23's precedence: the operator's relay-*
// flags for a host they name, then DANE, then MTA-STS, then opportunistic TLS.
enum class TlsPolicy : std::uint8_t { opportunistic, relay_flags, dane, sts_enforce, sts_testing };
// "none", "relay-flags", "dane", "mta-sts:enforce", "mta-sts:testing" (the log's policy=).
std::string_view to_string(TlsPolicy policy);

// One relay host connection, greeted, past EHLO (and STARTTLS and AUTH when they apply).
class RelayLink final : public Deadline::Owner {
 public:
  RelayLink(const boost::asio::any_io_executor& executor, DeadlineQueue& deadlines,
            std::string log_id);
  RelayLink(const RelayLink&) = delete;
  RelayLink& operator=(const RelayLink&) = delete;

  // While waiting in a LinkPool the deadline is its idle time, and the pool is told.
  void on_deadline_expired() override {
    upstream.cancel();
    if (auto hook = std::move(on_idle_expired)) hook(*this);  // may destroy this
  }
  std::function<void(RelayLink&)> on_idle_expired;
  // The session it serves now names its log lines.
  void set_log_id(std::string id) {
    log_id = std::move(id);
    upstream.set_log_id(log_id);
  }

  std::string log_id;  // before upstream, which keeps a view of it
  Deadline deadline;
  Upstream upstream;
  RelayHost host;
  std::string metrics_label;  // the relay host as metrics name it (never a domain's MX)
  std::string destination;    // routing by MX: the recipient domain it was made for
  // What DNS said of an MX host (RelayTarget): where its terms come from, TLS it must have,
  // the TLSA records its certificate must match.
  TlsPolicy policy = TlsPolicy::opportunistic;
  bool tls_avoided = false;  // --relay-hosts-avoid-tls named it: DNS's terms never applied
  bool tls_required_by_dns = false;
  std::vector<tls::DaneRecord> dane;
  std::string tls_base;  // RelayTarget::tls_base
  boost::asio::ip::tcp::endpoint endpoint;
  std::string label;       // "smtp.example.net [192.0.2.1]:587", for logs
  std::string ehlo_reply;  // the relay host's last EHLO reply, whole
  smtp::MtaCapabilities capabilities;
  std::optional<tls::SessionFacts> tls_facts;  // when the connection is encrypted
  std::string auth_user;                       // when the proxy's own AUTH succeeded
  bool client_authenticated = false;           // a local client's AUTH went over it: never shared
  bool reset_pending = false;                  // kept for another session: RSET before use
  bool kept = false;                           // used again after its first session
  unsigned messages = 0;                       // accepted on this connection
};

// Postfix's words for how a connection is secured: dane (verified against DNSSEC-signed TLSA
// records), mta-sts (verified for its name under an enforced MTA-STS policy), verified (a
// certificate chain to a trusted CA), encrypted, clear.
std::string_view tls_level(const RelayLink& link);

// Why no connection could be made: the text for the local client's 4xx reply.
struct RelayFailure {
  std::string enhanced_code;  // "4.4.1"
  std::string text;           // "no relay host reachable: smtp.example.net: connection refused"
};

// A host to try and, when the caller looked them up itself (MX routing), its addresses.
struct RelayTarget {
  RelayHost host;
  std::optional<std::vector<boost::asio::ip::tcp::endpoint>> endpoints;  // nullopt: resolve
  std::string why_none;  // when `endpoints` is empty: why
  TlsPolicy policy = TlsPolicy::opportunistic;
  // DANE (RFC 7672), from the host's DNSSEC-signed TLSA records: TLS is then mandatory, and
  // the certificate must match one of `dane` (usable records; none: TLS unauthenticated).
  // An enforced MTA-STS policy makes TLS mandatory too, verified for the host's name.
  bool tls_required = false;
  std::vector<tls::DaneRecord> dane;
  // When the TLSA records were found at the name the MX host's alias (CNAME) leads to: that
  // name, sent as SNI and matched (as well as the MX name) by DANE-TA (RFC 7672 3.2.2).
  std::string tls_base;
  // For TLS reports (RFC 8460): the policy's domain and its text (STS lines, TLSA records).
  std::string policy_domain;
  std::shared_ptr<const std::vector<std::string>> policy_strings;
};

// Whether `link` (kept from an earlier transaction) is what a connection to `target` would be
// now: the same host, port and address, and the same TLS terms (policy, TLS required by DNS,
// TLSA records, TLSA base name). Terms the operator's flags made hold while the operator
// avoids TLS to it, or while DNS still gives none of its own.
bool made_under_terms_of(const RelayLink& link, const RelayTarget& target);

struct RelayConnectResult {
  std::unique_ptr<RelayLink> link;  // null on failure
  RelayFailure failure;
};

// Tries the relay hosts in order until one takes a connection under the policy.
boost::asio::awaitable<RelayConnectResult> connect_relay(const RelayPolicy& policy,
                                                         DeadlineQueue& deadlines,
                                                         std::string log_id);

// Tries `targets` in order, each address in turn, under the same policy, giving up at
// `give_up_at` (each wait is cut to it); metrics name every one of them `metrics_label`.
boost::asio::awaitable<RelayConnectResult> connect_targets(
    const RelayPolicy& policy, std::vector<RelayTarget> targets, std::string metrics_label,
    std::chrono::steady_clock::time_point give_up_at, DeadlineQueue& deadlines, std::string log_id);

}  // namespace stp::outbound
