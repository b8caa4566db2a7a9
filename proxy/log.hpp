// Logging: spdlog to stderr (the container convention), and the one function that makes
// untrusted text safe to put in a log line.
#pragma once

#include <spdlog/spdlog.h>

#include <string>
#include <string_view>

namespace stp::log {

// Configures the default logger; `level` is trace|debug|info|warn|error. With `json`, every
// line is one JSON object: {"time":…,"level":…,"message":…}.
void init(std::string_view level, bool json = false);

// `text` as the inside of a JSON string.
std::string json_escape(std::string_view text);

// Printable ASCII kept (with `\` and `"` escaped), everything else as \xHH, and at most
// `max_length` input bytes (then "..."). For anything a client or a DNS server sent.
std::string escape(std::string_view text, std::size_t max_length = 100);

}  // namespace stp::log
