// tls::TlsStream's connect role against its accept role: both ends of a loopback TCP connection
// in one io_context, the server made from our ServerContext, the client from a ClientContext,
// each with certificates made for the test under one test CA. Checks the server certificate's
// chain and name (verify ends the handshake, try-verify records and goes on), the SNI and the
// client certificate the server sees, resumption of the next connection under the same terms
// only, and the session facts of the client side.
#include "test_certificates.hpp"
#include "tls/client_context.hpp"
#include "tls/session_facts.hpp"
#include "tls/tls_context.hpp"
#include "tls/tls_stream.hpp"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <optional>
#include <string>

namespace stp::tls {
namespace {

namespace asio = boost::asio;
using boost::system::error_code;
using namespace std::chrono_literals;
using test::Owned;

// What the server end saw.
struct ServerSide {
  bool finished = false;
  error_code handshake;
  std::string sni;  // "" when none came
  std::string client_certificate_cn;
  long verify_result = X509_V_OK;
  std::string command;  // the client's first line
};

// What the client end saw.
struct ClientSide {
  bool finished = false;
  error_code handshake;
  long verify_result = X509_V_OK;
  bool resumed = false;
  std::string greeting;  // the server's first line, when it speaks first
  std::string reply;     // its reply to EHLO
  std::optional<SessionFacts> facts;
};

// Reads from `stream` until a line ends; "" on any failure.
asio::awaitable<std::string> read_line(TlsStream& stream) {
  std::string line;
  char buffer[512];
  while (line.find("\r\n") == std::string::npos) {
    error_code ec;
    const std::size_t n = co_await stream.read_some(asio::buffer(buffer), ec);
    if (ec) co_return std::string();
    line.append(buffer, n);
  }
  co_return line;
}

asio::awaitable<void> serve_once(asio::ip::tcp::acceptor& acceptor,
                                 std::shared_ptr<const ServerContext> context,
                                 ClientCertificateRequest request, bool greet_first,
                                 ServerSide& seen) {
  auto socket = co_await acceptor.async_accept(asio::use_awaitable);
  {
    TlsStream stream(socket, std::move(context));
    request_client_certificate(stream.native_handle(), request);
    co_await stream.handshake(seen.handshake);
    SSL* ssl = stream.native_handle();
    if (!seen.handshake) {
      if (const char* sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)) seen.sni = sni;
      if (X509* peer = SSL_get0_peer_certificate(ssl)) {
        seen.client_certificate_cn =
            common_name_of(X509_get_subject_name(peer)).value_or("(refused)");
        seen.verify_result = SSL_get_verify_result(ssl);
      }
      // As the proxy answers: the first reply carries the held TLS 1.3 ticket. With
      // implicit TLS the server speaks first, so the client must have sent its Finished.
      error_code ec;
      if (greet_first) {
        co_await stream.write(asio::buffer(std::string_view("220 mx.example.net\r\n")), ec);
      }
      seen.command = co_await read_line(stream);
      co_await stream.write(asio::buffer(std::string_view("250 mx.example.net\r\n")), ec);
      char rest[64];
      while (!ec) co_await stream.read_some(asio::buffer(rest), ec);  // to the client's end
      stream.shutdown();
    }
  }
  seen.finished = true;
}

asio::awaitable<void> connect_once(asio::ip::tcp::endpoint server,
                                   std::shared_ptr<const ClientContext> context,
                                   ConnectParameters parameters, bool greet_first,
                                   ClientSide& seen) {
  asio::ip::tcp::socket socket(co_await asio::this_coro::executor);
  co_await socket.async_connect(server, asio::use_awaitable);
  {
    TlsStream stream(socket, std::move(context), parameters);
    co_await stream.handshake(seen.handshake);
    SSL* ssl = stream.native_handle();
    seen.verify_result = SSL_get_verify_result(ssl);
    if (!seen.handshake) {
      seen.resumed = SSL_session_reused(ssl) == 1;
      seen.facts = gather_session_facts(ssl, ClientCertificateRequest::none, PeerDnFormat::openssl);
      error_code ec;
      if (greet_first) seen.greeting = co_await read_line(stream);
      co_await stream.write(asio::buffer(std::string_view("EHLO relay.example\r\n")), ec);
      if (!ec) seen.reply = co_await read_line(stream);
      stream.shutdown();  // close_notify: the session stays resumable
    }
  }
  seen.finished = true;
}

class TlsConnect : public ::testing::Test {
 protected:
  void SetUp() override {
    const Owned<EVP_PKEY> ca_key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    const auto ca = test::make_certificate("Test CA", ca_key.get(), nullptr, nullptr, 86400, true);
    const Owned<EVP_PKEY> server_key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    const auto server_certificate = test::make_certificate(
        "mx.example.net", server_key.get(), ca.get(), ca_key.get(), 86400, false,
        "DNS:mx.example.net,DNS:*.relay.example,DNS:f*.partial.example,IP:127.0.0.1");
    const Owned<EVP_PKEY> client_key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    const auto client_certificate =
        test::make_certificate("relay-client.example", client_key.get(), ca.get(), ca_key.get());
    ca_file_ = files_.write("ca.pem", ca.get(), nullptr);
    client_file_ = files_.write("client.pem", client_certificate.get(), client_key.get());

    ServerOptions server;
    server.hostname = "mx.example.net";
    server.certificates = {files_.write("server.pem", server_certificate.get(), server_key.get())};
    server_options_ = server;
    client_options_.verify_certificates = ca_file_;
  }
  // One connection from `client` to a server made from `server`, the server asking for a
  // client certificate as `request` says; bounded to 10 s.
  void run(std::shared_ptr<const ServerContext> server, std::shared_ptr<const ClientContext> client,
           const ConnectParameters& parameters,
           ClientCertificateRequest request = ClientCertificateRequest::none,
           bool greet_first = false) {
    server_seen_ = {};
    client_seen_ = {};
    asio::io_context io;
    asio::ip::tcp::acceptor acceptor(io, {asio::ip::address_v4::loopback(), 0});
    asio::co_spawn(io, serve_once(acceptor, std::move(server), request, greet_first, server_seen_),
                   asio::detached);
    asio::co_spawn(io,
                   connect_once(acceptor.local_endpoint(), std::move(client), parameters,
                                greet_first, client_seen_),
                   asio::detached);
    io.run_for(10s);
    ASSERT_TRUE(server_seen_.finished && client_seen_.finished) << "timed out";
  }

