// An inbound session's link to the MTA: opening it when a command needs it, identifying the
// client (XCLIENT, or the PROXY v2 header) and replaying its greeting, and giving it back
// while the client idles. The client hears the outcome from client_io.cpp.
#include "inbound/session.hpp"

#include "proxy/log.hpp"
#include "smtp/proxy_protocol.hpp"
#include "smtp/received_header.hpp"

namespace stp::inbound {
namespace asio = boost::asio;

namespace {
constexpr auto kBackendConnectTimeout = std::chrono::seconds(30);
// QUIT to an idle client's MTA connection and its reply: the client's next command waits.
constexpr auto kBackendReleaseTimeout = std::chrono::seconds(2);
}  // namespace

// Connects, and makes the MTA's session the client's: the PROXY header or XCLIENT, and the
// client's greeting again when the MTA has not heard it. `keep_greeting`: the client is to be
// greeted with the MTA's own words (Attach::greeting).
asio::awaitable<Session::Attach> Session::connect_and_identify(bool keep_greeting) {
  const auto start = Clock::now();
  const bool connected = co_await mta_.connect(services_.mta, kBackendConnectTimeout);
  services_.metrics.backend_connect_duration().Observe(
      std::chrono::duration<double>(Clock::now() - start).count());
  if (!connected) {
    services_.metrics.backend_connect_failures().Increment();
    co_return Attach::failed(Attach::Failure::unreachable);
  }
  if (std::exchange(link_, MtaLink::attached) == MtaLink::released) {
    spdlog::debug("{} mail server connection reopened for {}", id_, client_label_);
  }
  const bool proxy_v2 = config_.backend_metadata == BackendMetadata::proxy_v2;
  if (proxy_v2 && !co_await mta_.write(proxy_v2_header()))
    co_return Attach::failed(Attach::Failure::lost);
  const auto greeting = co_await mta_.read_reply();
  if (greeting.status != smtp::ReplyScan::Status::complete)
    co_return Attach::failed(Attach::Failure::unreachable);
  Attach result;
  if (greeting.code / 100 != 2) {
    spdlog::warn("{} mail server greeted {} with \"{}\"", id_, client_label_,
                 log::escape(mta_.reply(greeting), 200));
    result.failure = Attach::Failure::greeting;
  }
  if (keep_greeting) result.greeting = mta_.reply(greeting);
  mta_.consume(greeting);
  if (result.failure != Attach::Failure::none) co_return result;
  if (config_.backend_metadata == BackendMetadata::xclient) {
    auto identified = co_await identify_with_xclient(keep_greeting);
    if (identified.failure != Attach::Failure::none) co_return identified;
    result.greeting = std::move(identified.greeting);
  }
  auto replayed = co_await replay_greeting();
  if (replayed.failure != Attach::Failure::none) co_return replayed;
  co_return result;
}

// Identifies the client with XCLIENT, or refuses it: an MTA that took its mail as coming from
// the proxy's own address may relay for anyone. After XCLIENT the MTA greets anew (220): with
// `keep_greeting`, that is the greeting the client hears.
asio::awaitable<Session::Attach> Session::identify_with_xclient(bool keep_greeting) {
  const auto ehlo = co_await mta_.ehlo(config_.hostname);
  if (ehlo.scan.status != smtp::ReplyScan::Status::complete)
    co_return Attach::failed(Attach::Failure::lost);
  mta_.consume(ehlo.scan);
  const auto& capabilities = ehlo.capabilities;
  if (ehlo.scan.code != 250 || !capabilities.xclient || !capabilities.advertises("ADDR")) {
    spdlog::error(
        "{} mail server does not offer XCLIENT with ADDR to this proxy; refusing {} "
        "(authorise the proxy, e.g. Postfix smtpd_authorized_xclient_hosts, or set "
        "--backend-metadata none)",
        id_, client_label_);
    co_return Attach::failed(Attach::Failure::identity);
  }
  if (capabilities.advertises("NAME") || capabilities.advertises("REVERSE_NAME")) {
    co_await wait_for_client_name();
  }
  const auto accepted = co_await mta_.command(build_xclient_command(capabilities, identity_));
  if (accepted.status != smtp::ReplyScan::Status::complete)
    co_return Attach::failed(Attach::Failure::lost);
  if (accepted.code / 100 != 2) {
    spdlog::error("{} mail server refused XCLIENT for {}: \"{}\"", id_, client_label_,
                  log::escape(mta_.reply(accepted), 200));
    co_return Attach::failed(Attach::Failure::identity);
  }
  Attach result;
  if (keep_greeting && accepted.code == 220) result.greeting = mta_.reply(accepted);
  mta_.consume(accepted);
  co_return result;
}

// The client's greeting, for an MTA that has not heard it (proxy-v2 before TLS, or a
// connection reopened after an idle release), so its session is the one the client believes
// it has. In proxy-v2 mode this first command also shows whether the MTA took the header: one
// not told to expect it reads it as SMTP lines (its signature even holds a QUIT) and answers
// those first. Without a greeting to replay, a NOOP serves for that.
asio::awaitable<Session::Attach> Session::replay_greeting() {
  const bool proxy_v2 = config_.backend_metadata == BackendMetadata::proxy_v2;
  if (replay_helo_.empty() && !proxy_v2) co_return Attach::failed(Attach::Failure::none);
  const std::string_view command =
      replay_helo_.empty() ? std::string_view("NOOP\r\n") : std::string_view(replay_helo_);
  const auto reply = co_await mta_.command(command);
  const bool complete = reply.status == smtp::ReplyScan::Status::complete;
  if (!complete || reply.code / 100 != 2) {
    const auto said = log::escape(mta_.reply(reply), 200);
    if (proxy_v2) {
      spdlog::error(
          "{} mail server answered \"{}\" right after the PROXY header: it does not take the "
          "header from this proxy (Exim hosts_proxy, Postfix smtpd_upstream_proxy_protocol) "
          "or refused {}; refusing {}",
          id_, said, replay_helo_.empty() ? "NOOP" : "the client's greeting", client_label_);
      co_return Attach::failed(Attach::Failure::identity);
    }
    if (!complete) co_return Attach::failed(Attach::Failure::lost);
    spdlog::warn("{} mail server answered the replayed \"{}\" with \"{}\"", id_,
                 log::escape(command.substr(0, command.size() - 2), 100), said);
    co_return Attach::failed(Attach::Failure::refused);
  }
  // The MTA may offer this connection less than the client was told (the probe's reply, or
  // an earlier connection's): what it offers now is what the session may use.
  if (!replay_helo_.empty()) {
    learn_mta_extensions(extended_helo_ ? mta_.reply(reply) : std::string_view());
  }
  mta_.consume(reply);
  replay_helo_.clear();
  co_return Attach::failed(Attach::Failure::none);
}

// Whether the MTA connection holds nothing that reopening it would not restore: no mail
// transaction or AUTH state, no command or reply in flight, a greeting the MTA accepted (or
// none). The MTA then costs an idle client nothing (a Postfix has 100 smtpd processes).
bool Session::backend_releasable() const {
  return config_.backend_idle_timeout.count() > 0 && attached() && !mta_.lost() && !ending_ &&
         transaction_ == Transaction::none && bdat_message_ == BdatMessage::none &&
         !auth_continuation_ && can_reattach() && pending_.empty() && to_mta_.empty() &&
         !mta_.has_input() && Clock::now() + config_.backend_idle_timeout < deadline_.at();
}

// QUIT and close, bounded; leaves the client's own deadline where it was.
asio::awaitable<void> Session::close_backend() {
  const auto client_deadline = deadline_.at();
  co_await mta_.quit(kBackendReleaseTimeout);
  detach_backend();
  deadline_.arm_at(client_deadline);
}

asio::awaitable<void> Session::release_backend() {
  co_await close_backend();
  services_.metrics.backend_idle_releases().Increment();
  spdlog::debug("{} mail server connection given back while {} is idle", id_, client_label_);
}

// Closes the MTA connection; the next command that needs the MTA opens another, identifies the
// client again and replays its greeting (which can_reattach() says it can).
void Session::detach_backend() {
  mta_.close();
  link_ = MtaLink::released;
  mta_reset_due_ = false;                    // the next MTA session starts clean
  if (helo_state_ == HeloState::accepted) {  // the MTA hears it again when reopened
    replay_helo_ = (extended_helo_ ? "EHLO " : "HELO ") + helo_name_ + "\r\n";
  }
}

// A new MTA connection would be the session the client believes it has: no AUTH to redo, and
// a greeting the MTA accepted and the proxy kept whole (or none).
bool Session::can_reattach() const {
  return !authenticated_ && helo_state_ != HeloState::unknown && helo_name_.size() < kMaxHeloName;
}

std::string Session::proxy_v2_header() const {
  proxy_protocol::V2Header header{
      .source = {identity_.address, identity_.port},
      .destination = {identity_.local_address, identity_.local_port},
  };
  if (tls_facts_) {
    const auto& t = *tls_facts_;
    proxy_protocol::SslInfo ssl{
        .certificate_presented = t.peer != nullptr,
        .certificate_verified = t.verified,
        .resumed = t.resumed,
        .version = t.protocol,
        .cipher = t.cipher,
        .sig_alg = t.server_certificate_signature,
        .key_alg = t.server_key,
        .client_cn = t.peer ? t.peer->common_name : std::string(),
    };
    header.ssl = std::move(ssl);
    header.authority = t.sni;
  }
  return proxy_protocol::encode_v2(header, config_.proxy_v2_max_header);
}

std::string Session::received_header() {
  return build_received_header({
      .helo = helo_name_,
      .extended_helo = extended_helo_,
      .authenticated = authenticated_,
      .client_name = identity_.name.status == ClientName::Status::found
                         ? std::string_view(identity_.name.name)
                         : std::string_view(),
      .client_address = identity_.address,
      .tls = tls_facts_ ? &*tls_facts_ : nullptr,
      .name_certificate = config_.chooses_server_certificate(),
      .hostname = config_.hostname,
      .id = id_,
      .now = std::time(nullptr),
  });
}

}  // namespace stp::inbound
