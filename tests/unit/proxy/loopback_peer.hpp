// A loopback SMTP peer for the tests of Upstream and of what runs over it (relay): a plain
// TCP acceptor on 127.0.0.1 whose one connection plays a script written as a coroutine, and a
// fixture that runs that script and the code under test side by side on one io_context,
// bounded in time. The Upstream's Deadline cancels it when it expires, as a session's does.
#pragma once

#include "proxy/deadline.hpp"
#include "proxy/upstream.hpp"

#include <gtest/gtest.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <chrono>
#include <functional>
#include <string>
#include <string_view>

namespace stp::test {

// The server end of one connection.
class LoopbackPeer {
 public:
  explicit LoopbackPeer(boost::asio::ip::tcp::socket socket) : socket_(std::move(socket)) {}

  boost::asio::awaitable<bool> send(std::string_view bytes) {
    boost::system::error_code ec;
    co_await boost::asio::async_write(socket_, boost::asio::buffer(bytes),
                                      boost::asio::redirect_error(boost::asio::use_awaitable, ec));
    co_return !ec;
  }
  // The next line without its CRLF; "" when the connection ended first.
  boost::asio::awaitable<std::string> line() {
    while (pending_.find("\r\n") == std::string::npos) {
      const bool more = co_await read_some();
      if (!more) co_return std::string();
    }
    const auto end = pending_.find("\r\n");
    std::string line = pending_.substr(0, end);
    pending_.erase(0, end + 2);
    co_return line;
  }
  // Everything the other end sends until it closes.
  boost::asio::awaitable<std::string> rest() {
    while (co_await read_some()) {
    }
    std::string all;
    all.swap(pending_);
    co_return all;
  }
  void close() {
    boost::system::error_code ignored;
    socket_.close(ignored);
  }

 private:
  boost::asio::awaitable<bool> read_some() {
    char buffer[4096];
    boost::system::error_code ec;
    const auto n = co_await socket_.async_read_some(
        boost::asio::buffer(buffer), boost::asio::redirect_error(boost::asio::use_awaitable, ec));
    if (ec) co_return false;
    pending_.append(buffer, n);
    co_return true;
  }

  boost::asio::ip::tcp::socket socket_;
  std::string pending_;
};

// Owns an io_context, its deadline queue, an Upstream `upstream_` and a listening port.
class LoopbackTest : public ::testing::Test, public Deadline::Owner {
 protected:
  using Script = std::function<boost::asio::awaitable<void>(LoopbackPeer&)>;
  using Client = std::function<boost::asio::awaitable<void>()>;

  LoopbackTest() { deadlines_.start(io_.get_executor()); }
  ~LoopbackTest() override { deadlines_.stop(); }

  void on_deadline_expired() override { upstream_.cancel(); }

  // Runs `script` on the accepted connection and `client` against it, both to their end,
  // for 10 s at most (a failure, not a hang, when either never ends).
  void run(Script script, Client client) {
    bool script_done = false;
    bool client_done = false;
    const auto stop_when_both_done = [&] {
      if (script_done && client_done) io_.stop();  // the deadline's timer would hold it
    };
    boost::asio::co_spawn(
        io_,
        [&]() -> boost::asio::awaitable<void> {
          LoopbackPeer peer(co_await acceptor_.async_accept(boost::asio::use_awaitable));
          co_await script(peer);
          peer.close();
          script_done = true;
          stop_when_both_done();
        },
        boost::asio::detached);
    boost::asio::co_spawn(
        io_,
        [&]() -> boost::asio::awaitable<void> {
          co_await client();
          client_done = true;
          stop_when_both_done();
        },
        boost::asio::detached);
    io_.run_for(std::chrono::seconds(10));
    EXPECT_TRUE(script_done) << "the peer's script did not end";
    EXPECT_TRUE(client_done) << "the client did not end";
  }

  // Connects to the peer; false (and a test failure) when it could not.
  boost::asio::awaitable<bool> connect() {
    const bool connected = co_await upstream_.connect(target_, std::chrono::seconds(5));
    EXPECT_TRUE(connected);
    co_return connected;
  }

  boost::asio::io_context io_;
  DeadlineQueue deadlines_;
  Deadline deadline_{deadlines_, *this};
  Upstream upstream_{io_.get_executor(), deadline_, "TEST", "test peer"};
  boost::asio::ip::tcp::acceptor acceptor_{io_, {boost::asio::ip::address_v4::loopback(), 0}};
  Upstream::Target target_ = Upstream::target("127.0.0.1", acceptor_.local_endpoint().port());
};

}  // namespace stp::test
