// Every reply the inbound proxy gives in its own name, in one table: the fixed ones as
// constants, and those that name this host formatted once at start (HostReplies).
#pragma once

#include <string>
#include <string_view>

namespace stp::inbound {

namespace reply {
inline constexpr std::string_view kOk = "250 2.0.0 Ok\r\n";
inline constexpr std::string_view kBye = "221 2.0.0 Bye\r\n";
inline constexpr std::string_view kStartTls = "220 2.0.0 Ready to start TLS\r\n";
inline constexpr std::string_view kTlsActive = "554 5.5.1 Error: TLS already active\r\n";
inline constexpr std::string_view kNotImplemented = "502 5.5.1 Error: command not implemented\r\n";
inline constexpr std::string_view kStartTlsNotOffered =
    "503 5.5.1 Error: STARTTLS not offered to this client\r\n";
inline constexpr std::string_view kStartTlsSyntax = "501 5.5.4 Syntax: STARTTLS\r\n";
inline constexpr std::string_view kTlsUnavailable =
    "454 4.7.0 TLS not available due to local problem\r\n";
inline constexpr std::string_view kSecurityFailure = "554 5.7.0 Security failure\r\n";
inline constexpr std::string_view kNotPermitted = "550 5.7.0 Error: command not permitted\r\n";
inline constexpr std::string_view kAuthNeedsTls =
    "538 5.7.11 Encryption required for requested authentication mechanism\r\n";
inline constexpr std::string_view kMustStartTls =
    "530 5.7.0 Must issue a STARTTLS command first\r\n";
inline constexpr std::string_view kNeedsCertificate =
    "550 5.7.1 A verified client certificate is required\r\n";
inline constexpr std::string_view kLineTooLong = "500 5.5.2 Error: line too long\r\n";
inline constexpr std::string_view kBadCharacter = "500 5.5.2 Error: bad character in command\r\n";
inline constexpr std::string_view kLeadingSpace =
    "500 5.5.2 Error: white space before the command\r\n";
inline constexpr std::string_view kBadSyntax = "500 5.5.2 Error: bad syntax\r\n";
inline constexpr std::string_view kBdatNotOffered =
    "502 5.5.1 Error: BDAT not offered by the mail server\r\n";
inline constexpr std::string_view kBdatNotOfferedNow =
    "451 4.3.0 Error: the mail server does not offer BDAT now; try again\r\n";
inline constexpr std::string_view kMessageTooBig =
    "552 5.3.4 Error: message exceeds the mail server's size limit\r\n";
inline constexpr std::string_view kHeloAfterTls =
    "503 5.5.1 Error: send HELO/EHLO first after STARTTLS\r\n";
inline constexpr std::string_view kOnlyBdat =
    "503 5.5.1 Error: only BDAT, RSET, NOOP or QUIT within a BDAT message\r\n";
inline constexpr std::string_view kBdatRefusedMessage =
    "503 5.5.1 Error: a chunk of this message was refused; send RSET\r\n";
inline constexpr std::string_view kBdatEmpty =
    "501 5.5.4 Error: an empty BDAT chunk must be the LAST\r\n";
inline constexpr std::string_view kBdatSyntax = "501 5.5.4 Syntax: BDAT count [LAST]\r\n";
inline constexpr std::string_view kBareLineEnding =
    "550 5.5.2 Error: bare <CR> or <LF> in message content\r\n";
}  // namespace reply

// The replies that name this host (--hostname).
struct HostReplies {
  explicit HostReplies(const std::string& host);

  std::string greeting;                   // 220: the proxy's own
  std::string helo;                       // 250: a HELO answered without the MTA
  std::string service_unavailable;        // 421 4.3.2: the MTA cannot be reached
  std::string mta_refused;                // 421 4.3.2: the MTA refused the session
  std::string identity_refused;           // 421 4.7.0: the MTA would not take XCLIENT
  std::string mta_lost;                   // 421 4.4.2: the MTA went away
  std::string timeout;                    // 421 4.4.2: the client went silent
  std::string shutdown;                   // 421 4.3.2: the proxy is stopping
  std::string too_many_errors;            // 421 4.7.0: --max-errors
  std::string message_abandoned;          // 421 4.3.0: a BDAT message abandoned, no way back
  std::string too_many_from_host_prefix;  // 421 4.7.0: --max-connections-per-host, + address
  std::string no_client_identity;         // 421 4.7.0: a load balancer's LOCAL header
};

}  // namespace stp::inbound
