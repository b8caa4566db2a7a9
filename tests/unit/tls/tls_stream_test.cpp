// tls::TlsStream's record queue when a send is cut short: a client that stops reading makes
// the server's write block, the write is cancelled part-way (as the session's timer does), and
// from then on the stream sends nothing, so the bytes the client finally reads are whole TLS
// records followed by the end, never a record cut short with another after it. A real OpenSSL
// client on a loopback TCP connection, in a thread of its own.
#include "tls/tls_stream.hpp"

#include "test_certificates.hpp"
#include "tls/tls_context.hpp"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

namespace stp::tls {
namespace {

namespace asio = boost::asio;
using boost::system::error_code;
using namespace std::chrono_literals;

// A server context for a fresh self-signed ECDSA certificate, written to a PEM file that is
// removed again at once (the context holds what it read).
std::shared_ptr<const ServerContext> server_context() {
  const test::Owned<EVP_PKEY> key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  const auto certificate = test::make_certificate("mx.example.org", key.get());
  const auto path = std::filesystem::temp_directory_path() /
                    ("stp-tls-stream-test-" + std::to_string(::getpid()) + ".pem");
  test::write_pem(path.string(), certificate.get(), key.get());
  ServerOptions options;
  options.hostname = "mx.example.org";
  options.certificates = {path.string()};
  auto context = ServerContext::create(options);
  std::filesystem::remove(path);
  return context;
}

// What the client read before its connection ended, and how it ended.
struct ClientResult {
  std::string plaintext;
  unsigned long end_reason = 0;  // OpenSSL's reason for the last SSL_read's failure
  bool handshake_ok = false;
};

// Connects with a tiny receive window, handshakes, waits until `go`, then reads to the end.
void run_client(unsigned short port, const std::atomic<bool>& go, ClientResult& result) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  const int small = 4096;  // before connecting: no window autotuning
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
    ::close(fd);
    return;
  }
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  result.handshake_ok = SSL_connect(ssl) == 1;
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!go.load() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  char buffer[16384];
  while (result.handshake_ok) {
    std::size_t n = 0;
    ERR_clear_error();
    if (SSL_read_ex(ssl, buffer, sizeof buffer, &n) != 1) {
      result.end_reason = ERR_GET_REASON(ERR_peek_last_error());
      break;
    }
    result.plaintext.append(buffer, n);
  }
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  ::close(fd);
}

TEST(TlsStream, SendsNothingMoreOnceASendWasCutShort) {
  const auto context = server_context();
  ASSERT_NE(context, nullptr);
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor(io, {asio::ip::address_v4::loopback(), 0});
  std::atomic<bool> cut{false};
  ClientResult client;
  std::thread client_thread(run_client, acceptor.local_endpoint().port(), std::cref(cut),
                            std::ref(client));

  asio::ip::tcp::socket socket(io);
  error_code handshake_ec = asio::error::in_progress;
  error_code big_write_ec = asio::error::in_progress;
  error_code next_write_ec = asio::error::in_progress;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        socket = co_await acceptor.async_accept(asio::use_awaitable);
        socket.set_option(asio::socket_base::send_buffer_size(16384));
        TlsStream stream(socket, context);
        co_await stream.handshake(handshake_ec);
        if (handshake_ec) co_return;
        // Far more than the client's window and the kernel's buffers hold: the send blocks
        // part-way through a record, and is then cancelled, as the session's timer would.
        asio::steady_timer timer(io, 300ms);
        timer.async_wait([&](error_code) { socket.cancel(); });
        const std::string lots(8 << 20, 'x');
        co_await stream.write(asio::buffer(lots), big_write_ec);
        cut = true;  // the client reads from here on: anything sent now would reach it
        co_await stream.write(asio::buffer(std::string_view("250 after the cut\r\n")),
                              next_write_ec);
        stream.shutdown();
        error_code ignored;
        socket.close(ignored);
      },
      asio::detached);
  io.run_for(30s);
  cut = true;
  client_thread.join();

  ASSERT_FALSE(handshake_ec) << handshake_ec.message();
  ASSERT_TRUE(client.handshake_ok);
  EXPECT_EQ(big_write_ec, asio::error::operation_aborted);
  EXPECT_EQ(next_write_ec, asio::error::broken_pipe);
  // What the client got is records of 'x' up to the cut, then the end of the connection
  // (OpenSSL: unexpected EOF), not a damaged record (bad record MAC, bad length).
  EXPECT_GT(client.plaintext.size(), 0u);
  EXPECT_LT(client.plaintext.size(), std::size_t{8} << 20);
  EXPECT_EQ(client.plaintext.find_first_not_of('x'), std::string::npos);
  EXPECT_EQ(client.end_reason, static_cast<unsigned long>(SSL_R_UNEXPECTED_EOF_WHILE_READING))
      << ERR_reason_error_string(ERR_PACK(ERR_LIB_SSL, 0, client.end_reason));
}

}  // namespace
}  // namespace stp::tls
