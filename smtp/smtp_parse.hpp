// SMTP wire framing as pure functions: client command lines, MTA replies, and the EHLO reply
// rewrite. No sockets, no allocation on the framing paths; unit-tested and fuzzed.
//
// Trusts nothing: client bytes are arbitrary (any length, NULs, bare CR/LF); MTA replies are
// bounded in size and checked for a well-formed code before anything reads them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace stp::smtp {

enum class Verb : std::uint8_t {
  other,
  helo,
  ehlo,
  mail,
  rcpt,
  data,
  bdat,
  rset,
  noop,
  quit,
  vrfy,
  expn,
  etrn,
  help,
  auth,
  starttls,
  xclient,
  xforward,
  turn,  // TURN or ATRN: the MTA would become the client on this connection
};

// What the proxy knows of each verb, in one table (Postfix's smtpd_cmd_table): the encryption
// policy and the session read these flags instead of keeping lists of their own.
namespace command_flag {
// Carries or probes mail, or authenticates: refused in the clear where TLS is required.
inline constexpr unsigned needs_tls = 1u << 0;
// The proxy answers it while no MTA connection is open (it needs nothing from the MTA).
inline constexpr unsigned answered_while_detached = 1u << 1;
}  // namespace command_flag

unsigned command_flags(Verb verb);

// What the client may send after a command before it has the reply (RFC 2920's groups, RFC
// 3207, RFC 3030): where the proxy stops taking a pipelined group. The proxy does not enforce
// RFC 2920's list of commands that must end a group (VRFY, NOOP, ...): the MTA answers those
// in order whatever follows them.
enum class AfterCommand : std::uint8_t {
  command,        // the next command, at once
  reply,          // nothing: the next line may depend on the reply (AUTH's 334)
  message,        // the message: after DATA's 354, or BDAT's chunk at once
  tls_handshake,  // after STARTTLS's 220, the TLS handshake
  nothing,        // QUIT: the end
};
AfterCommand after_command(Verb verb);

// One command line, parsed once where it is framed; every rule reads this parse, so no two
// parts of the proxy can disagree on what the command is.
struct BdatArguments {
  std::uint64_t size = 0;
  bool last = false;
};

struct Command {
  Verb verb = Verb::other;
  std::string_view line;       // as the client sent it, without its terminator
  std::string_view arguments;  // after the verb and its spaces, trailing spaces dropped
  // BDAT: its size and LAST, or nullopt when they are not "<size> [LAST]".
  std::optional<BdatArguments> bdat = std::nullopt;
};

// Why a line is not a command the MTA may see. The MTAs read lines differently where they
// hold white space other than a plain space: Postfix skips leading white space and splits on
// any of " \t\r\n\v\f", Exim matches the verb from the first byte and splits on a space
// only. A line that starts with white space or holds any control byte (NUL, CR, TAB, VT, FF,
// DEL...) is refused, so that the verb is the same to the proxy and to every MTA: the bytes
// before the first space. No legitimate client sends such a line (RFC 5321 commands use SP).
enum class CommandSyntax : std::uint8_t { ok, empty, leading_space, control_character };

struct ParsedCommand {
  CommandSyntax syntax = CommandSyntax::ok;
  Command command;  // meaningful with CommandSyntax::ok
};
ParsedCommand parse_command(std::string_view line);

// Any C0 control byte or DEL (bytes of UTF-8, 0x80 and up, are text).
bool has_control_character(std::string_view text);

// Splits the client's byte stream into command lines ending in LF (a CR before it is
// dropped). A line longer than the limit is skipped up to its end and reported once.
class CommandFramer {
 public:
  explicit CommandFramer(std::size_t max_line_length) : max_line_length_(max_line_length) {}

  enum class Status { need_more, line, line_too_long };
  struct Result {
    Status status;
    std::size_t consumed;   // bytes of input used up, also with need_more while skipping
    std::string_view line;  // with Status::line: the line without its terminator
  };
  Result next(std::string_view input);

  // Forget a partially skipped line (the buffer it came from was thrown away).
  void reset() { skipping_ = false; }

 private:
  std::size_t max_line_length_;
  bool skipping_ = false;
};

// "<size> [LAST]" (a size that fits in 64 bits); nullopt on anything else.
std::optional<BdatArguments> parse_bdat_arguments(std::string_view arguments);

// One complete MTA reply (one or more lines of the same code, the last without `-`).
struct ReplyScan {
  enum class Status { need_more, complete, malformed } status;
  std::size_t length = 0;  // bytes of the whole reply, line terminators included
  int code = 0;
};
ReplyScan scan_reply(std::string_view input, std::size_t max_reply_length);

// What the MTA's EHLO reply says it supports, as far as the proxy cares.
struct MtaCapabilities {
  bool starttls = false;         // STARTTLS (RFC 3207)
  bool pipelining = false;       // PIPELINING (RFC 2920)
  bool auth = false;             // AUTH with at least one mechanism (RFC 4954)
  bool auth_plain = false;       // among them PLAIN
  bool auth_login = false;       // among them LOGIN
  bool chunking = false;         // CHUNKING: BDAT may be sent
  bool eight_bit_mime = false;   // 8BITMIME (RFC 6152)
  std::uint64_t size_limit = 0;  // SIZE n: the largest message; 0 when none is given
  bool xclient = false;
  std::vector<std::string> xclient_attributes;  // upper-cased, as advertised
  bool advertises(std::string_view attribute) const;
};
MtaCapabilities parse_ehlo_capabilities(std::string_view reply);

// A complete reply from a peer the proxy does not control (a domain's MX), as the local client
// gets it: each line ends CRLF, and a byte that is not printable ASCII (a bare CR, a control
// byte) becomes '?'.
std::string clean_reply(std::string_view reply);

// A MAIL command line without its BODY=8BITMIME parameter (any case), for a server that does
// not offer 8BITMIME: the message goes as it is, as Postfix sends it.
std::string without_body_8bitmime(std::string_view mail_line);

struct EhloRewrite {
  bool offer_starttls = false;  // client matches --tls-advertise-hosts and is not encrypted
  bool hide_auth = false;       // not encrypted yet
  bool hide_chunking = false;   // not the reply of the connection that would carry the chunks
};
// Rewrites a complete 250 EHLO reply: drops STARTTLS, XCLIENT, XFORWARD (and AUTH, CHUNKING
// when asked),
// adds STARTTLS when asked, and re-terminates every line with CRLF. Any other reply is
// returned unchanged.
std::string rewrite_ehlo_reply(std::string_view reply, const EhloRewrite& rewrite);

}  // namespace stp::smtp