  // The usual terms: verify, against mx.example.net, which is also the SNI.
  static ConnectParameters verify_mx(std::string peer = "mx.example.net:25") {
    ConnectParameters p;
    p.peer = std::move(peer);
    p.sni = "mx.example.net";
    p.names = {"mx.example.net"};
    p.verification = ServerVerification::verify;
    return p;
  }

  const test::PemDirectory files_{"tls-connect-test"};
  std::string ca_file_;
  std::string client_file_;
  ServerOptions server_options_;
  ClientOptions client_options_;
  ServerSide server_seen_;
  ClientSide client_seen_;
};

TEST_F(TlsConnect, VerifiesACaSignedCertificateForItsName) {
  run(ServerContext::create(server_options_), ClientContext::create(client_options_), verify_mx());
  ASSERT_FALSE(client_seen_.handshake) << client_seen_.handshake.message();
  ASSERT_FALSE(server_seen_.handshake) << server_seen_.handshake.message();
  EXPECT_EQ(client_seen_.verify_result, X509_V_OK);
  EXPECT_EQ(server_seen_.command, "EHLO relay.example\r\n");
  EXPECT_EQ(client_seen_.reply, "250 mx.example.net\r\n");
  EXPECT_FALSE(client_seen_.resumed);
  EXPECT_EQ(server_seen_.client_certificate_cn, "");  // not asked for, none sent
}

TEST_F(TlsConnect, TheServerMaySpeakFirst) {
  // Implicit TLS (port 465): the greeting comes first, and comes only once the server has the
  // client's Finished.
  run(ServerContext::create(server_options_), ClientContext::create(client_options_), verify_mx(),
      ClientCertificateRequest::none, true);
  ASSERT_FALSE(client_seen_.handshake) << client_seen_.handshake.message();
  EXPECT_EQ(client_seen_.greeting, "220 mx.example.net\r\n");
  EXPECT_EQ(server_seen_.command, "EHLO relay.example\r\n");
  EXPECT_EQ(client_seen_.reply, "250 mx.example.net\r\n");
}

TEST_F(TlsConnect, MatchesNamesAsRfc6125Says) {
  const auto server = ServerContext::create(server_options_);
  const auto client = ClientContext::create(client_options_);
  const auto verdict = [&](std::vector<std::string> names) {
    ConnectParameters p;
    p.names = std::move(names);
    p.verification = ServerVerification::try_verify;
    run(server, client, p);
    EXPECT_FALSE(client_seen_.handshake) << client_seen_.handshake.message();
    return client_seen_.verify_result;
  };
  EXPECT_EQ(verdict({"MX.Example.NET"}), X509_V_OK);
  EXPECT_EQ(verdict({"other.example.net", "mx.example.net"}), X509_V_OK);  // any one of them
  EXPECT_EQ(verdict({"a.relay.example"}), X509_V_OK);
  EXPECT_EQ(verdict({"127.0.0.1"}), X509_V_OK);
  EXPECT_EQ(verdict({}), X509_V_OK);                                        // the chain alone
  EXPECT_EQ(verdict({"a.b.relay.example"}), X509_V_ERR_HOSTNAME_MISMATCH);  // one label only
  EXPECT_EQ(verdict({"relay.example"}), X509_V_ERR_HOSTNAME_MISMATCH);
  EXPECT_EQ(verdict({"foo.partial.example"}), X509_V_ERR_HOSTNAME_MISMATCH);  // no f*.
  EXPECT_EQ(verdict({"127.0.0.2"}), X509_V_ERR_IP_ADDRESS_MISMATCH);
}

TEST_F(TlsConnect, AWrongNameEndsTheHandshakeInVerifyMode) {
  auto parameters = verify_mx();
  parameters.names = {"other.example.net"};
  run(ServerContext::create(server_options_), ClientContext::create(client_options_), parameters);
  EXPECT_TRUE(client_seen_.handshake);
  EXPECT_EQ(client_seen_.verify_result, X509_V_ERR_HOSTNAME_MISMATCH);
  EXPECT_TRUE(server_seen_.handshake);  // the client's alert
  EXPECT_EQ(server_seen_.command, "");
}

TEST_F(TlsConnect, AWrongNameIsRecordedAndTheSessionGoesOnInTryVerifyMode) {
  auto parameters = verify_mx();
  parameters.names = {"other.example.net"};
  parameters.verification = ServerVerification::try_verify;
  run(ServerContext::create(server_options_), ClientContext::create(client_options_), parameters);
  ASSERT_FALSE(client_seen_.handshake) << client_seen_.handshake.message();
  EXPECT_EQ(client_seen_.verify_result, X509_V_ERR_HOSTNAME_MISMATCH);
  EXPECT_EQ(client_seen_.reply, "250 mx.example.net\r\n");
  ASSERT_TRUE(client_seen_.facts);
  EXPECT_FALSE(client_seen_.facts->verified);
  EXPECT_EQ(client_seen_.facts->verify_reason, "hostname");
  EXPECT_EQ(client_seen_.facts->verify_error, "hostname mismatch");
}

TEST_F(TlsConnect, AnUnknownCaEndsTheHandshakeOrIsRecorded) {
  client_options_.verify_certificates = "";  // trusts nothing
  const auto server = ServerContext::create(server_options_);
  const auto client = ClientContext::create(client_options_);
  run(server, client, verify_mx());
  EXPECT_TRUE(client_seen_.handshake);
  EXPECT_EQ(client_seen_.verify_result, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);

  auto parameters = verify_mx();
  parameters.verification = ServerVerification::try_verify;
  run(server, client, parameters);
  ASSERT_FALSE(client_seen_.handshake) << client_seen_.handshake.message();
  EXPECT_EQ(client_seen_.reply, "250 mx.example.net\r\n");
  ASSERT_TRUE(client_seen_.facts);
  EXPECT_EQ(client_seen_.facts->verify_reason, "unknown_ca");
}

TEST_F(TlsConnect, SendsAHostNameAsSniAndNothingElse) {
  const auto server = ServerContext::create(server_options_);
  const auto client = ClientContext::create(client_options_);
  ConnectParameters parameters;
  parameters.sni = "smtp.relay.example";
  run(server, client, parameters);
  EXPECT_EQ(server_seen_.sni, "smtp.relay.example");
  ASSERT_TRUE(client_seen_.facts);
  EXPECT_EQ(client_seen_.facts->sni, "smtp.relay.example");  // the client's facts: what it sent

  for (const std::string refused : {"192.0.2.25", "bad name.example", "mx.example.net."}) {
    parameters.sni = refused;
    run(server, client, parameters);
    ASSERT_FALSE(server_seen_.handshake) << server_seen_.handshake.message();
    EXPECT_EQ(server_seen_.sni, "") << refused;
  }
}

TEST_F(TlsConnect, PresentsTheClientCertificateWhenAsked) {
  server_options_.verify_certificates = ca_file_;
  const auto server = ServerContext::create(server_options_);
  client_options_.certificate = client_file_;
  run(server, ClientContext::create(client_options_), verify_mx(),
      ClientCertificateRequest::verify);
  ASSERT_FALSE(server_seen_.handshake) << server_seen_.handshake.message();
  EXPECT_EQ(server_seen_.client_certificate_cn, "relay-client.example");
  EXPECT_EQ(server_seen_.verify_result, X509_V_OK);
  EXPECT_EQ(client_seen_.reply, "250 mx.example.net\r\n");

  client_options_.certificate.clear();  // none to show: a server that insists refuses
  run(server, ClientContext::create(client_options_), verify_mx(),
      ClientCertificateRequest::verify);
  EXPECT_TRUE(server_seen_.handshake);
  EXPECT_EQ(server_seen_.client_certificate_cn, "");
}

TEST_F(TlsConnect, ClientSideFactsDescribeTheServer) {
  run(ServerContext::create(server_options_), ClientContext::create(client_options_), verify_mx());
  ASSERT_TRUE(client_seen_.facts);
  const SessionFacts& facts = *client_seen_.facts;
  EXPECT_EQ(facts.protocol, "TLSv1.3");
  EXPECT_EQ(facts.exim_cipher_field(),
            "TLSv1.3:" + facts.cipher + ":" + std::to_string(facts.cipher_bits));
  EXPECT_EQ(facts.server_key, "EC256");  // the server's certificate, not ours
  EXPECT_EQ(facts.server_signature, "ECDSA (P-256)");
  EXPECT_EQ(facts.server_digest, "SHA256");
  EXPECT_EQ(facts.server_certificate_signature, "ecdsa-with-SHA256");
  EXPECT_FALSE(facts.key_exchange.empty());
  ASSERT_NE(facts.peer, nullptr);
  EXPECT_EQ(facts.peer->common_name, "mx.example.net");
  EXPECT_EQ(facts.peer->issuer_common_name, "Test CA");
  EXPECT_TRUE(facts.verified);
  EXPECT_EQ(facts.sni, "mx.example.net");
}

// Resumption, once for each protocol version.
class TlsConnectResumption : public TlsConnect, public ::testing::WithParamInterface<int> {
 protected:
  std::shared_ptr<const ServerContext> server() {
    auto context = ServerContext::create(server_options_);
    SSL_CTX_set_max_proto_version(context->native_handle(), GetParam());
    return context;
  }
};

TEST_P(TlsConnectResumption, TheNextConnectionToTheSamePeerResumes) {
  const auto server_context = server();
  const auto client = ClientContext::create(client_options_);
  run(server_context, client, verify_mx());
  ASSERT_FALSE(client_seen_.handshake) << client_seen_.handshake.message();
  EXPECT_FALSE(client_seen_.resumed);
  EXPECT_EQ(client->kept_sessions(), 1u);

  run(server_context, client, verify_mx());
  ASSERT_FALSE(client_seen_.handshake) << client_seen_.handshake.message();
  EXPECT_TRUE(client_seen_.resumed);
  EXPECT_EQ(client_seen_.reply, "250 mx.example.net\r\n");
  ASSERT_TRUE(client_seen_.facts);  // what the first handshake verified, carried over
  EXPECT_TRUE(client_seen_.facts->resumed);
  EXPECT_TRUE(client_seen_.facts->verified);
  ASSERT_NE(client_seen_.facts->peer, nullptr);
  EXPECT_EQ(client_seen_.facts->peer->common_name, "mx.example.net");
  EXPECT_EQ(client_seen_.facts->protocol, GetParam() == TLS1_3_VERSION ? "TLSv1.3" : "TLSv1.2");

  run(server_context, client, verify_mx());  // and again: a session is not single-use
  EXPECT_TRUE(client_seen_.resumed);
}

TEST_P(TlsConnectResumption, OnlyUnderTheSameTerms) {
  const auto server_context = server();
  const auto client = ClientContext::create(client_options_);
  run(server_context, client, verify_mx());
  ASSERT_FALSE(client_seen_.handshake) << client_seen_.handshake.message();

  const auto resumes = [&](const ConnectParameters& parameters) {
    run(server_context, client, parameters);
    EXPECT_FALSE(client_seen_.handshake) << client_seen_.handshake.message();
    return client_seen_.resumed;
  };
  EXPECT_FALSE(resumes(verify_mx("mx.example.net:587")));  // another peer
  auto other = verify_mx();
  other.verification = ServerVerification::try_verify;
  EXPECT_FALSE(resumes(other));
  other = verify_mx();
  other.names = {"a.relay.example"};
  EXPECT_FALSE(resumes(other));
  other = verify_mx();
  other.sni = "a.relay.example";
  EXPECT_FALSE(resumes(other));
  other = verify_mx();
  other.peer.clear();  // no peer: neither resumes nor keeps
  const auto kept = client->kept_sessions();
  EXPECT_FALSE(resumes(other));
  EXPECT_EQ(client->kept_sessions(), kept);
  EXPECT_TRUE(resumes(verify_mx()));
}

TEST_P(TlsConnectResumption, ARecordedFailureIsResumedWithTheSession) {
  const auto server_context = server();
  const auto client = ClientContext::create(client_options_);
  auto parameters = verify_mx();
  parameters.names = {"other.example.net"};
  parameters.verification = ServerVerification::try_verify;
  run(server_context, client, parameters);
  ASSERT_FALSE(client_seen_.handshake) << client_seen_.handshake.message();
  run(server_context, client, parameters);
  EXPECT_TRUE(client_seen_.resumed);
  EXPECT_EQ(client_seen_.verify_result, X509_V_ERR_HOSTNAME_MISMATCH);
}

TEST_P(TlsConnectResumption, AFailedHandshakeForgetsTheSessionItOffered) {
  const auto client = ClientContext::create(client_options_);
  run(server(), client, verify_mx());
  ASSERT_EQ(client->kept_sessions(), 1u);
  // The same peer, now with no cipher in common: the handshake fails at the ClientHello (the
  // session offered is of another policy, so it is not resumed there).
  server_options_.require_ciphers = "ECDHE-ECDSA-AES128-SHA";
  const auto changed = server();
  SSL_CTX_set_max_proto_version(changed->native_handle(), TLS1_2_VERSION);
  run(changed, client, verify_mx());
  EXPECT_TRUE(client_seen_.handshake);
  EXPECT_EQ(client->kept_sessions(), 0u);
}

TEST_P(TlsConnectResumption, NothingIsKeptWithoutACache) {
  client_options_.session_cache_size = 0;
  const auto server_context = server();
  const auto client = ClientContext::create(client_options_);
  run(server_context, client, verify_mx());
  run(server_context, client, verify_mx());
  ASSERT_FALSE(client_seen_.handshake) << client_seen_.handshake.message();
  EXPECT_FALSE(client_seen_.resumed);
  EXPECT_EQ(client->kept_sessions(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Protocols, TlsConnectResumption,
                         ::testing::Values(TLS1_2_VERSION, TLS1_3_VERSION), [](const auto& info) {
                           return info.param == TLS1_3_VERSION ? "TLSv13" : "TLSv12";
                         });

}  // namespace
}  // namespace stp::tls
