// Connections to relay hosts under the TLS and AUTH policy; see relay_link.hpp.
#include "outbound/relay_link.hpp"

#include "metrics/metrics.hpp"
#include "outbound/tls_report.hpp"
#include "proxy/log.hpp"
#include "smtp/sasl_client.hpp"

#include <openssl/crypto.h>

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>

namespace stp::outbound {
namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

namespace {

// What to do after one attempt at one address.
enum class Next { done, next_address, next_host, again_in_clear };

constexpr auto kQuitTimeout = std::chrono::seconds(5);

struct Attempt {
  Next next = Next::next_address;
  std::string why;  // for the log and the local client's reply
  std::string code = "4.4.1";
  std::string_view reason = "connect";  // the metrics' word for why
  // For TLS reports: RFC 8460's result type when TLS was had or failed ("success",
  // "starttls-not-supported", ...); empty when the attempt ended before TLS was in question.
  std::string_view result = {};
  std::string sending_ip = {};
};

constexpr std::string_view kStartTlsNotSupported = "starttls-not-supported";

}  // namespace

std::string label_of(const RelayHost& host) {
  return host.name + ":" + std::to_string(host.port);
}

std::string_view to_string(TlsPolicy policy) {
  switch (policy) {
    case TlsPolicy::opportunistic:
      return "none";
    case TlsPolicy::relay_flags:
      return "relay-flags";
    case TlsPolicy::dane:
      return "dane";
    case TlsPolicy::sts_enforce:
      return "mta-sts:enforce";
    case TlsPolicy::sts_testing:
      return "mta-sts:testing";
  }
  return "none";
}

std::string_view tls_level(const RelayLink& link) {
  const auto& t = link.tls_facts;
  if (!t) return "clear";
  if (!t->verified) return "encrypted";
  if (!link.dane.empty()) return "dane";
  return link.policy == TlsPolicy::sts_enforce ? "mta-sts" : "verified";
}

bool made_under_terms_of(const RelayLink& link, const RelayTarget& target) {
  const bool still_there =
      target.endpoints && std::find(target.endpoints->begin(), target.endpoints->end(),
                                    link.endpoint) != target.endpoints->end();
  if (!still_there || target.host.name != link.host.name || target.host.port != link.host.port) {
    return false;
  }
  if (link.policy == TlsPolicy::relay_flags) {
    return link.tls_avoided || target.policy == TlsPolicy::opportunistic;
  }
  return target.policy == link.policy && target.tls_required == link.tls_required_by_dns &&
         target.dane == link.dane && target.tls_base == link.tls_base;
}

namespace {

std::string one_line(std::string_view reply) {
  while (!reply.empty() && (reply.back() == '\n' || reply.back() == '\r')) reply.remove_suffix(1);
  return log::escape(reply, 200);
}

class Connector {
 public:
  Connector(const RelayPolicy& policy, DeadlineQueue& deadlines, std::string_view log_id,
            std::string metrics_label,
            std::chrono::steady_clock::time_point give_up_at =
                std::chrono::steady_clock::time_point::max())
      : policy_(policy),
        relay_(policy.config.relay),
        deadlines_(deadlines),
        log_id_(log_id),
        metrics_label_(std::move(metrics_label)),
        give_up_at_(give_up_at) {}

