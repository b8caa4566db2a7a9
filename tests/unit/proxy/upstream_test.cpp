// Upstream in the clear, as the client of a loopback peer that plays a script: connecting,
// replies (multi-line, in pieces, several in one read), commands, EHLO, QUIT, and the faults a
// real MTA does not produce on demand (silence, a reply that never ends, a peer that closes
// mid-reply, garbage). Each case is bounded to 10 s; no case asserts how fast anything was.
// TLS has its own file, upstream_tls_test.cpp.
#include "proxy/upstream.hpp"
#include "tests/unit/proxy/loopback_peer.hpp"

#include <gtest/gtest.h>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <string>
#include <vector>

namespace stp {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using smtp::ReplyScan;
using test::LoopbackPeer;

class UpstreamTest : public test::LoopbackTest {};

TEST(UpstreamTarget, AnAddressIsAnEndpointAndANameIsResolvedLater) {
  const auto v4 = Upstream::target("192.0.2.1", 25);
  ASSERT_TRUE(v4.endpoint.has_value());
  EXPECT_EQ(v4.endpoint->address().to_string(), "192.0.2.1");
  EXPECT_EQ(v4.endpoint->port(), 25);
  const auto v6 = Upstream::target("2001:db8::1", 587);
  ASSERT_TRUE(v6.endpoint.has_value());
  EXPECT_TRUE(v6.endpoint->address().is_v6());
  const auto name = Upstream::target("mx.example.org", 25);
  EXPECT_FALSE(name.endpoint.has_value());
  EXPECT_EQ(name.host, "mx.example.org");
  EXPECT_EQ(name.port, 25);
}

TEST_F(UpstreamTest, ReadsAMultiLineReplyWhole) {
  run(
      [&](LoopbackPeer& peer) -> asio::awaitable<void> {
        co_await peer.send("220-mx.example.org ESMTP\r\n220-second line\r\n220 last\r\n");
        co_await peer.line();  // until the client closes
      },
      [&]() -> asio::awaitable<void> {
        if (!co_await connect()) co_return;
        EXPECT_TRUE(upstream_.open());
        const auto scan = co_await upstream_.read_reply();
        EXPECT_EQ(scan.status, ReplyScan::Status::complete);
        EXPECT_EQ(scan.code, 220);
        EXPECT_EQ(upstream_.reply(scan),
                  "220-mx.example.org ESMTP\r\n220-second line\r\n220 last\r\n");
        upstream_.consume(scan);
        EXPECT_FALSE(upstream_.has_input());
        EXPECT_FALSE(upstream_.lost());
        upstream_.close();
      });
}

TEST_F(UpstreamTest, AReplyInPiecesIsReadUntilItEnds) {
  run(
      [&](LoopbackPeer& peer) -> asio::awaitable<void> {
        for (const std::string_view piece : {"2", "50-fir", "st\r", "\n250 se", "cond\r\n"}) {
          co_await peer.send(piece);
        }
        co_await peer.line();
      },
      [&]() -> asio::awaitable<void> {
        if (!co_await connect()) co_return;
        const auto scan = co_await upstream_.read_reply();
        EXPECT_EQ(scan.status, ReplyScan::Status::complete);
        EXPECT_EQ(upstream_.reply(scan), "250-first\r\n250 second\r\n");
        upstream_.close();
      });
}

TEST_F(UpstreamTest, RepliesThatArriveTogetherAreReadOneAtATime) {
  run(
      [&](LoopbackPeer& peer) -> asio::awaitable<void> {
        co_await peer.send("250 one\r\n354 two\r\n");
        co_await peer.line();
      },
      [&]() -> asio::awaitable<void> {
        if (!co_await connect()) co_return;
        const auto first = co_await upstream_.read_reply();
        EXPECT_EQ(first.code, 250);
        EXPECT_EQ(upstream_.reply(first), "250 one\r\n");
        upstream_.consume(first);
        EXPECT_TRUE(upstream_.has_input());
        EXPECT_EQ(upstream_.buffered(), "354 two\r\n");
        const auto second = co_await upstream_.read_reply();
        EXPECT_EQ(second.code, 354);
        upstream_.consume(second);
        EXPECT_FALSE(upstream_.has_input());
        upstream_.close();
      });
}

TEST_F(UpstreamTest, ACommandIsSentAndItsReplyRead) {
  std::string heard;
  run(
      [&](LoopbackPeer& peer) -> asio::awaitable<void> {
        co_await peer.send("220 ready\r\n");
        heard = co_await peer.line();
        co_await peer.send("250 2.0.0 ok\r\n");
        co_await peer.line();
      },
      [&]() -> asio::awaitable<void> {
        if (!co_await connect()) co_return;
        const auto greeting = co_await upstream_.read_reply();
        upstream_.consume(greeting);
        const auto scan = co_await upstream_.command("NOOP\r\n");
        EXPECT_EQ(scan.status, ReplyScan::Status::complete);
        EXPECT_EQ(scan.code, 250);
        upstream_.consume(scan);
        upstream_.close();
      });
  EXPECT_EQ(heard, "NOOP");
}

TEST_F(UpstreamTest, EhloReadsWhatThe250Offers) {
  std::string heard;
  run(
      [&](LoopbackPeer& peer) -> asio::awaitable<void> {
        heard = co_await peer.line();
        co_await peer.send(
            "250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-CHUNKING\r\n"
            "250-STARTTLS\r\n250 XCLIENT ADDR NAME PORT\r\n");
        co_await peer.line();
      },
      [&]() -> asio::awaitable<void> {
        if (!co_await connect()) co_return;
        const auto ehlo = co_await upstream_.ehlo("proxy.example.org");
        EXPECT_EQ(ehlo.scan.code, 250);
        EXPECT_TRUE(ehlo.capabilities.pipelining);
        EXPECT_TRUE(ehlo.capabilities.chunking);
        EXPECT_TRUE(ehlo.capabilities.starttls);
        EXPECT_EQ(ehlo.capabilities.size_limit, 10240000u);
        EXPECT_TRUE(ehlo.capabilities.xclient);
        EXPECT_TRUE(ehlo.capabilities.advertises("NAME"));
        EXPECT_FALSE(ehlo.capabilities.advertises("HELO"));
        // Still buffered for the caller.
        EXPECT_EQ(upstream_.reply(ehlo.scan).substr(0, 20), "250-mx.example.org\r\n");
        upstream_.consume(ehlo.scan);
        upstream_.close();
      });
  EXPECT_EQ(heard, "EHLO proxy.example.org");
}

TEST_F(UpstreamTest, AnEhloRefusedOffersNothing) {
  run(
      [&](LoopbackPeer& peer) -> asio::awaitable<void> {
        co_await peer.line();
        co_await peer.send("502-5.5.1 no EHLO here\r\n502 5.5.1 PIPELINING\r\n");
        co_await peer.line();
      },
      [&]() -> asio::awaitable<void> {
        if (!co_await connect()) co_return;
        const auto ehlo = co_await upstream_.ehlo("proxy.example.org");
        EXPECT_EQ(ehlo.scan.status, ReplyScan::Status::complete);
        EXPECT_EQ(ehlo.scan.code, 502);
        EXPECT_FALSE(ehlo.capabilities.pipelining);
        EXPECT_FALSE(upstream_.lost());
        upstream_.close();
      });
}

TEST_F(UpstreamTest, QuitSaysQuitAndCloses) {
  std::string heard;
  run(
      [&](LoopbackPeer& peer) -> asio::awaitable<void> {
        heard = co_await peer.line();
        co_await peer.send("221 2.0.0 bye\r\n");
      },
      [&]() -> asio::awaitable<void> {
        if (!co_await connect()) co_return;
        co_await upstream_.quit(5s);
        EXPECT_FALSE(upstream_.open());
      });
  EXPECT_EQ(heard, "QUIT");
}

TEST_F(UpstreamTest, QuitToAPeerThatNeverAnswersEndsAtItsTimeout) {
  run(
      [&](LoopbackPeer& peer) -> asio::awaitable<void> {
        co_await peer.line();  // QUIT
        co_await peer.line();  // then silence, until the client closes
      },
      [&]() -> asio::awaitable<void> {
        if (!co_await connect()) co_return;
        co_await upstream_.quit(200ms);
        EXPECT_FALSE(upstream_.open());
        EXPECT_TRUE(deadline_.expired());
      });
}

TEST_F(UpstreamTest, ASilentPeerTimesOutAndTheConnectionIsLost) {
  run(
      [&](LoopbackPeer& peer) -> asio::awaitable<void> {
        co_await peer.line();  // silent until the client closes
      },
      [&]() -> asio::awaitable<void> {
        upstream_.set_timeout(200ms);
        if (!co_await connect()) co_return;
        const auto scan = co_await upstream_.read_reply();
        EXPECT_EQ(scan.status, ReplyScan::Status::malformed);
        EXPECT_TRUE(deadline_.expired());
        EXPECT_TRUE(upstream_.lost());
        // Lost is final: later operations fail at once.
        const bool written = co_await upstream_.write("NOOP\r\n");
        EXPECT_FALSE(written);
        const auto again = co_await upstream_.command("NOOP\r\n");
        EXPECT_EQ(again.status, ReplyScan::Status::malformed);
        upstream_.close();
      });
}

TEST_F(UpstreamTest, ATrickledReplyGetsOneTimeoutForAllOfIt) {
  run(
      [&](LoopbackPeer& peer) -> asio::awaitable<void> {
        asio::steady_timer pause(co_await asio::this_coro::executor);
        for (const char byte : std::string_view("250 trickled\r\n")) {
          if (!co_await peer.send(std::string_view(&byte, 1))) co_return;
          pause.expires_after(50ms);  // each byte well inside the timeout, all of them not
          co_await pause.async_wait(asio::use_awaitable);
        }
        co_await peer.line();
      },
      [&]() -> asio::awaitable<void> {
        upstream_.set_timeout(300ms);
        if (!co_await connect()) co_return;
        const auto scan = co_await upstream_.read_reply();
        EXPECT_EQ(scan.status, ReplyScan::Status::malformed);
        EXPECT_TRUE(deadline_.expired());
        upstream_.close();
      });
}

TEST_F(UpstreamTest, TheOwnersLimitCutsATimeoutShort) {
  run([&](LoopbackPeer& peer) -> asio::awaitable<void> { co_await peer.line(); },
      [&]() -> asio::awaitable<void> {
        upstream_.set_timeout(1h);
        upstream_.set_limit(Upstream::Clock::now() + 200ms);
        if (!co_await connect()) co_return;
        const auto scan = co_await upstream_.read_reply();
        EXPECT_EQ(scan.status, ReplyScan::Status::malformed);
        EXPECT_TRUE(deadline_.expired());  // the limit's, long before the hour
        upstream_.close();
      });
}

TEST_F(UpstreamTest, APeerThatClosesMidReplyLosesTheConnection) {
  run(
      [&](LoopbackPeer& peer) -> asio::awaitable<void> {
        co_await peer.send("250-first line\r\n250-and then");
      },
      [&]() -> asio::awaitable<void> {
        if (!co_await connect()) co_return;
        const auto scan = co_await upstream_.read_reply();
        EXPECT_EQ(scan.status, ReplyScan::Status::malformed);
        EXPECT_TRUE(upstream_.lost());
        EXPECT_FALSE(deadline_.expired());
        EXPECT_EQ(upstream_.buffered(), "250-first line\r\n250-and then");
        upstream_.close();
      });
}

TEST_F(UpstreamTest, SomethingThatIsNoReplyLosesTheConnection) {
  run(
      [&](LoopbackPeer& peer) -> asio::awaitable<void> {
        co_await peer.send("HTTP/1.1 400 Bad Request\r\n");
        co_await peer.line();
      },
      [&]() -> asio::awaitable<void> {
        if (!co_await connect()) co_return;
        const auto scan = co_await upstream_.read_reply();
        EXPECT_EQ(scan.status, ReplyScan::Status::malformed);
        EXPECT_TRUE(upstream_.lost());
        upstream_.close();
      });
}

// The reply buffer holds kMaxReplyLength bytes; a reply that does not end within them is
// refused, whether its lines end or not.
TEST_F(UpstreamTest, AReplyLongerThanTheLimitLosesTheConnection) {
  for (const bool lines_end : {false, true}) {
    SCOPED_TRACE(lines_end ? "continuation lines" : "one unending line");
    std::string reply;
    if (lines_end) {
      const std::string line = "250-" + std::string(58, 'x') + "\r\n";  // 64 bytes
      while (reply.size() < Upstream::kMaxReplyLength) reply += line;
    } else {
      reply = "250 " + std::string(Upstream::kMaxReplyLength, 'x');
    }
    run(
        [&](LoopbackPeer& peer) -> asio::awaitable<void> {
          co_await peer.send(reply);
          co_await peer.line();  // until the client closes
        },
        [&]() -> asio::awaitable<void> {
          upstream_.set_timeout(5s);
          if (!co_await connect()) co_return;
          const auto scan = co_await upstream_.read_reply();
          EXPECT_EQ(scan.status, ReplyScan::Status::malformed);
          EXPECT_TRUE(upstream_.lost());
          EXPECT_FALSE(deadline_.expired());
          upstream_.close();
        });
    io_.restart();
  }
}

TEST_F(UpstreamTest, AReplyOfExactlyTheLimitIsRead) {
  std::string reply;
  const std::string line = "250-" + std::string(58, 'x') + "\r\n";
  while (reply.size() + line.size() < Upstream::kMaxReplyLength) reply += line;
  reply += "250 " + std::string(Upstream::kMaxReplyLength - reply.size() - 6, 'y') + "\r\n";
  ASSERT_EQ(reply.size(), Upstream::kMaxReplyLength);
  run(
      [&](LoopbackPeer& peer) -> asio::awaitable<void> {
        co_await peer.send(reply);
        co_await peer.line();
      },
      [&]() -> asio::awaitable<void> {
        if (!co_await connect()) co_return;
        const auto scan = co_await upstream_.read_reply();
        EXPECT_EQ(scan.status, ReplyScan::Status::complete);
        EXPECT_EQ(scan.length, Upstream::kMaxReplyLength);
        upstream_.close();
      });
}

TEST_F(UpstreamTest, ConnectingWhereNobodyListensFails) {
  const auto port = acceptor_.local_endpoint().port();
  acceptor_.close();  // nobody listens there now
  bool connected = true;
  asio::co_spawn(
      io_,
      [&]() -> asio::awaitable<void> {
        connected = co_await upstream_.connect(Upstream::target("127.0.0.1", port), 5s);
        io_.stop();
      },
      asio::detached);
  io_.run_for(10s);
  EXPECT_FALSE(connected);
  EXPECT_TRUE(upstream_.lost());
  EXPECT_FALSE(upstream_.open());
}

TEST_F(UpstreamTest, AHostNameIsResolvedAtConnect) {
  target_ = Upstream::target("localhost", acceptor_.local_endpoint().port());
  run(
      [&](LoopbackPeer& peer) -> asio::awaitable<void> {
        co_await peer.send("220 ready\r\n");
        co_await peer.line();
      },
      [&]() -> asio::awaitable<void> {
        if (!co_await connect()) co_return;
        const auto scan = co_await upstream_.read_reply();
        EXPECT_EQ(scan.code, 220);
        upstream_.close();
      });
}

TEST_F(UpstreamTest, AConnectionIsFreshAfterConnectingAgain) {
  std::vector<std::string> heard;
  run(
      [&](LoopbackPeer& peer) -> asio::awaitable<void> {
        co_await peer.send("250-unfinished\r\n");
        heard.push_back(co_await peer.line());  // "" when the client abandons it
        LoopbackPeer second(co_await acceptor_.async_accept(asio::use_awaitable));
        co_await second.send("220 second\r\n");
        heard.push_back(co_await second.line());
        co_await second.send("221 bye\r\n");
      },
      [&]() -> asio::awaitable<void> {
        if (!co_await connect()) co_return;
        upstream_.set_timeout(200ms);
        const auto first = co_await upstream_.read_reply();
        EXPECT_EQ(first.status, ReplyScan::Status::malformed);
        EXPECT_TRUE(upstream_.lost());
        upstream_.set_timeout(5s);
        if (!co_await connect()) co_return;
        EXPECT_FALSE(upstream_.lost());
        EXPECT_FALSE(upstream_.has_input());  // nothing of the first connection's reply
        const auto greeting = co_await upstream_.read_reply();
        EXPECT_EQ(upstream_.reply(greeting), "220 second\r\n");
        upstream_.consume(greeting);
        co_await upstream_.quit(5s);
      });
  EXPECT_EQ(heard, (std::vector<std::string>{"", "QUIT"}));
}

TEST_F(UpstreamTest, AbandonClosesAndMarksTheConnectionLost) {
  std::string after;
  run([&](LoopbackPeer& peer) -> asio::awaitable<void> { after = co_await peer.line(); },
      [&]() -> asio::awaitable<void> {
        if (!co_await connect()) co_return;
        upstream_.abandon();
        EXPECT_TRUE(upstream_.lost());
        EXPECT_FALSE(upstream_.open());
        const bool written = co_await upstream_.write("NOOP\r\n");
        EXPECT_FALSE(written);
      });
  EXPECT_EQ(after, "");
}

}  // namespace
}  // namespace stp
