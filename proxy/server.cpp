// Listeners, worker threads, signals, reload and drain; see server.hpp.
#include "proxy/server.hpp"

#include <algorithm>

#include "proxy/log.hpp"

#include <fmt/chrono.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

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
  for (const auto& listener : config_.listeners) {
    tcp::acceptor acceptor(workers_[0]->io);
    error_code ec;
    acceptor.open(listener.endpoint.protocol(), ec);
    if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec && listener.endpoint.address().is_v6()) {
      acceptor.set_option(asio::ip::v6_only(false), ec);  // [::] takes IPv4 clients too
    }
    if (!ec) acceptor.bind(listener.endpoint, ec);
    if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      throw ConfigError("--listen " + metrics::endpoint_label(listener.endpoint) + ": " +
                        ec.message());
    }
    acceptors_.push_back(std::move(acceptor));
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

Server::Worker& Server::next_worker() {
  auto& worker = *workers_[next_worker_];
  next_worker_ = (next_worker_ + 1) % workers_.size();
  return worker;
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

asio::awaitable<void> Server::accept_loop(tcp::acceptor& acceptor, std::size_t listener_index) {
  const auto& listener = config_.listeners[listener_index];
  asio::steady_timer backoff(acceptor.get_executor());
  while (acceptor.is_open()) {
    auto& worker = next_worker();
    error_code ec;
    tcp::socket socket =
        co_await acceptor.async_accept(worker.io, asio::redirect_error(asio::use_awaitable, ec));
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
    if (ec) {
      // Out of file descriptors or memory: back off rather than spin on accept.
      spdlog::error("accept on {} failed: {}; retrying in 100 ms",
                    metrics::endpoint_label(listener.endpoint), ec.message());
      backoff.expires_after(std::chrono::milliseconds(100));
      co_await backoff.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    if (runtime_.sessions_alive.load() >= config_.max_connections) {
      refuse_over_limit(std::move(socket), listener);
      continue;
    }
    runtime_.sessions_alive.fetch_add(1);
    // The session is created on its own thread, which owns its registration.
    asio::post(worker.io, [this, &worker, listener_index, socket = std::move(socket)]() mutable {
      factory_for(listener_index).start(std::move(socket), listener_index, worker.state);
    });
  }
}

// --max-connections: a plain port hears 421 4.7.0, a TLS port is just closed (a reply would
// cost a handshake). The reply fits any socket buffer, so it is written without waiting.
void Server::refuse_over_limit(tcp::socket socket, const Listener& listener) {
  metrics_.rejected(metrics::Rejection::max_connections).Increment();
  const auto now = std::chrono::steady_clock::now();
  if (now - last_over_limit_log_ > std::chrono::seconds(10)) {
    last_over_limit_log_ = now;
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
  for (auto& acceptor : acceptors_) {
    error_code ignored;
    acceptor.close(ignored);
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
  for (std::size_t i = 0; i < acceptors_.size(); ++i) {
    asio::co_spawn(workers_[0]->io, accept_loop(acceptors_[i], i), asio::detached);
    const Listener& listener = config_.listeners[i];
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
