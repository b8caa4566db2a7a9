// handshake: OpenSSL's own cost of a server-side TLS handshake, in memory, without sockets or
// SMTP: the floor any TLS front pays per session. Client and server run in one thread over a
// BIO pair; only the time spent inside the server's OpenSSL calls (handshake, and the read
// that takes the client's first bytes after it) is counted, as thread CPU time.
//
// Prints one JSON line: handshakes done, server CPU per handshake in ms (and the client's),
// the negotiated version, cipher and group, and how many were resumed. Trusts only its own
// arguments; exits 1 when a handshake fails, 2 on a usage error.
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <string_view>

namespace {

constexpr std::string_view kUsage = R"(Usage: handshake --cert FILE --key FILE [FLAG]...
OpenSSL's server handshake cost, in memory, one JSON line out.

  --cert FILE          server certificate chain (PEM)
  --key FILE           its private key (PEM)
  --count N            handshakes (default: 2000)
  --sigalgs LIST       signature algorithms the client offers (selects the certificate)
  --tickets N          TLS 1.3 tickets the server sends per handshake (default: OpenSSL's, 2)
  --resume             resume each handshake with a ticket from the previous one
  --stateful-tickets   TLS 1.3 tickets name a session kept in the server's cache (SSL_OP_NO_TICKET)
  --client-cert FILE   client certificate the server requests and verifies against --ca
  --client-key FILE    its key
  --ca FILE            CA file for client certificates
)";

double thread_cpu() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) / 1e9;
}

[[noreturn]] void die(const std::string& what, int code = 1) {
  std::fprintf(stderr, "handshake: %s\n", what.c_str());
  ERR_print_errors_fp(stderr);
  std::exit(code);
}

}  // namespace

