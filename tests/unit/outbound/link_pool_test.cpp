// LinkPool: which relay host connections are kept for the next session, that a kept one comes
// back owing an RSET, and that one idle past --relay-connection-idle is closed and dropped.
// Each connection is a real one to a loopback peer that only waits for the close.
#include "outbound/link_pool.hpp"
#include "tests/unit/proxy/loopback_peer.hpp"

#include <gtest/gtest.h>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <memory>

namespace stp::outbound {
namespace {
namespace asio = boost::asio;
using namespace std::chrono_literals;

class LinkPoolTest : public test::LoopbackTest {
 protected:
  LinkPoolTest() {
    relay_.connection_idle = 10s;
    relay_.connection_max_messages = 100;
  }

  // A connected link to the loopback peer; null (and a test failure) when it could not be.
  asio::awaitable<std::unique_ptr<RelayLink>> connected_link() {
    auto link = std::make_unique<RelayLink>(io_.get_executor(), deadlines_, "L");
    link->host = host_;
    link->endpoint = acceptor_.local_endpoint();
    const bool connected = co_await link->upstream.connect(target_, 5s);
    EXPECT_TRUE(connected);
    co_return connected ? std::move(link) : nullptr;
  }

  // Runs `check` with one connected link, the peer holding its end until the link closes.
  void with_link(std::function<asio::awaitable<void>(std::unique_ptr<RelayLink>)> check) {
    io_.restart();  // after an earlier run()'s stop
    run([](test::LoopbackPeer& peer) -> asio::awaitable<void> { co_await peer.rest(); },
        [&]() -> asio::awaitable<void> {
          auto link = co_await connected_link();
          if (link) co_await check(std::move(link));
        });
  }

  RelayConfig relay_;
  RelayHost host_{.name = "smtp.example.net", .port = 587};
};

TEST_F(LinkPoolTest, AKeptConnectionComesBackOwingAnRset) {
  with_link([&](std::unique_ptr<RelayLink> link) -> asio::awaitable<void> {
    LinkPool pool(relay_);
    RelayLink* kept = link.get();
    EXPECT_EQ(pool.put(std::move(link)), nullptr);
    EXPECT_EQ(pool.size(), 1u);
    auto again = pool.take();
    EXPECT_EQ(again.get(), kept);
    EXPECT_TRUE(again->reset_pending);
    EXPECT_EQ(pool.take(), nullptr);
    again->upstream.close();
    co_return;
  });
}

TEST_F(LinkPoolTest, ConnectionsThatMustNotBeSharedAreHandedBack) {
  const auto handed_back = [&](const std::function<void(RelayLink&)>& make_unfit) {
    with_link([&](std::unique_ptr<RelayLink> link) -> asio::awaitable<void> {
      LinkPool pool(relay_);
      make_unfit(*link);
      auto back = pool.put(std::move(link));
      EXPECT_NE(back, nullptr);
      EXPECT_EQ(pool.size(), 0u);
      if (back) back->upstream.close();
      co_return;
    });
  };
  // A local client's own AUTH went over it: the next client must not inherit the login.
  handed_back([](RelayLink& link) { link.client_authenticated = true; });
  // Its message cap reached.
  handed_back([](RelayLink& link) { link.messages = 100; });
  // Lost.
  handed_back([](RelayLink& link) { link.upstream.abandon(); });
  // Exim's hosts_nopass_tls: TLS was used and the host is listed.
  relay_.hosts_nopass_tls = acl::HostList::parse("*.example.net", acl::HostList::Names::allowed);
  handed_back([](RelayLink& link) { link.tls_facts.emplace(); });
  // Reuse off.
  relay_.hosts_nopass_tls = {};
  relay_.connection_idle = 0s;
  handed_back([](RelayLink&) {});
}

TEST_F(LinkPoolTest, AConnectionItsPeerSpokeOnWhileKeptIsNotHandedOut) {
  // A relay host that says something unasked while the connection waits (a 421 before it
  // closes): that would be read as the reply to the next session's RSET.
  io_.restart();
  run(
      [](test::LoopbackPeer& peer) -> asio::awaitable<void> {
        co_await peer.send("421 4.4.2 idle too long\r\n");
        co_await peer.rest();
      },
      [&]() -> asio::awaitable<void> {
        auto link = co_await connected_link();
        if (!link) co_return;
        LinkPool pool(relay_);
        EXPECT_EQ(pool.put(std::move(link)), nullptr);
        asio::steady_timer wait(co_await asio::this_coro::executor);
        wait.expires_after(200ms);  // the peer's line arrives while the link is kept
        co_await wait.async_wait(asio::use_awaitable);
        EXPECT_EQ(pool.take(), nullptr);
        EXPECT_EQ(pool.size(), 0u);
      });
}

TEST_F(LinkPoolTest, AConnectionIdlePastItsTimeIsClosedAndDropped) {
  relay_.connection_idle = 1s;
  with_link([&](std::unique_ptr<RelayLink> link) -> asio::awaitable<void> {
    LinkPool pool(relay_);
    EXPECT_EQ(pool.put(std::move(link)), nullptr);
    asio::steady_timer wait(co_await asio::this_coro::executor);
    wait.expires_after(1500ms);
    co_await wait.async_wait(asio::use_awaitable);
    EXPECT_EQ(pool.size(), 0u);  // and the peer saw the close: its script ended
    EXPECT_EQ(pool.take(), nullptr);
  });
}

}  // namespace
}  // namespace stp::outbound
