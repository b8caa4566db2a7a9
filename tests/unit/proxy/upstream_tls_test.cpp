// Upstream's TLS: STARTTLS and TLS from the first byte, as the client of a loopback server
// made from our own accept role (tls::TlsStream with a ServerContext), certificates made for
// the test under one test CA. The server plays a script, so the faults a real MTA does not
// produce on demand can be played too: bytes injected after the 220, a server that never
// answers. Each case is bounded to 10 s.
#include "proxy/deadline.hpp"
#include "proxy/upstream.hpp"
#include "tests/unit/tls/test_certificates.hpp"
#include "tls/client_context.hpp"
#include "tls/tls_context.hpp"
#include "tls/tls_stream.hpp"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace stp {
namespace {

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;
using namespace std::chrono_literals;
using test::Owned;

// The server end of one connection, in the clear and then, after start_tls(), under TLS.
class ScriptedServer {
 public:
  ScriptedServer(tcp::socket socket, std::shared_ptr<const tls::ServerContext> context)
      : socket_(std::move(socket)), context_(std::move(context)) {}

  asio::awaitable<bool> send(std::string_view bytes) {
    error_code ec;
    if (tls_) {
      co_await tls_->write(asio::buffer(bytes), ec);
    } else {
      co_await asio::async_write(socket_, asio::buffer(bytes),
                                 asio::redirect_error(asio::use_awaitable, ec));
    }
    co_return !ec;
  }
  // The next line without its CRLF; "" when the connection ended.
  asio::awaitable<std::string> line() {
    while (pending_.find("\r\n") == std::string::npos) {
      char buffer[512];
      error_code ec;
      std::size_t n = 0;
      if (tls_) {
        n = co_await tls_->read_some(asio::buffer(buffer), ec);
      } else {
        n = co_await socket_.async_read_some(asio::buffer(buffer),
                                             asio::redirect_error(asio::use_awaitable, ec));
      }
      if (ec) co_return std::string();
      pending_.append(buffer, n);
    }
    const auto end = pending_.find("\r\n");
    std::string line = pending_.substr(0, end);
    pending_.erase(0, end + 2);
    co_return line;
  }
  asio::awaitable<bool> start_tls() {
    tls_ = std::make_unique<tls::TlsStream>(socket_, context_);
    error_code ec;
    co_await tls_->handshake(ec);
    co_return !ec;
  }
  void close() {
    if (tls_) tls_->shutdown();
    tls_.reset();
    error_code ignored;
    socket_.close(ignored);
  }

 private:
  tcp::socket socket_;
  std::shared_ptr<const tls::ServerContext> context_;
  std::unique_ptr<tls::TlsStream> tls_;
  std::string pending_;
};

class UpstreamTls : public ::testing::Test, public Deadline::Owner {
 protected:
  void SetUp() override {
    const Owned<EVP_PKEY> ca_key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    const auto ca = test::make_certificate("Test CA", ca_key.get(), nullptr, nullptr, 86400, true);
    const Owned<EVP_PKEY> key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    const auto certificate =
        test::make_certificate("relay.example.net", key.get(), ca.get(), ca_key.get(), 86400, false,
                               "DNS:relay.example.net");
    tls::ServerOptions server;
    server.hostname = "relay.example.net";
    server.certificates = {files_.write("server.pem", certificate.get(), key.get())};
    server_ = tls::ServerContext::create(server);
    tls::ClientOptions client;
    client.verify_certificates = files_.write("ca.pem", ca.get(), nullptr);
    client_ = tls::ClientContext::create(client);
    deadlines_.start(io_.get_executor());
  }
  void TearDown() override { deadlines_.stop(); }

  void on_deadline_expired() override { upstream_.cancel(); }

  static tls::ConnectParameters verify(std::string name) {
    tls::ConnectParameters p;
    p.sni = name;
    p.names = {std::move(name)};
    p.verification = tls::ServerVerification::verify;
    return p;
  }