int main(int argc, char** argv) {
  std::string cert, key, sigalgs, client_cert, client_key, ca;
  long count = 2000;
  long tickets = -1;
  bool resume = false;
  bool stateful = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) die(std::string(flag) + ": needs a value", 2);
      return argv[++i];
    };
    if (flag == "--cert") {
      cert = value();
    } else if (flag == "--key") {
      key = value();
    } else if (flag == "--count") {
      count = std::strtol(value().c_str(), nullptr, 10);
    } else if (flag == "--sigalgs") {
      sigalgs = value();
    } else if (flag == "--tickets") {
      tickets = std::strtol(value().c_str(), nullptr, 10);
    } else if (flag == "--resume") {
      resume = true;
    } else if (flag == "--stateful-tickets") {
      stateful = true;
    } else if (flag == "--client-cert") {
      client_cert = value();
    } else if (flag == "--client-key") {
      client_key = value();
    } else if (flag == "--ca") {
      ca = value();
    } else if (flag == "--help") {
      std::fputs(kUsage.data(), stdout);
      return 0;
    } else {
      die("unknown flag " + std::string(flag), 2);
    }
  }
  if (cert.empty() || key.empty() || count < 1) die("needs --cert, --key and --count >= 1", 2);

  SSL_CTX* server = SSL_CTX_new(TLS_server_method());
  SSL_CTX* client = SSL_CTX_new(TLS_client_method());
  if (!server || !client) die("SSL_CTX_new");
  SSL_CTX_set_min_proto_version(server, TLS1_2_VERSION);
  if (SSL_CTX_use_certificate_chain_file(server, cert.c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(server, key.c_str(), SSL_FILETYPE_PEM) != 1) {
    die("cannot load " + cert + " / " + key, 2);
  }
  if (tickets >= 0) SSL_CTX_set_num_tickets(server, static_cast<size_t>(tickets));
  if (stateful) {
    SSL_CTX_set_options(server, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(server, SSL_SESS_CACHE_SERVER);
  }
  if (!sigalgs.empty() && SSL_CTX_set1_sigalgs_list(client, sigalgs.c_str()) != 1) {
    die("--sigalgs rejected", 2);
  }
  if (!client_cert.empty()) {
    if (ca.empty()) die("--client-cert needs --ca", 2);
    if (SSL_CTX_load_verify_locations(server, ca.c_str(), nullptr) != 1) die("cannot load --ca", 2);
    SSL_CTX_set_verify(server, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    const std::string& k = client_key.empty() ? client_cert : client_key;
    if (SSL_CTX_use_certificate_chain_file(client, client_cert.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(client, k.c_str(), SSL_FILETYPE_PEM) != 1) {
      die("cannot load --client-cert", 2);
    }
  }
  SSL_CTX_set_session_id_context(server, reinterpret_cast<const unsigned char*>("hs"), 2);
  SSL_CTX_set_session_cache_mode(client, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);

  double server_cpu = 0, client_cpu = 0;
  long resumed = 0;
  SSL_SESSION* ticket = nullptr;
  std::string version, cipher, group;
  for (long n = 0; n < count; ++n) {
    SSL* s = SSL_new(server);
    SSL* c = SSL_new(client);
    BIO *sb = nullptr, *cb = nullptr;
    if (!s || !c || BIO_new_bio_pair(&sb, 0, &cb, 0) != 1) die("SSL_new / BIO pair");
    SSL_set_bio(s, sb, sb);
    SSL_set_bio(c, cb, cb);
    SSL_set_accept_state(s);
    SSL_set_connect_state(c);
    if (resume && ticket) SSL_set_session(c, ticket);
    bool s_done = false, c_done = false;
    for (int step = 0; step < 20 && !(s_done && c_done); ++step) {
      if (!c_done) {
        const double t = thread_cpu();
        const int r = SSL_do_handshake(c);
        client_cpu += thread_cpu() - t;
        if (r == 1) {
          c_done = true;
        } else if (SSL_get_error(c, r) != SSL_ERROR_WANT_READ) {
          die("client handshake failed");
        }
      }
      if (!s_done) {
        const double t = thread_cpu();
        const int r = SSL_do_handshake(s);
        server_cpu += thread_cpu() - t;
        if (r == 1) {
          s_done = true;
        } else if (SSL_get_error(s, r) != SSL_ERROR_WANT_READ) {
          die("server handshake failed");
        }
      }
    }
    if (!s_done || !c_done) die("handshake did not finish");
    // The client takes the tickets (and, for a resumption, a fresh one) as an SMTP client
    // would, by reading: one byte the server sends.
    {
      const double t = thread_cpu();
      size_t w = 0;
      if (SSL_write_ex(s, "2", 1, &w) != 1) die("server write failed");
      server_cpu += thread_cpu() - t;
      char byte;
      size_t r = 0;
      const double t2 = thread_cpu();
      if (SSL_read_ex(c, &byte, 1, &r) != 1) die("client read failed");
      client_cpu += thread_cpu() - t2;
    }
    if (SSL_session_reused(s)) ++resumed;
    if (n == 0) {
      version = SSL_get_version(s);
      cipher = SSL_get_cipher_name(s);
      if (const char* g = SSL_group_to_name(s, SSL_get_negotiated_group(s))) group = g;
    }
    if (resume) {
      SSL_SESSION_free(ticket);
      ticket = SSL_get1_session(c);
    }
    // As after a clean close: SSL_free of a session not shut down marks it not resumable.
    SSL_set_shutdown(s, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_set_shutdown(c, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(s);
    SSL_free(c);
  }
  SSL_SESSION_free(ticket);
  SSL_CTX_free(server);
  SSL_CTX_free(client);
  std::printf(
      "{\"handshakes\":%ld,\"resumed\":%ld,\"server_cpu_ms\":%.4f,\"client_cpu_ms\":%.4f,"
      "\"version\":\"%s\",\"cipher\":\"%s\",\"group\":\"%s\"}\n",
      count, resumed, server_cpu * 1000 / static_cast<double>(count),
      client_cpu * 1000 / static_cast<double>(count), version.c_str(), cipher.c_str(),
      group.c_str());
  return 0;
}