  asio::awaitable<RelayConnectResult> run(const std::vector<RelayTarget>& targets) {
    RelayConnectResult result;
    result.failure = {"4.4.1", "no relay host configured"};
    for (const RelayTarget& target : targets) {
      const RelayHost& host = target.host;
      auto endpoints = target.endpoints;
      if (!endpoints) {
        endpoints = co_await resolve(host);
      } else if (endpoints->empty()) {
        last_why_ = target.why_none;
      }
      if (endpoints->empty()) {
        // Only a failed TLSA lookup leaves a DANE host without addresses (mx_route.cpp).
        if (target.policy == TlsPolicy::dane) report(target, {}, "dnssec-invalid", {});
        result.failure = {"4.4.3", host.name + ": " + last_why_};
        if (policy_.metrics) policy_.metrics->passed_over(label(host), "resolve");
        continue;
      }
      for (const auto& endpoint : *endpoints) {
        if (std::chrono::steady_clock::now() >= give_up_at_) {
          result.failure = {"4.4.1", "gave up after --relay-mx-timeout (" + host.name + ": " +
                                         std::string(result.failure.text) + ")"};
          co_return result;
        }
        Attempt attempt = co_await try_address(target, endpoint, false, result.link);
        report(target, endpoint, attempt.result, attempt.sending_ip);
        if (attempt.next == Next::again_in_clear) {
          if (policy_.metrics) policy_.metrics->tryclear(label(host));
          spdlog::info("{} relay host {} [{}]:{}: {}; connecting again to deliver in the clear",
                       log_id_, host.name, endpoint.address().to_string(), endpoint.port(),
                       attempt.why);
          attempt = co_await try_address(target, endpoint, true, result.link);
          report(target, endpoint, attempt.result, attempt.sending_ip);
        }
        if (attempt.next == Next::done) {
          if (policy_.metrics) policy_.metrics->connection(label(host), tls_level(*result.link));
          co_return result;
        }
        if (policy_.metrics) policy_.metrics->passed_over(label(host), attempt.reason);
        spdlog::warn("{} relay host {} [{}]:{} passed over: {}{}{}", log_id_, host.name,
                     endpoint.address().to_string(), endpoint.port(), attempt.why,
                     attempt.result.empty() ? "" : " result=", attempt.result);
        result.failure = {attempt.code, host.name + ": " + attempt.why};
        if (attempt.next == Next::next_host) break;
      }
    }
    co_return result;
  }

 private:
  // `timeout`, cut to what is left before giving up (at least a second).
  std::chrono::steady_clock::duration bounded(std::chrono::steady_clock::duration timeout) const {
    if (give_up_at_ == std::chrono::steady_clock::time_point::max()) return timeout;
    const auto left = give_up_at_ - std::chrono::steady_clock::now();
    return std::max<std::chrono::steady_clock::duration>(std::min(timeout, left),
                                                         std::chrono::seconds(1));
  }

  // A connection's outcome under its policy, for metrics and TLS reports (routing by MX:
  // a recipient domain is the policy domain).
  void report(const RelayTarget& target, const tcp::endpoint& endpoint, std::string_view result,
              const std::string& sending_ip) {
    if (target.policy_domain.empty() || result.empty()) return;
    const ReportPolicy type =
        target.policy == TlsPolicy::dane ? ReportPolicy::tlsa
        : target.policy == TlsPolicy::sts_enforce || target.policy == TlsPolicy::sts_testing
            ? ReportPolicy::sts
            : ReportPolicy::no_policy_found;
    if (policy_.metrics) policy_.metrics->tls_policy_result(to_string(type), result);
    if (!policy_.reports) return;
    policy_.reports->record(TlsOutcome{
        .policy_domain = target.policy_domain,
        .policy = type,
        .policy_strings = type == ReportPolicy::no_policy_found ? nullptr : target.policy_strings,
        .mx_host = target.host.name,
        .receiving_ip = endpoint.port() == 0 ? std::string() : endpoint.address().to_string(),
        .sending_ip = sending_ip,
        .result = std::string(result)});
  }

  // Routing by MX, the operator's flags name a host. --relay-hosts-avoid-tls is the operator's
  // say over DNS's (no DANE, no MTA-STS: the host is known not to manage TLS); the flags that
  // ask for more (--relay-hosts-require-tls, --relay-tls-verify-hosts) add to DNS's terms, so
  // a wildcard never takes DANE away.
  bool operator_avoids_tls(const RelayHost& host, const asio::ip::address& address) const {
    return relay_.by_mx() && relay_.hosts_avoid_tls.matches(host.name, address);
  }
  bool operator_names(const RelayHost& host, const asio::ip::address& address) const {
    return relay_.by_mx() && (relay_.hosts_require_tls.matches(host.name, address) ||
                              relay_.tls_verify_hosts.matches(host.name, address));
  }

