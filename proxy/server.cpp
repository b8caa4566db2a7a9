// Listeners, worker threads, signals, reload and drain; see server.hpp.
#include "proxy/server.hpp"

#include <algorithm>

#include "proxy/log.hpp"

#include <fmt/chrono.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/detail/socket_option.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <sys/socket.h>
#include <sys/stat.h>

#include <thread>

namespace stp {
namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

namespace {

constexpr auto kTerminateWait = std::chrono::seconds(5);
constexpr auto kDrainPoll = std::chrono::milliseconds(50);

std::vector<metrics::ListenerLabels> listener_labels(const std::vector<Listener>& listeners) {
  std::vector<metrics::ListenerLabels> out;
  for (const auto& l : listeners) out.push_back({l.endpoint, l.implicit_tls});
  return out;
}

// Identity of the files behind the TLS context: a change to any (a rename over it, a new
// symlink target, an in-place rewrite) changes this string.
std::string file_signature(const Config& config) {
  std::string signature;
  auto add = [&](const std::string& path) {
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) {
      signature += path + ":missing;";
      return;
    }
    signature += fmt::format("{}:{}:{}:{}.{}:{};", path, st.st_dev, st.st_ino, st.st_mtim.tv_sec,
                             st.st_mtim.tv_nsec, st.st_size);
  };
  for (const auto& f : config.tls_certificates) add(f);
  for (const auto& f : config.tls_privatekeys) add(f);
  if (!config.tls_verify_certificates.empty() && config.tls_verify_certificates != "system") {
    add(config.tls_verify_certificates);
  }
  if (!config.tls_crl.empty()) add(config.tls_crl);
  if (!config.tls_ticket_key_file.empty()) add(config.tls_ticket_key_file);
  for (const auto* chosen :
       {&config.tls_sni_certificates, &config.tls_host_certificates.certificates}) {
    for (const auto& named : *chosen) {
      add(named.certificate);
      if (!named.privatekey.empty()) add(named.privatekey);
    }
  }
  return signature;
}

// Opens and binds `acceptor` to `endpoint`; false with `ec` when it cannot.
bool open_listener(tcp::acceptor& acceptor, const tcp::endpoint& endpoint, bool reuse_port,
                   error_code& ec) {
  using ReusePort = asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec && reuse_port) acceptor.set_option(ReusePort(true), ec);
  if (!ec && endpoint.address().is_v6()) {
    acceptor.set_option(asio::ip::v6_only(false), ec);  // [::] takes IPv4 clients too
  }
  if (!ec) acceptor.bind(endpoint, ec);
  return !ec;
}

}  // namespace

Server::Server(const Config& config, std::shared_ptr<const tls::ServerContext> tls)
    : config_(config),
      metrics_(listener_labels(config.listeners)),
      runtime_(config, metrics_, std::move(tls)),
      workers_([&] {
        std::vector<std::unique_ptr<Worker>> workers;
        for (unsigned i = 0; i < std::max(1u, config.threads); ++i) {
          workers.push_back(std::make_unique<Worker>());
        }
        return workers;
      }()),
      probe_(workers_[0]->io, config, runtime_.mta_ehlo_reply, runtime_.mta_probed),
      signals_(workers_[0]->io, SIGTERM, SIGINT, SIGHUP) {
  for (std::size_t index = 0; index < config_.listeners.size(); ++index) {
    const Listener& listener = config_.listeners[index];
    const auto fail = [&](const error_code& ec) {
      throw ConfigError("--listen " + metrics::endpoint_label(listener.endpoint) + ": " +
                        ec.message());
    };
    error_code ec;
    auto endpoint = listener.endpoint;
    if (workers_.size() > 1) {
      // SO_REUSEPORT would let this process join a port another (of the same user) listens
      // on; a plain bind first is refused there, as with one thread.
      tcp::acceptor probe(workers_[0]->io);
      if (!open_listener(probe, endpoint, false, ec)) fail(ec);
      endpoint = probe.local_endpoint(ec);  // port 0: the one it got, for every thread
      if (ec) fail(ec);
    }
    for (auto& worker : workers_) {
      tcp::acceptor acceptor(worker->io);
      if (open_listener(acceptor, endpoint, workers_.size() > 1, ec)) {
        acceptor.listen(asio::socket_base::max_listen_connections, ec);
      }
      if (ec) fail(ec);
      acceptors_.push_back(
          std::make_unique<Acceptor>(Acceptor{std::move(acceptor), index, *worker}));
    }
  }
  if (config_.metrics_listen) {
    http_.emplace(workers_[0]->io, *config_.metrics_listen, metrics_, [this] { return ready(); });
  }
  publish_certificates(*runtime_.current_tls());
  reload_signature_ = file_signature(config_);
  reply_too_many_connections_ = "421 4.7.0 " + config.hostname + " Error: too many connections\r\n";
}

