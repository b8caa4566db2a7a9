// Server names as a TLS server sees them: whether a name is a host name (the SNI a client may
// send, RFC 6066), whether a certificate pattern covers one, and the host name in a
// ClientHello's server_name extension.
//
// Pure, no OpenSSL: the extension's bytes are the client's, read with every length checked.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace stp::tls {

// RFC 6066's HostName: letters, digits, hyphens and dots, labels of 1 to 63 bytes, at most
// 255 bytes, no trailing dot. An SNI that is not one is treated as absent.
bool is_host_name(std::string_view name);

// Whether `pattern` (exact, or "*." and one label) covers `name`; both lower case.
bool name_covers(std::string_view pattern, std::string_view name);

// The host name of a ClientHello's server_name extension (its body), lower case, without a
// trailing dot; nullopt when there is none or the extension is malformed.
std::optional<std::string> server_name_of(const unsigned char* body, std::size_t size);

}  // namespace stp::tls
