// The proxy's own Received: trace header, in Postfix's format so that tools that parse
// Postfix's headers read it:
//
//   Received: from helo.example (client.example [192.0.2.7])
//   	(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)
//   	 key-exchange X25519 server-signature ECDSA (P-256) server-digest SHA256)
//   	(Client CN "alice", Issuer "Example CA" (verified OK))
//   	(SNI mx.example.org, certificate CN "mx.example.org")
//   	by mx.example.org (smtp-tls-proxy) with ESMTPS id 4F1C2A000001;
//   	Wed, 25 Nov 2026 10:00:00 +0000
//
// The SNI line is there when the client asked for a name, or the certificate was chosen among
// several.
//
// Pure: everything comes in as arguments. The HELO name and the certificate names are the
// client's text; they are reduced to printable ASCII without the characters that would end a
// comment or a quoted string, and truncated.
#pragma once

#include "tls/session_facts.hpp"

#include <boost/asio/ip/address.hpp>

#include <ctime>
#include <optional>
#include <string>
#include <string_view>

namespace stp {

struct ReceivedFields {
  std::string_view helo;         // empty when the client sent none
  bool extended_helo = false;    // EHLO (ESMTP) rather than HELO (SMTP)
  bool authenticated = false;    // the MTA accepted AUTH (ESMTPA, ESMTPSA)
  std::string_view client_name;  // verified reverse name; empty: "unknown"
  boost::asio::ip::address client_address;
  const tls::SessionFacts* tls = nullptr;  // null when not encrypted
  // Name the certificate that answered: the proxy chooses among several (by SNI, by host).
  // The SNI asked for is named whenever there is one.
  bool name_certificate = false;
  std::string_view hostname;
  std::string_view id;
  std::time_t now = 0;
};

std::string build_received_header(const ReceivedFields& fields);

// Whether message content starts with a space or a tab: put behind a header, such a first line
// would continue that header. The header must then be followed by an empty line, as Postfix's
// smtpd does for its own Received header (the whole message becomes body, as it would without
// the proxy). `dot_stuffed`: DATA content as the client sent it, whose leading dot the MTA
// removes. nullopt: too few bytes to tell yet.
std::optional<bool> starts_with_continuation(std::string_view content, bool dot_stuffed);

// RFC 3848's "with" keyword: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA (and SMTPS for HELO + TLS).
std::string_view with_protocol(bool extended_helo, bool tls, bool authenticated);

// RFC 5322 date-time in UTC, e.g. "Wed, 25 Nov 2026 10:00:00 +0000".
std::string rfc5322_date(std::time_t when);

// Client text made safe inside a comment or a quoted string: anything outside printable
// ASCII, and the characters that would end the comment or string, become '?'. Spaces are kept
// only where the caller quotes the text (certificate names such as "Example CA").
enum class Spaces { replace, keep };
std::string sanitize_for_header(std::string_view text, std::size_t max_length = 255,
                                Spaces spaces = Spaces::replace);

}  // namespace stp