  // What became of TLS on a connection made: what a report counts.
  static std::string_view outcome_of(const RelayLink& link) {
    if (!link.tls_facts) return kStartTlsNotSupported;
    if (link.tls_facts->verified || link.policy != TlsPolicy::sts_testing) return kResultSuccess;
    return result_type_of(link.upstream.tls_verify_result());
  }

  std::string label(const RelayHost& host) const {
    return metrics_label_.empty() ? label_of(host) : metrics_label_;
  }

  asio::awaitable<std::vector<tcp::endpoint>> resolve(const RelayHost& host) {
    error_code ec;
    const auto address = asio::ip::make_address(host.name, ec);
    if (!ec) co_return std::vector<tcp::endpoint>{{address, host.port}};
    tcp::resolver resolver(co_await asio::this_coro::executor);
    const auto results = co_await resolver.async_resolve(
        host.name, std::to_string(host.port), asio::redirect_error(asio::use_awaitable, ec));
    std::vector<tcp::endpoint> endpoints;
    if (ec) {
      last_why_ = "cannot resolve the name: " + ec.message();
      co_return endpoints;
    }
    for (const auto& entry : results) endpoints.push_back(entry.endpoint());
    co_return endpoints;
  }

  tls::ConnectParameters parameters_for(const RelayHost& host, const asio::ip::address& address) {
    tls::ConnectParameters p;
    p.peer = host.name + ":" + std::to_string(host.port);
    p.sni = relay_.tls_sni.empty() ? host.name : relay_.tls_sni;
    if (relay_.tls_verify_cert_hostnames.matches(host.name, address)) p.names = {host.name};
    p.verification = relay_.tls_verify_hosts.matches(host.name, address)
                         ? tls::ServerVerification::verify
                         : tls::ServerVerification::try_verify;
    return p;
  }

  asio::awaitable<Attempt> try_address(const RelayTarget& target, const tcp::endpoint& endpoint,
                                       bool in_clear, std::unique_ptr<RelayLink>& out) {
    const RelayHost& host = target.host;
    auto link = std::make_unique<RelayLink>(co_await asio::this_coro::executor, deadlines_,
                                            std::string(log_id_));
    link->host = host;
    if (operator_avoids_tls(host, endpoint.address())) {
      link->policy = TlsPolicy::relay_flags;
      link->tls_avoided = true;
    } else {
      link->policy = target.policy;
      link->tls_required_by_dns = target.tls_required;
      link->dane = target.dane;
      link->tls_base = target.tls_base;
      if (link->policy == TlsPolicy::opportunistic && operator_names(host, endpoint.address())) {
        link->policy = TlsPolicy::relay_flags;
      }
    }
    link->metrics_label = label(host);
    link->endpoint = endpoint;
    link->label =
        host.name + " [" + endpoint.address().to_string() + "]:" + std::to_string(endpoint.port());
    link->upstream.set_timeout(bounded(relay_.command_timeout));
    auto attempt = co_await converse(*link, in_clear);
    link->upstream.set_timeout(relay_.command_timeout);
    if (link->upstream.open()) {
      error_code ec;
      const auto local = link->upstream.socket().local_endpoint(ec);
      if (!ec) attempt.sending_ip = local.address().to_string();
    }
    if (attempt.next == Next::done) {
      attempt.result = outcome_of(*link);
      log_connection(*link);
      out = std::move(link);
    } else if (!link->upstream.lost()) {
      co_await link->upstream.quit(kQuitTimeout);  // RFC 5321 4.1.1.10: not just a close
    }
    co_return attempt;
  }

