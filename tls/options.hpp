// What the TLS layer is told by the configuration: plain option structs that proxy/config.cpp
// fills from the flags, so tls/ depends on nothing above it. A setting that cannot be applied
// is reported as std::invalid_argument whose message names the flag ("--tls-crl: ...").
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

namespace stp::tls {

// How a certificate's distinguished name is written (Exim's tls_peerdn format).
enum class PeerDnFormat { openssl, rfc2253 };

// A certificate for the clients that ask for a name (--tls-sni-certificate NAME=FILE[,KEY]) or
// connect from a host list's address (--tls-host-certificate HOSTLIST=FILE[,KEY]).
struct NamedCertificate {
  std::string name;  // "mx.example.org" or "*.example.org", lower case; or the host list's text
  std::string certificate;  // PEM chain, leaf first
  std::string privatekey;   // empty: in the certificate file
};

// The server side: what every accepted TLS session is offered and asks for.
struct ServerOptions {
  std::string hostname;  // names the self-signed certificate made when none is given
  std::vector<std::string> certificates;  // paired in order with privatekeys
  std::vector<std::string>
      privatekeys;  // may be shorter: the key then sits in the certificate file
  std::string min_protocol = "TLSv1.2";  // TLSv1.2 or TLSv1.3
  std::string require_ciphers;           // TLS 1.2 cipher list; empty: the proxy's default
  std::string ciphersuites;              // TLS 1.3 suites; empty: OpenSSL's defaults
  std::string dhparam;                   // empty, a PEM file, or ffdhe2048..ffdhe8192
  std::string verify_certificates;  // client CAs: PEM file, hashed directory, "system", or empty
  std::string crl;                  // PEM file of CRLs
  unsigned verify_depth = 9;
  std::chrono::seconds verify_cache_time{60};  // 0: every client chain verified afresh
  std::string ticket_key_file;  // shared session ticket keys; empty: the process's own
  std::vector<NamedCertificate> sni_certificates;   // chosen by the name a client asks for
  std::vector<NamedCertificate> host_certificates;  // chosen by the session (answer_with_host_set)
};

// The client side: what the proxy offers and trusts when it connects to a relay host (Exim's
// smtp transport options; the --relay-tls-* flags). Who must verify, the names checked and
// the SNI are per connection (ConnectParameters in client_context.hpp).
struct ClientOptions {
  // CAs for server certificates: PEM file, hashed directory, "system", or empty (then no
  // certificate verifies: try-verify connections record that, verify connections fail).
  std::string verify_certificates = "system";
  std::string certificate;  // client certificate chain (PEM), sent when asked; empty: none
  std::string privatekey;   // its key; empty: the key sits in the certificate file
  std::string min_protocol = "TLSv1.2";  // TLSv1.2 or TLSv1.3
  std::string require_ciphers;           // TLS 1.2 cipher list; empty: the proxy's default
  std::string ciphersuites;              // TLS 1.3 suites; empty: OpenSSL's defaults
  std::string crl;                       // PEM file of CRLs checked with the server's chain
  unsigned verify_depth = 9;
  std::size_t session_cache_size = 256;  // servers whose last session is kept; 0: no resumption
};

}  // namespace stp::tls
