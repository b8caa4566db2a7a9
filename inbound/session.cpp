// An inbound session's life: start, admission, the stages of its client stream, parking
// between commands, stopping, and the summary line; see session.hpp for the design.
#include "inbound/session.hpp"

#include "proxy/backend_probe.hpp"
#include "proxy/log.hpp"
#include "proxy/spawn_session.hpp"
#include "smtp/address.hpp"

#include <boost/asio/bind_allocator.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <random>

namespace stp::inbound {
namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

namespace {

constexpr auto kNameLookupTimeout = std::chrono::seconds(5);
constexpr std::size_t kDataChunk = 16 * 1024;

std::string endpoint_label(const asio::ip::address& address, std::uint16_t port) {
  return fmt::format("[{}]:{}", unmapped(address).to_string(), port);
}

std::string session_id(std::uint64_t n) {
  // Twelve hex digits: unique within a process, short enough to grep for.
  return fmt::format("{:012X}", n & 0xFFFFFFFFFFFFull);
}

}  // namespace

SessionServices::SessionServices(Runtime& runtime_in)
    : runtime(runtime_in),
      config(runtime_in.config),
      metrics(runtime_in.metrics),
      mta(Upstream::target(config.backend_host, config.backend_port)),
      sessions_per_host(config.max_connections_per_host),
      replies(config.hostname) {
  // Session ids start at a random point so that ids of consecutive runs do not collide.
  next_session_id = (static_cast<std::uint64_t>(std::random_device{}()) << 20);
}

void SessionServices::start(tcp::socket socket, std::size_t listener_index, WorkerState& worker) {
  Session::start(std::make_shared<Session>(std::move(socket), listener_index, *this, worker));
}

struct Session::NameLookup {
  explicit NameLookup(const asio::any_io_executor& executor) : ready(executor) {}
  std::optional<ClientName> result;
  asio::steady_timer ready;  // cancelled when the result arrives
};

Session::Session(tcp::socket client, std::size_t listener_index, SessionServices& services,
                 WorkerState& worker)
    : services_(services),
      config_(services.config),
      listener_(services.config.listeners[listener_index]),
      listener_metrics_(services.metrics.listener(listener_index)),
      worker_(worker),
      registration_(worker.sessions.insert(worker.sessions.end(), this)),
      id_(session_id(services.next_session_id.fetch_add(1, std::memory_order_relaxed))),
      started_(Clock::now()),
      client_(std::move(client)),
      deadline_(worker.deadlines, *this),
      mta_(client_.get_executor(), deadline_, id_, "mail server"),
      client_in_(std::max<std::size_t>(kDataChunk, config_.max_line_length + 2)),
      framer_(config_.max_line_length),
      data_filter_(config_.bare_lf) {
  mta_.set_timeout(config_.smtp_receive_timeout);
  listener_metrics_.connections->Increment();
  listener_metrics_.sessions_active->Increment();
}

Session::~Session() {
  if (counted_for_host_) services_.sessions_per_host.release(identity_.address);
  worker_.sessions.erase(registration_);
  listener_metrics_.sessions_active->Decrement();
  services_.runtime.sessions_alive.fetch_sub(1);
}

void Session::start(std::shared_ptr<Session> session) {
  auto executor = session->client_.get_executor();
  spawn_session(session, session->run(), executor, session->worker_.memory);
}

void Session::drain() {
  if (stop_ == Stop::no) stop_ = Stop::drain;
  if (waiting_for_command_ && transaction_ == Transaction::none) wake();
}

void Session::terminate() {
  stop_ = Stop::terminate;
  wake();
  mta_.cancel();
}

void Session::wake() {
  error_code ignored;
  client_.cancel(ignored);
}

bool Session::should_stop_before_command() const {
  return stop_ == Stop::terminate || (stop_ == Stop::drain && transaction_ == Transaction::none);
}

void Session::violation(metrics::Violation kind) {
  services_.metrics.violation(kind).Increment();
}

void Session::on_deadline_expired() {
  wake();
  mta_.cancel();
}

void Session::on_wake_point() {
  wake();
}

asio::awaitable<void> Session::run() {
  error_code remote_ec, local_ec;
  const auto remote = client_.remote_endpoint(remote_ec);
  const auto local = client_.local_endpoint(local_ec);
  if (remote_ec || local_ec) co_return;  // gone before we looked
  error_code ignored;
  client_.set_option(tcp::no_delay(true), ignored);
  learn_client(remote, local);
  if (config_.proxy_protocol_hosts.matches(remote.address()) && !co_await read_proxy_header()) {
    finish();
    co_return;
  }
  if (!admit_host()) {
    if (!listener_.implicit_tls) {      // a TLS port is closed without a word: a reply would cost
      tls::PlainStream plain(client_);  // a handshake
      co_await say(plain, services_.replies.too_many_from_host_prefix +
                              unmapped(identity_.address).to_string() + "\r\n");
    }
    finish();
    co_return;
  }
  start_client_name_lookup();
  spdlog::debug("{} connect from {} to {}", id_, client_label_,
                endpoint_label(identity_.local_address, identity_.local_port));
  bool opened = false;
  if (listener_.implicit_tls) {
    start_tls_stream();
    if (co_await handshake()) opened = co_await open_backend(*tls_);
  } else {
    tls::PlainStream plain(client_);
    opened = co_await open_backend(plain);
  }
  if (!opened) {
    finish();
    co_return;
  }
  co_await proceed();
}

// The protocol loop, from the start or from where the session was parked.
asio::awaitable<void> Session::proceed() {
  while (true) {
    Outcome outcome = Outcome::close;
    if (stage_ == Stage::tls) {
      outcome = co_await serve(*tls_);
    } else {
      tls::PlainStream plain(client_);
      outcome = co_await serve(plain);
    }
    if (outcome == Outcome::park) {
      park();
      co_return;
    }
    if (outcome == Outcome::close) break;
    const bool secured = co_await handshake();  // (GCC 12: no co_await inside ||)
    if (!secured) break;
    // RFC 3207: the client greets again before anything its greeting would stand for (the
    // proxy has forgotten the cleartext one; an MTA connection still open has not).
    greeting_due_ = true;
    if (attached() && config_.backend_metadata == BackendMetadata::proxy_v2) {
      // Its PROXY header said the client had no TLS: the MTA hears this session's facts on
      // a new connection.
      co_await close_backend();
    }
    if (attached()) {
      mta_reset_due_ = true;  // the MTA saw the plaintext part: it forgets any transaction
    } else if (config_.backend_metadata == BackendMetadata::proxy_v2) {
      // Now the PROXY header can tell whether the client uses TLS. (Without proxy-v2 the MTA
      // is connected at the first command that needs it.)
      const bool attached_now = co_await attach_backend(*tls_, false);
      if (!attached_now) break;
    }
  }
  finish();
}

// Waits for the client's next command holding only this object and a readiness wait: the
// coroutine frames and the group's buffers are given back, and proceed() starts afresh. (The
// wait's operation is allocated to its size: Asio's recycled blocks are a frame's size.)
void Session::park() {
  to_client_.clear();
  to_client_.shrink_to_fit();
  to_mta_.clear();
  to_mta_.shrink_to_fit();
  pending_ = std::vector<PendingReply>();
  auto resume = [self = shared_from_this()](const error_code& ec) {
    self->parked_wait_ = ec;
    auto executor = self->client_.get_executor();
    spawn_session(self, self->proceed(), executor, self->worker_.memory);
  };
  client_.async_wait(tcp::socket::wait_read,
                     asio::bind_allocator(std::allocator<void>(), std::move(resume)));
}

// Everything the session decides from the client's address: set from the connection, and
// again from a trusted load balancer's PROXY header.
void Session::learn_client(const tcp::endpoint& remote, const tcp::endpoint& local) {
  identity_.address = remote.address();
  identity_.port = remote.port();
  identity_.local_address = local.address();
  identity_.local_port = local.port();
  client_label_ = endpoint_label(remote.address(), remote.port());
  advertise_tls_ = config_.tls_advertise_hosts.matches(identity_.address);
  certificate_request_ = tls::ClientCertificateRequest::none;
  if (config_.tls_verify_hosts.matches(identity_.address)) {
    certificate_request_ = tls::ClientCertificateRequest::verify;
  } else if (config_.tls_try_verify_hosts.matches(identity_.address) ||
             config_.tls_require_verified_hosts.matches(identity_.address)) {
    certificate_request_ = tls::ClientCertificateRequest::try_verify;
  }
}

// --max-connections-per-host, counted for the client's real address.
bool Session::admit_host() {
  if (services_.sessions_per_host.acquire(identity_.address)) {
    counted_for_host_ = true;
    return true;
  }
  services_.metrics.rejected(metrics::Rejection::max_connections_per_host).Increment();
  end_reason_ = "too many connections from host";
  spdlog::info("{} {} has {} sessions open already (--max-connections-per-host); refused", id_,
               client_label_, config_.max_connections_per_host);
  return false;
}

void Session::finish() {
  deadline_.cancel();
  if (name_lookup_) name_lookup_->ready.cancel();
  if (tls_ && stage_ == Stage::tls) tls_->shutdown();
  error_code ignored;
  client_.shutdown(tcp::socket::shutdown_both, ignored);
  client_.close(ignored);
  mta_.close();  // mid-transaction, this is what abandons it at the MTA

  const auto elapsed = std::chrono::duration<double>(Clock::now() - started_).count();
  services_.metrics.session_duration().Observe(elapsed);
  // Exim's fields for TLS: X= protocol:cipher:bits, CV= certificate verified, DN=, SNI=.
  std::string tls_fields = "X=none";
  if (tls_facts_) {
    const auto& t = *tls_facts_;
    tls_fields = "X=" + t.exim_cipher_field() + " CV=" + (t.verified ? "yes" : "no");
    if (t.peer) tls_fields += " DN=\"" + log::escape(t.peer->subject, 200) + "\"";
    if (!t.sni.empty()) tls_fields += " SNI=\"" + log::escape(t.sni, 255) + "\"";
  }
  spdlog::info(
      "{} session client={} listener={} {} helo=\"{}\" commands={} rejected={} "
      "messages={}/{}/{} bytes_in={} bytes_out={} duration={:.3f}s end=\"{}\"",
      id_, client_label_, listener_.implicit_tls ? "implicit" : "starttls", tls_fields,
      log::escape(helo_name_, 64), commands_, local_rejects_, messages_accepted_,
      messages_rejected_, messages_tempfailed_, bytes_from_client_, bytes_to_client_, elapsed,
      end_reason_);
}

// The client's name, looked up while the MTA connection is made.
void Session::start_client_name_lookup() {
  if (!config_.client_name_lookup || config_.backend_metadata == BackendMetadata::none) return;
  name_lookup_ = std::make_shared<NameLookup>(client_.get_executor());
  services_.resolver.lookup(identity_.address, client_.get_executor(),
                            [lookup = name_lookup_](ClientName name) {
                              lookup->result = std::move(name);
                              lookup->ready.cancel();
                            });
}

asio::awaitable<void> Session::wait_for_client_name() {
  if (!name_lookup_) co_return;  // lookups off ([UNAVAILABLE]), or the name is settled
  if (!name_lookup_->result) {
    name_lookup_->ready.expires_after(kNameLookupTimeout);
    error_code ignored;
    co_await name_lookup_->ready.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }
  if (name_lookup_->result) {
    identity_.name = *name_lookup_->result;
  } else {
    identity_.name.status = identity_.name.reverse_status =
        ClientName::Status::temporarily_unavailable;
    spdlog::info("{} name lookup for {} timed out", id_, client_label_);
  }
  name_lookup_.reset();  // settled: a reconnection to the MTA uses the same name, at once
}

// proxy-v2 answers a greeting from the probe's EHLO reply: a client that comes before the
// first probe has finished (just after a start) waits for it, bounded, rather than hear that
// the MTA is unreachable.
asio::awaitable<void> Session::wait_for_first_probe() {
  constexpr auto kPoll = std::chrono::milliseconds(20);
  const auto give_up = Clock::now() + BackendProbe::kTimeout + std::chrono::seconds(1);
  asio::steady_timer timer(client_.get_executor());
  while (!services_.runtime.mta_probed.load(std::memory_order_acquire) && !stopping() &&
         Clock::now() < give_up) {
    timer.expires_after(kPoll);
    error_code ignored;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }
}

}  // namespace stp::inbound