  // Greeting, EHLO, STARTTLS and AUTH as the policy says, on a new connection.
  asio::awaitable<Attempt> converse(RelayLink& link, bool in_clear) {
    const RelayHost& host = link.host;
    const auto& endpoint = link.endpoint;
    Upstream& up = link.upstream;
    const auto address = endpoint.address();
    // Credentials are for the operator's relay hosts, never for a domain's MX.
    const Credential* credential =
        relay_.by_mx() ? nullptr : policy_.credentials.find(host.name, host.port);
    const bool require_tls = relay_.hosts_require_tls.matches(host.name, address) || credential ||
                             link.tls_required_by_dns;
    const bool implicit = std::count(relay_.tls_on_connect_ports.begin(),
                                     relay_.tls_on_connect_ports.end(), endpoint.port()) > 0;
    auto parameters = parameters_for(host, address);
    if (!link.dane.empty()) {  // DANE: verified against the TLSA records, whatever else says
      parameters.dane = link.dane;
      parameters.names = {host.name};
      if (!link.tls_base.empty()) {  // the TLSA base domain first: OpenSSL's reference name
        parameters.names.insert(parameters.names.begin(), link.tls_base);
        parameters.sni = link.tls_base;
      }
      parameters.verification = tls::ServerVerification::verify;
    } else if (link.policy == TlsPolicy::sts_enforce || link.policy == TlsPolicy::sts_testing) {
      // MTA-STS (RFC 8461 4.2): PKIX for the MX host's name; enforced, or only recorded.
      parameters.names = {host.name};
      if (link.policy == TlsPolicy::sts_enforce) {
        parameters.verification = tls::ServerVerification::verify;
      }
    }
    const bool verify = parameters.verification == tls::ServerVerification::verify;

    Upstream::Target target{.endpoint = endpoint, .host = host.name, .port = endpoint.port()};
    const bool connected = co_await up.connect(target, bounded(relay_.connect_timeout));
    if (!connected) co_return Attempt{Next::next_address, "cannot connect", "4.4.1", "connect"};
    if (implicit) {
      const bool secured = co_await up.start_tls(policy_.tls, parameters);
      if (!secured) {
        co_return Attempt{Next::next_address, "TLS on connect failed", "4.7.5", "tls_failed",
                          result_type_of(up.tls_verify_result())};
      }
      record_tls(link);
    }
    const auto greeting = co_await up.read_reply();
    if (greeting.status != smtp::ReplyScan::Status::complete) {
      co_return Attempt{Next::next_address, "no greeting", "4.4.1", "greeting"};
    }
    if (greeting.code != 220) {
      co_return Attempt{Next::next_address, "greeted with \"" + one_line(up.reply(greeting)) + "\"",
                        "4.4.1", "greeting"};
    }
    up.consume(greeting);
    auto attempt = co_await ehlo(link);
    if (attempt.next != Next::done) co_return attempt;

    if (!implicit && !in_clear) {
      attempt = co_await negotiate_tls(link, parameters, require_tls, verify);
      if (attempt.next != Next::done) co_return attempt;
    } else if (in_clear && require_tls) {
      co_return Attempt{Next::next_host, "TLS required and not to be had", "4.7.5", "tls_required"};
    }
    if (!link.tls_facts && require_tls) {
      co_return Attempt{Next::next_host, "TLS required and not offered", "4.7.5", "tls_required",
                        kStartTlsNotSupported};
    }
    if (credential) {
      attempt = co_await authenticate(link, *credential);
      if (attempt.next != Next::done) co_return attempt;
    }
    co_return Attempt{Next::done, {}};
  }

