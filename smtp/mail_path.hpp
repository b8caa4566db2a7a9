// The domain a RCPT goes to, read from its arguments ("TO:<user@example.org> NOTIFY=..."), for
// routing by MX: the mailbox between the angle brackets (a quoted local part may hold '@' and
// '>'), a source route dropped, the domain after the last '@' outside quotes, lower case and
// without a trailing dot.
//
// Pure. Trusts nothing: the arguments are the local client's; anything that is not a plain
// domain name (an address literal, a path without a domain, stray bytes) is nullopt.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace stp::smtp {

std::optional<std::string> recipient_domain(std::string_view arguments);

}  // namespace stp::smtp
