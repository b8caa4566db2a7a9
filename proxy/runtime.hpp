// What the server shares with the sessions of either direction, and how it sees them: a
// Connection it can tell to stop, and a SessionFactory per kind of listener that starts one
// for each accepted socket. The server knows no direction's session; main.cpp plugs them in.
#pragma once

#include "metrics/metrics.hpp"
#include "proxy/config.hpp"
#include "proxy/deadline.hpp"
#include "proxy/memory_return.hpp"
#include "tls/tls_context.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <list>
#include <memory>
#include <string>

namespace stp {

// One session, as the server sees it. Both calls come on the session's own thread.
class Connection {
 public:
  // A session with no mail transaction open is told 421 and closed at once, the others when
  // their transaction ends.
  virtual void drain() = 0;
  // Told 421 and closed now; an unfinished message is abandoned.
  virtual void terminate() = 0;

 protected:
  ~Connection() = default;
};

// The sessions of one worker thread; touched only on that thread.
using ConnectionList = std::list<Connection*>;

// What the sessions of one worker thread share; touched only on that thread.
struct WorkerState {
  ConnectionList sessions;
  DeadlineQueue deadlines;
  MemoryReturn memory;
};

// Lives as long as the server; shared by every thread.
struct Runtime {
  Runtime(const Config& config_in, metrics::Metrics& metrics_in,
          std::shared_ptr<const tls::ServerContext> tls)
      : config(config_in), metrics(metrics_in), server_tls(std::move(tls)) {}

  std::shared_ptr<const tls::ServerContext> current_tls() const { return server_tls.load(); }

  const Config& config;
  metrics::Metrics& metrics;
  std::atomic<std::shared_ptr<const tls::ServerContext>> server_tls;  // swapped by a reload
  // Connections accepted and not yet closed: counted by the acceptor (for --max-connections)
  // before the session exists, and uncounted when it is destroyed.
  std::atomic<std::size_t> sessions_alive{0};
  // The MTA's EHLO reply to the probe (proxy-v2 mode); null until one arrived.
  std::atomic<std::shared_ptr<const std::string>> mta_ehlo_reply;
  std::atomic<bool> mta_probed{false};  // the first probe has finished
};

class SessionFactory {
 public:
  // Starts a session for `socket`, accepted on config.listeners[listener_index], on the calling
  // thread (the one `worker` belongs to); it stays in worker.sessions until it ends and then
  // uncounts itself from sessions_alive.
  virtual void start(boost::asio::ip::tcp::socket socket, std::size_t listener_index,
                     WorkerState& worker) = 0;
  // Once, on `io` (the first worker's loop), before the first session: the direction's own
  // work (a health probe); stopped when the server drains.
  virtual void start_serving(boost::asio::io_context& /*io*/) {}
  virtual void stop_serving() {}
  // Whether the direction can serve now, for /readyz (called from any thread).
  virtual bool ready() const { return true; }

 protected:
  ~SessionFactory() = default;
};

}  // namespace stp