  asio::awaitable<Attempt> ehlo(RelayLink& link) {
    Upstream& up = link.upstream;
    const auto reply = co_await up.ehlo(relay_.helo);
    if (reply.scan.status != smtp::ReplyScan::Status::complete) {
      co_return Attempt{Next::next_address, "no reply to EHLO", "4.4.1", "ehlo"};
    }
    if (reply.scan.code != 250) {
      co_return Attempt{Next::next_address,
                        "EHLO refused: \"" + one_line(up.reply(reply.scan)) + "\"", "4.4.1",
                        "ehlo"};
    }
    link.ehlo_reply = std::string(up.reply(reply.scan));
    link.capabilities = reply.capabilities;
    up.consume(reply.scan);
    co_return Attempt{Next::done, {}};
  }

  void record_tls(RelayLink& link) const {
    link.tls_facts = tls::gather_session_facts(link.upstream.tls()->native_handle(),
                                               tls::ClientCertificateRequest::none,
                                               policy_.config.tls_peerdn_format);
  }

  // STARTTLS as Exim's smtp transport does it.
  asio::awaitable<Attempt> negotiate_tls(RelayLink& link, const tls::ConnectParameters& parameters,
                                         bool require_tls, bool verify) {
    const RelayHost& host = link.host;
    const bool avoid = relay_.hosts_avoid_tls.matches(host.name, link.endpoint.address());
    if (avoid || !link.capabilities.starttls) co_return Attempt{Next::done, {}};
    Upstream& up = link.upstream;
    const auto started = co_await up.starttls(policy_.tls, parameters);
    switch (started.outcome) {
      case Upstream::StartTls::secured:
        break;
      case Upstream::StartTls::refused: {
        const std::string said = one_line(up.reply(started.scan));
        const bool temporary = started.scan.code / 100 == 4;
        up.consume(started.scan);
        if (require_tls) {
          co_return Attempt{Next::next_host, "STARTTLS refused (\"" + said + "\"), TLS required",
                            "4.7.5", "tls_required", kStartTlsNotSupported};
        }
        if (temporary && !relay_.tls_tempfail_tryclear) {
          co_return Attempt{Next::next_host, "STARTTLS refused (\"" + said + "\")", "4.7.5",
                            "tls_failed", kStartTlsNotSupported};
        }
        spdlog::info("{} {} refused STARTTLS (\"{}\"): going on in the clear", log_id_, link.label,
                     said);
        co_return Attempt{Next::done, {}};
      }
      case Upstream::StartTls::failed: {
        const std::string why = "TLS negotiation failed";
        const std::string_view result = result_type_of(up.tls_verify_result());
        if (verify) {
          co_return Attempt{Next::next_host, why + " (certificate must verify)", "4.7.5", "verify",
                            result};
        }
        if (require_tls || !relay_.tls_tempfail_tryclear) {
          co_return Attempt{Next::next_host, why, "4.7.5", "tls_failed", result};
        }
        co_return Attempt{Next::again_in_clear, why, "4.4.1", "connect", result};
      }
    }
    record_tls(link);
    co_return co_await ehlo(link);  // RFC 3207: what was said before TLS is forgotten
  }

  asio::awaitable<Attempt> authenticate(RelayLink& link, const Credential& credential) {
    Upstream& up = link.upstream;
    const auto mechanism = smtp::choose_sasl_mechanism(link.capabilities);
    if (!mechanism) {
      co_return Attempt{Next::next_host, "offers no AUTH PLAIN or LOGIN", "4.7.0", "auth"};
    }
    smtp::ReplyScan scan{smtp::ReplyScan::Status::malformed};
    if (*mechanism == smtp::SaslMechanism::plain) {
      std::string line = smtp::auth_plain_command(credential.user, credential.password);
      scan = co_await up.command(line);
      OPENSSL_cleanse(line.data(), line.size());
    } else {
      scan = co_await up.command(smtp::kAuthLoginCommand);
      for (const std::string* value : {&credential.user, &credential.password}) {
        if (scan.status != smtp::ReplyScan::Status::complete || scan.code != 334) break;
        up.consume(scan);
        std::string line = smtp::sasl_response_line(*value);
        scan = co_await up.command(line);
        OPENSSL_cleanse(line.data(), line.size());
      }
    }
    if (scan.status != smtp::ReplyScan::Status::complete) {
      co_return Attempt{Next::next_address, "lost during AUTH", "4.4.1", "auth"};
    }
    if (scan.code != 235) {
      const std::string said = one_line(up.reply(scan));
      up.consume(scan);
      if (policy_.metrics) policy_.metrics->auth(link.metrics_label, "refused");
      co_return Attempt{Next::next_host,
                        "AUTH as " + credential.user + " refused: \"" + said + "\"", "4.7.0",
                        "auth"};
    }
    up.consume(scan);
    link.auth_user = credential.user;
    if (policy_.metrics) policy_.metrics->auth(link.metrics_label, "ok");
    co_return Attempt{Next::done, {}};
  }