Server::~Server() = default;

bool Server::ready() const {
  return !draining_.load() && (!serves_inbound() || probe_.mta_up()) &&
         (!relay_ || relay_->ready());
}

template <class Action>
void Server::for_each_session(Action action) {
  for (auto& worker : workers_) {
    asio::post(worker->io, [w = worker.get(), action] {
      // A session may end (and leave the list) inside action; hold it and step first.
      for (auto it = w->state.sessions.begin(); it != w->state.sessions.end();) {
        Connection* session = *it++;
        action(*session);
      }
    });
  }
}

asio::awaitable<void> Server::accept_loop(Acceptor& acceptor) {
  const auto& listener = config_.listeners[acceptor.listener_index];
  asio::steady_timer backoff(acceptor.worker.io);
  while (acceptor.socket.is_open()) {
    error_code ec;
    tcp::socket socket =
        co_await acceptor.socket.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (ec == asio::error::operation_aborted || !acceptor.socket.is_open()) co_return;
    if (ec) {
      // Out of file descriptors or memory: back off rather than spin on accept.
      spdlog::error("accept on {} failed: {}; retrying in 100 ms",
                    metrics::endpoint_label(listener.endpoint), ec.message());
      backoff.expires_after(std::chrono::milliseconds(100));
      co_await backoff.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    // Counted before the check: threads accepting at once cannot both take the last place.
    if (runtime_.sessions_alive.fetch_add(1) >= config_.max_connections) {
      runtime_.sessions_alive.fetch_sub(1);
      refuse_over_limit(std::move(socket), listener, acceptor.worker);
      continue;
    }
    factory_for(acceptor.listener_index)
        .start(std::move(socket), acceptor.listener_index, acceptor.worker.state);
  }
}

// --max-connections: a plain port hears 421 4.7.0, a TLS port is just closed (a reply would
// cost a handshake). The reply fits any socket buffer, so it is written without waiting.
void Server::refuse_over_limit(tcp::socket socket, const Listener& listener, Worker& worker) {
  metrics_.rejected(metrics::Rejection::max_connections).Increment();
  const auto now = std::chrono::steady_clock::now();
  if (now - worker.last_over_limit_log > std::chrono::seconds(10)) {
    worker.last_over_limit_log = now;
    spdlog::warn("{} sessions open (--max-connections); refusing new connections",
                 config_.max_connections);
  }
  error_code ignored;
  if (!listener.implicit_tls) {
    socket.non_blocking(true, ignored);
    socket.write_some(asio::buffer(reply_too_many_connections_), ignored);
  }
  socket.close(ignored);
}

void Server::publish_certificates(const tls::ServerContext& tls) {
  std::vector<metrics::Metrics::ServerCertificate> expiry;
  for (const auto& c : tls.certificates()) {
    expiry.push_back({c.label, c.file, c.not_after});
    const auto not_after = static_cast<std::time_t>(c.not_after);
    spdlog::info("TLS certificate \"{}\" from {} valid until {:%Y-%m-%d %H:%M:%S} UTC",
                 log::escape(c.label, 300), log::escape(c.file, 300), fmt::gmtime(not_after));
  }
  metrics_.set_certificate_expiry(expiry);
}

void Server::reload(std::string_view why) {
  reload_signature_ = file_signature(config_);
  try {
    auto fresh = tls::ServerContext::create(server_tls_options(config_));
    runtime_.server_tls.store(fresh);
    publish_certificates(*fresh);
    metrics_.reload(metrics::Reload::success).Increment();
    spdlog::info("TLS certificates reloaded ({})", why);
  } catch (const std::exception& e) {
    metrics_.reload(metrics::Reload::failure).Increment();
    spdlog::error("TLS reload ({}) failed, keeping the certificates in use: {}", why, e.what());
  }
}

asio::awaitable<void> Server::watch_certificate_files() {
  if (file_signature(config_).empty()) co_return;  // no files: nothing can change
  asio::steady_timer timer(workers_[0]->io);
  while (!draining_) {
    timer.expires_after(config_.reload_check_interval);
    error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (draining_) co_return;
    if (file_signature(config_) != reload_signature_) reload("certificate files changed");
  }
}

asio::awaitable<void> Server::drain() {
  spdlog::info("draining: no new connections; {} sessions in flight get up to {}s",
               runtime_.sessions_alive.load(), config_.shutdown_grace.count());
  for (auto& acceptor : acceptors_) {  // each on its own thread, where its accept waits
    asio::post(acceptor->worker.io, [&socket = acceptor->socket] {
      error_code ignored;
      socket.close(ignored);
    });
  }
  probe_.stop();
  if (relay_) relay_->stop_serving();
  for_each_session([](Connection& s) { s.drain(); });

  asio::steady_timer timer(workers_[0]->io);
  auto wait_until = [&](std::chrono::steady_clock::time_point deadline) -> asio::awaitable<bool> {
    while (runtime_.sessions_alive.load() > 0 && std::chrono::steady_clock::now() < deadline) {
      timer.expires_after(kDrainPoll);
      error_code ignored;
      co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }
    co_return runtime_.sessions_alive.load() == 0;
  };
  const auto start = std::chrono::steady_clock::now();
  if (!co_await wait_until(start + config_.shutdown_grace)) {
    spdlog::warn("drain: {} sessions still open after {}s; closing them with 421",
                 runtime_.sessions_alive.load(), config_.shutdown_grace.count());
    for_each_session([](Connection& s) { s.terminate(); });
    co_await wait_until(std::chrono::steady_clock::now() + kTerminateWait);
  }
  if (http_) http_->stop();
  for (auto& worker : workers_) worker->io.stop();
}

void Server::on_signal(const error_code& ec, int signal) {
  if (ec) return;
  if (signal == SIGHUP) {
    reload("SIGHUP");
  } else if (!draining_.exchange(true)) {
    spdlog::info("received signal {}; shutting down", signal);
    asio::co_spawn(workers_[0]->io, drain(), asio::detached);
  } else {
    spdlog::warn("received signal {} again; closing every session now", signal);
    for_each_session([](Connection& s) { s.terminate(); });
  }
  signals_.async_wait([this](const error_code& e, int s) { on_signal(e, s); });
}

bool Server::serves_inbound() const {
  return std::any_of(config_.listeners.begin(), config_.listeners.end(),
                     [](const Listener& l) { return l.direction == Direction::inbound; });
}

SessionFactory& Server::factory_for(std::size_t listener_index) const {
  return config_.listeners[listener_index].direction == Direction::relay ? *relay_ : *inbound_;
}

int Server::run(SessionFactory& inbound, SessionFactory* relay) {
  inbound_ = &inbound;
  relay_ = relay;
  for (const Listener& listener : config_.listeners) {
    if (listener.direction == Direction::relay && !relay_) {
      throw ConfigError("--relay-listen: this build has no outbound relay yet");
    }
  }
  for (auto& acceptor : acceptors_) {
    asio::co_spawn(acceptor->worker.io, accept_loop(*acceptor), asio::detached);
  }
  for (const Listener& listener : config_.listeners) {
    spdlog::info("listening on {} ({}{})", metrics::endpoint_label(listener.endpoint),
                 listener.implicit_tls ? "implicit TLS" : "STARTTLS",
                 listener.direction == Direction::relay ? ", outbound relay" : "");
  }
  if (http_) {
    http_->start();
    spdlog::info("metrics and health on http://{}/metrics",
                 metrics::endpoint_label(*config_.metrics_listen));
  }
  if (serves_inbound()) probe_.start();  // relaying out only: there is no MTA behind
  if (relay_) relay_->start_serving(workers_[0]->io);
  asio::co_spawn(workers_[0]->io, watch_certificate_files(), asio::detached);
  signals_.async_wait([this](const error_code& ec, int signal) { on_signal(ec, signal); });

  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
  for (auto& worker : workers_) guards.push_back(asio::make_work_guard(worker->io));
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < workers_.size(); ++i) {
    threads.emplace_back([this, i] { workers_[i]->io.run(); });
  }
  workers_[0]->io.run();
  for (auto& thread : threads) thread.join();
  spdlog::info("stopped");
  return 0;
}

}  // namespace stp