  // Runs `server` on the accepted connection and `client` against it, both to their end.
  void run(std::function<asio::awaitable<void>(ScriptedServer&)> server,
           std::function<asio::awaitable<void>()> client) {
    tcp::acceptor acceptor(io_, {asio::ip::address_v4::loopback(), 0});
    target_ = Upstream::target("127.0.0.1", acceptor.local_endpoint().port());
    bool server_done = false;
    bool client_done = false;
    const auto stop_when_both_done = [&] {
      if (server_done && client_done) io_.stop();  // the deadline's timer would hold it
    };
    asio::co_spawn(
        io_,
        [&]() -> asio::awaitable<void> {
          ScriptedServer peer(co_await acceptor.async_accept(asio::use_awaitable), server_);
          co_await server(peer);
          peer.close();
          server_done = true;
          stop_when_both_done();
        },
        asio::detached);
    asio::co_spawn(
        io_,
        [&]() -> asio::awaitable<void> {
          co_await client();
          client_done = true;
          stop_when_both_done();
        },
        asio::detached);
    io_.run_for(10s);
    ASSERT_TRUE(server_done && client_done) << "timed out";
  }

  // Connects and reads the 220 greeting; false on any failure.
  asio::awaitable<bool> connect_and_greet() {
    const bool connected = co_await upstream_.connect(target_, 5s);
    if (!connected) co_return false;
    const auto greeting = co_await upstream_.read_reply();
    if (greeting.status != smtp::ReplyScan::Status::complete || greeting.code != 220) {
      co_return false;
    }
    upstream_.consume(greeting);
    co_return true;
  }

