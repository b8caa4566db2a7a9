// Starts one step of a session's coroutine, for both directions: the session is kept alive
// and counted awake (MemoryReturn) until the step ends or parks, and an exception (a bug) is
// logged and ends that session only, never the process.
#pragma once

#include "proxy/memory_return.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>

#include <exception>
#include <memory>

namespace stp {

template <class Session>
void spawn_session(const std::shared_ptr<Session>& session, boost::asio::awaitable<void> step,
                   const boost::asio::any_io_executor& executor, MemoryReturn& memory) {
  boost::asio::co_spawn(executor, std::move(step),
                        [session, awake = AwakeSession(memory)](std::exception_ptr e) {
                          if (!e) return;
                          try {
                            std::rethrow_exception(e);
                          } catch (const std::exception& ex) {
                            spdlog::error("session ended by an internal error: {}", ex.what());
                          }
                        });
}

}  // namespace stp
