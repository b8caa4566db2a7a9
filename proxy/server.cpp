// Listeners, worker threads and signals; see server.hpp.
#include "proxy/server.hpp"

#include "proxy/log.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <thread>

namespace stp {
namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

namespace {

std::string listen_label(const tcp::endpoint& endpoint) {
  if (endpoint.address().is_v6()) {
    return "[" + endpoint.address().to_string() + "]:" + std::to_string(endpoint.port());
  }
  return endpoint.address().to_string() + ":" + std::to_string(endpoint.port());
}

}  // namespace

Server::Server(const Config& config, std::shared_ptr<const tls::ServerContext> tls)
    : config_(config),
      services_(config, std::move(tls)),
      workers_([&] {
        std::vector<std::unique_ptr<asio::io_context>> workers;
        for (unsigned i = 0; i < std::max(1u, config.threads); ++i) {
          workers.push_back(std::make_unique<asio::io_context>(1));
        }
        return workers;
      }()),
      signals_(*workers_[0], SIGTERM, SIGINT) {
  for (const auto& listener : config_.listeners) {
    tcp::acceptor acceptor(*workers_[0]);
    error_code ec;
    acceptor.open(listener.endpoint.protocol(), ec);
    if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec && listener.endpoint.address().is_v6()) {
      acceptor.set_option(asio::ip::v6_only(false), ec);  // [::] takes IPv4 clients too
    }
    if (!ec) acceptor.bind(listener.endpoint, ec);
    if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      throw ConfigError("--listen " + listen_label(listener.endpoint) + ": " + ec.message());
    }
    acceptors_.push_back(std::move(acceptor));
  }
}

Server::~Server() = default;

asio::io_context& Server::next_worker() {
  auto& worker = *workers_[next_worker_];
  next_worker_ = (next_worker_ + 1) % workers_.size();
  return worker;
}

asio::awaitable<void> Server::accept_loop(tcp::acceptor& acceptor, const Listener& listener) {
  asio::steady_timer backoff(acceptor.get_executor());
  while (acceptor.is_open()) {
    auto& worker = next_worker();
    error_code ec;
    tcp::socket socket =
        co_await acceptor.async_accept(worker, asio::redirect_error(asio::use_awaitable, ec));
    if (ec == asio::error::operation_aborted) co_return;
    if (ec) {
      // Out of file descriptors or memory: back off rather than spin on accept.
      spdlog::error("accept on {} failed: {}; retrying in 100 ms",
                    listen_label(listener.endpoint), ec.message());
      backoff.expires_after(std::chrono::milliseconds(100));
      co_await backoff.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    auto session = std::make_shared<Session>(std::move(socket), listener, services_);
    asio::co_spawn(worker, session->run(), [session](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        spdlog::error("session ended by an internal error: {}", ex.what());
      }
    });
  }
}

int Server::run() {
  for (std::size_t i = 0; i < acceptors_.size(); ++i) {
    asio::co_spawn(*workers_[0], accept_loop(acceptors_[i], config_.listeners[i]),
                   asio::detached);
    spdlog::info("listening on {} ({})", listen_label(config_.listeners[i].endpoint),
                 config_.listeners[i].implicit_tls ? "implicit TLS" : "STARTTLS");
  }
  signals_.async_wait([this](const error_code& ec, int signal) {
    if (ec) return;
    spdlog::info("received signal {}; shutting down", signal);
    for (auto& acceptor : acceptors_) {
      error_code ignored;
      acceptor.close(ignored);
    }
    for (auto& worker : workers_) worker->stop();
  });

  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
  for (auto& worker : workers_) guards.push_back(asio::make_work_guard(*worker));
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < workers_.size(); ++i) {
    threads.emplace_back([this, i] { workers_[i]->run(); });
  }
  workers_[0]->run();
  for (auto& thread : threads) thread.join();
  spdlog::info("stopped");
  return 0;
}

}  // namespace stp