  const test::PemDirectory files_{"upstream-tls-test"};
  std::shared_ptr<const tls::ServerContext> server_;
  std::shared_ptr<const tls::ClientContext> client_;
  asio::io_context io_;
  DeadlineQueue deadlines_;
  Deadline deadline_{deadlines_, *this};
  Upstream upstream_{io_.get_executor(), deadline_, "TEST", "relay host"};
  Upstream::Target target_;
};

TEST_F(UpstreamTls, StartTlsSecuresTheConnectionAndTheDialogueGoesOnUnderIt) {
  std::vector<std::string> heard;
  Upstream::StartTls outcome = Upstream::StartTls::failed;
  bool secured_reply = false;
  run(
      [&](ScriptedServer& peer) -> asio::awaitable<void> {
        co_await peer.send("220 relay.example.net ESMTP\r\n");
        heard.push_back(co_await peer.line());
        co_await peer.send("250-relay.example.net\r\n250 STARTTLS\r\n");
        heard.push_back(co_await peer.line());
        co_await peer.send("220 2.0.0 go ahead\r\n");
        if (!co_await peer.start_tls()) co_return;
        heard.push_back(co_await peer.line());
        co_await peer.send("250 relay.example.net\r\n");
        heard.push_back(co_await peer.line());
        co_await peer.send("221 bye\r\n");
      },
      [&]() -> asio::awaitable<void> {
        if (!co_await connect_and_greet()) co_return;
        const auto ehlo = co_await upstream_.ehlo("client.example");
        EXPECT_TRUE(ehlo.capabilities.starttls);
        upstream_.consume(ehlo.scan);
        const auto started = co_await upstream_.starttls(client_, verify("relay.example.net"));
        outcome = started.outcome;
        EXPECT_EQ(started.scan.code, 220);
        EXPECT_NE(upstream_.tls(), nullptr);
        const auto again = co_await upstream_.ehlo("client.example");
        secured_reply = again.scan.status == smtp::ReplyScan::Status::complete;
        upstream_.consume(again.scan);
        co_await upstream_.quit(5s);
      });
  EXPECT_EQ(outcome, Upstream::StartTls::secured);
  EXPECT_TRUE(secured_reply);
  EXPECT_EQ(heard, (std::vector<std::string>{"EHLO client.example", "STARTTLS",
                                             "EHLO client.example", "QUIT"}));
  EXPECT_FALSE(upstream_.open());
}

TEST_F(UpstreamTls, ARefusalLeavesTheReplyAndTheClearConnection) {
  std::string after;
  run(
      [&](ScriptedServer& peer) -> asio::awaitable<void> {
        co_await peer.send("220 relay.example.net ESMTP\r\n");
        co_await peer.line();
        co_await peer.send("454 4.7.0 TLS not available due to local problem\r\n");
        after = co_await peer.line();
        co_await peer.send("250 2.0.0 ok\r\n");
      },
      [&]() -> asio::awaitable<void> {
        if (!co_await connect_and_greet()) co_return;
        const auto started = co_await upstream_.starttls(client_, verify("relay.example.net"));
        EXPECT_EQ(started.outcome, Upstream::StartTls::refused);
        EXPECT_EQ(started.scan.code, 454);
        EXPECT_EQ(upstream_.reply(started.scan),
                  "454 4.7.0 TLS not available due to local problem\r\n");
        upstream_.consume(started.scan);
        EXPECT_EQ(upstream_.tls(), nullptr);
        const auto noop = co_await upstream_.command("NOOP\r\n");
        EXPECT_EQ(noop.code, 250);
        upstream_.consume(noop);
      });
  EXPECT_EQ(after, "NOOP");
}

// CVE-2011-0411's kind: what a man in the middle appends to the 220 would otherwise be read
// as the first reply under TLS.
TEST_F(UpstreamTls, BytesAfterThe220AreAnInjectionAndEndTheConnection) {
  std::string after;
  run(
      [&](ScriptedServer& peer) -> asio::awaitable<void> {
        co_await peer.send("220 relay.example.net ESMTP\r\n");
        co_await peer.line();
        co_await peer.send("220 2.0.0 go ahead\r\n250 2.1.0 injected\r\n");
        after = co_await peer.line();  // the client closes: ""
      },
      [&]() -> asio::awaitable<void> {
        if (!co_await connect_and_greet()) co_return;
        const auto started = co_await upstream_.starttls(client_, verify("relay.example.net"));
        EXPECT_EQ(started.outcome, Upstream::StartTls::failed);
        EXPECT_TRUE(upstream_.lost());
        EXPECT_FALSE(upstream_.open());
      });
  EXPECT_EQ(after, "");
}

TEST_F(UpstreamTls, TlsFromTheFirstByte) {
  std::string heard;
  run(
      [&](ScriptedServer& peer) -> asio::awaitable<void> {
        if (!co_await peer.start_tls()) co_return;
        co_await peer.send("220 relay.example.net ESMTP\r\n");
        heard = co_await peer.line();
        co_await peer.send("221 bye\r\n");
      },
      [&]() -> asio::awaitable<void> {
        const bool connected = co_await upstream_.connect(target_, 5s);
        if (!connected) co_return;
        const bool secured = co_await upstream_.start_tls(client_, verify("relay.example.net"));
        EXPECT_TRUE(secured);
        const auto greeting = co_await upstream_.read_reply();
        EXPECT_EQ(greeting.code, 220);
        upstream_.consume(greeting);
        co_await upstream_.quit(5s);
      });
  EXPECT_EQ(heard, "QUIT");
}

TEST_F(UpstreamTls, AServerCertificateForAnotherNameFailsInVerifyMode) {
  run(
      [&](ScriptedServer& peer) -> asio::awaitable<void> {
        co_await peer.start_tls();  // fails: the client sends an alert
      },
      [&]() -> asio::awaitable<void> {
        const bool connected = co_await upstream_.connect(target_, 5s);
        if (!connected) co_return;
        const bool secured = co_await upstream_.start_tls(client_, verify("other.example.net"));
        EXPECT_FALSE(secured);
        EXPECT_TRUE(upstream_.lost());
        EXPECT_EQ(upstream_.tls(), nullptr);
        const auto reply = co_await upstream_.command("NOOP\r\n");  // lost is final
        EXPECT_NE(reply.status, smtp::ReplyScan::Status::complete);
      });
}

TEST_F(UpstreamTls, AServerThatNeverAnswersStartTlsTimesOut) {
  run(
      [&](ScriptedServer& peer) -> asio::awaitable<void> {
        co_await peer.send("220 relay.example.net ESMTP\r\n");
        co_await peer.line();
        co_await peer.line();  // silent until the client gives up and closes
      },
      [&]() -> asio::awaitable<void> {
        upstream_.set_timeout(300ms);
        if (!co_await connect_and_greet()) co_return;
        const auto started = co_await upstream_.starttls(client_, verify("relay.example.net"));
        EXPECT_EQ(started.outcome, Upstream::StartTls::failed);
        EXPECT_TRUE(deadline_.expired());
        upstream_.close();
      });
}

}  // namespace
}  // namespace stp
