// What the server and client TLS contexts set up alike: the protocol floor and cipher lists,
// a certificate with its key, trusted CAs and CRLs. Internal to tls/ (tls_context.cpp and
// client_context.cpp); each function names the operator's flag in its errors, from the
// prefix it is given ("--tls-" or "--relay-tls-"), so the two sides report alike.
//
// Trusts the operator's files only after OpenSSL has parsed them and a key matched its
// certificate.
#pragma once

#include <openssl/ssl.h>

#include <ctime>
#include <optional>
#include <string>
#include <string_view>

namespace stp::tls::setup {

// Throws std::invalid_argument("FLAG: WHAT (OpenSSL's errors)"), clearing OpenSSL's queue.
[[noreturn]] void fail(std::string_view flag, std::string_view what);

// Protocol floor ("TLSv1.2" or "TLSv1.3"), TLS 1.2 cipher list (empty: the proxy's default,
// AEAD with forward secrecy only) and TLS 1.3 suites (empty: OpenSSL's). Flags
// PREFIX min-protocol, require-ciphers, ciphersuites.
void use_protocols_and_ciphers(SSL_CTX* ctx, std::string_view prefix,
                               const std::string& min_protocol, const std::string& require_ciphers,
                               const std::string& ciphersuites);

// A certificate chain and its private key (which may sit in the same file). Flags
// PREFIX certificate and PREFIX privatekey.
void use_certificate_and_key(SSL_CTX* ctx, std::string_view prefix,
                             const std::string& certificate_file, const std::string& key_file);

// Checks that `chain` (the certificates after `leaf` in `file`) is in order: each one the
// issuer of the one before it, as clients expect them. Flag `flag`.
void check_chain_order(std::string_view flag, const std::string& file, X509* leaf,
                       const STACK_OF(X509) * chain);

// Where the trust store finds its CAs.
enum class CaSource { system, directory, file };

// Loads CAs into the context's store from a PEM file, a hashed directory or "system" (the
// caller has checked `path` is not empty). Flag PREFIX verify-certificates.
CaSource use_trusted_cas(SSL_CTX* ctx, std::string_view prefix, const std::string& path);

// Adds every CRL in the PEM file `path` to the context's store and turns on CRL checks for
// the whole chain (as Exim does); warns of a CRL past its next update. Returns the earliest
// next update (nullopt: none given). Flag PREFIX crl.
std::optional<std::time_t> use_crls(SSL_CTX* ctx, std::string_view prefix, const std::string& path);

}  // namespace stp::tls::setup
