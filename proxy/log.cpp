// Logging set-up and escaping; see log.hpp.
#include "proxy/log.hpp"

#include <spdlog/sinks/stdout_sinks.h>

namespace stp::log {

void init(std::string_view level) {
  auto logger = spdlog::stderr_logger_mt("smtp-tls-proxy");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %^%l%$ %v", spdlog::pattern_time_type::utc);
  logger->set_level(spdlog::level::from_str(std::string(level)));
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(std::move(logger));
}

std::string escape(std::string_view text, std::size_t max_length) {
  static constexpr char kHex[] = "0123456789abcdef";
  const bool truncated = text.size() > max_length;
  if (truncated) text = text.substr(0, max_length);
  std::string out;
  out.reserve(text.size() + 8);
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\\' || c == '"') {
      out += '\\';
      out += ch;
    } else if (c >= 0x20 && c < 0x7f) {
      out += ch;
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0x0f];
    }
  }
  if (truncated) out += "...";
  return out;
}

}  // namespace stp::log