  // Exim's fields for the connection, and Postfix's line for the TLS outcome.
  void log_connection(const RelayLink& link) {
    std::string tls_fields = "X=none";
    if (const auto& t = link.tls_facts) {
      tls_fields = "X=" + t->exim_cipher_field() + " CV=" + (t->verified ? "yes" : "no");
      if (t->peer) tls_fields += " DN=\"" + log::escape(t->peer->subject, 200) + "\"";
      const std::string sni = !relay_.tls_sni.empty() ? relay_.tls_sni
                              : link.tls_base.empty() ? link.host.name
                                                      : link.tls_base;
      if (tls::sni_may_be_sent(sni)) tls_fields += " SNI=\"" + sni + "\"";
      spdlog::info("{} {} TLS connection established to {}: {} with cipher {} ({}/{} bits)",
                   log_id_, t->verified ? "Verified" : "Untrusted", link.label, t->protocol,
                   t->cipher, t->cipher_bits, t->cipher_algorithm_bits);
    }
    // Routing by MX, where the terms came from and, when TLS fell short of the policy's
    // promise (MTA-STS testing), RFC 8460's word for it.
    std::string policy_fields;
    if (relay_.by_mx()) {
      policy_fields = " policy=" + std::string(to_string(link.policy));
      const auto outcome = outcome_of(link);
      if (outcome != kResultSuccess) policy_fields += " result=" + std::string(outcome);
    }
    spdlog::info("{} relay connection H={} {}{} TLS={}{}", log_id_, link.label, tls_fields,
                 link.auth_user.empty() ? "" : " AUTH=" + log::escape(link.auth_user, 64),
                 tls_level(link), policy_fields);
  }

  const RelayPolicy& policy_;
  const RelayConfig& relay_;
  DeadlineQueue& deadlines_;
  std::string_view log_id_;
  std::string metrics_label_;  // empty: each relay host's own
  std::chrono::steady_clock::time_point give_up_at_;
  std::string last_why_;
};

}  // namespace

RelayLink::RelayLink(const asio::any_io_executor& executor, DeadlineQueue& deadlines,
                     std::string id)
    : log_id(std::move(id)),
      deadline(deadlines, *this),
      upstream(executor, deadline, log_id, "relay host") {}

asio::awaitable<RelayConnectResult> connect_relay(const RelayPolicy& policy,
                                                  DeadlineQueue& deadlines, std::string log_id) {
  std::vector<RelayTarget> targets;
  for (const RelayHost& host : policy.config.relay.hosts) {
    targets.emplace_back();
    targets.back().host = host;
  }
  Connector connector(policy, deadlines, log_id, {});
  auto result = co_await connector.run(targets);
  co_return result;
}

asio::awaitable<RelayConnectResult> connect_targets(
    const RelayPolicy& policy, std::vector<RelayTarget> targets, std::string metrics_label,
    std::chrono::steady_clock::time_point give_up_at, DeadlineQueue& deadlines,
    std::string log_id) {
  Connector connector(policy, deadlines, log_id, std::move(metrics_label), give_up_at);
  auto result = co_await connector.run(targets);
  co_return result;
}

}  // namespace stp::outbound
