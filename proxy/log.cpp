// Logging set-up, the batching stderr sink, and escaping; see log.hpp.
#include "proxy/log.hpp"

#include "smtp/text.hpp"

#include <spdlog/pattern_formatter.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>
#include <utility>

namespace stp::log {
namespace {

// The default logger's sink, for shutdown() and write_held_at_crash().
std::shared_ptr<BatchingSink> default_sink;

// Appends `text` as the inside of a JSON string to `out` (a std::string or spdlog's buffer).
template <typename Out>
void append_json_escaped(std::string_view text, Out& out) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      const char escaped[] = {'\\', ch};
      out.append(escaped, escaped + 2);
    } else if (c < 0x20) {
      const char escaped[] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0x0f]};
      out.append(escaped, escaped + 6);
    } else {
      out.push_back(ch);
    }
  }
}

// %* in a pattern: the message, escaped for a JSON string, written straight into the line.
class JsonMessage : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& message, const std::tm&,
              spdlog::memory_buf_t& destination) override {
    append_json_escaped(std::string_view(message.payload.data(), message.payload.size()),
                        destination);
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonMessage>();
  }
};

}  // namespace

BatchingSink::BatchingSink(Options options, Writer writer)
    : options_(options), writer_(std::move(writer)), formatter_(make_formatter(false)) {
  buffer_.reserve(options_.capacity + 1024);  // room for the line that crosses the bound
}

BatchingSink::~BatchingSink() {
  stop();
}

void BatchingSink::log(const spdlog::details::log_msg& message) {
  bool wake = false;
  {
    std::lock_guard lock(mutex_);
    const std::size_t held = buffer_.size();
    try {
      formatter_->format(message, buffer_);
    } catch (...) {
      buffer_.resize(held);  // never half a line (spdlog reports the error)
      throw;
    }
    const auto now = Clock::now();
    if (quiet(now) || message.level >= spdlog::level::warn || buffer_.size() >= options_.capacity ||
        stopping_ || !start_flusher()) {
      write_held();
    } else if (held == 0) {
      first_held_ = now;
      wake = true;
    }
  }
  if (wake) wake_flusher_.notify_one();
}

void BatchingSink::flush() {
  std::lock_guard lock(mutex_);
  write_held();
}

void BatchingSink::set_pattern(const std::string& pattern) {
  set_formatter(std::make_unique<spdlog::pattern_formatter>(pattern));
}

void BatchingSink::set_formatter(std::unique_ptr<spdlog::formatter> formatter) {
  std::lock_guard lock(mutex_);
  formatter_ = std::move(formatter);
}

void BatchingSink::stop() {
  std::thread flusher;
  {
    std::lock_guard lock(mutex_);
    write_held();
    stopping_ = true;
    flusher = std::move(flusher_);
  }
  wake_flusher_.notify_one();
  if (flusher.joinable()) flusher.join();
}

void BatchingSink::try_flush(std::chrono::milliseconds patience) {
  const auto give_up = Clock::now() + patience;
  while (!mutex_.try_lock()) {
    if (Clock::now() >= give_up) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  write_held();
  mutex_.unlock();
}

void BatchingSink::write_stderr(std::string_view lines) {
  while (!lines.empty()) {
    const auto n = ::write(STDERR_FILENO, lines.data(), lines.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // stderr is gone or refuses: there is nowhere to say so
    lines.remove_prefix(static_cast<std::size_t>(n));
  }
}

// Windows of `quiet_window`, one after the other, each starting at its first line: quiet while
// neither this window nor the one before it (if that ended less than a window ago) has had
// more than `quiet_lines` lines.
bool BatchingSink::quiet(Clock::time_point now) {
  const auto since = now - window_start_;
  if (since >= options_.quiet_window) {
    lines_in_previous_window_ = since < 2 * options_.quiet_window ? lines_in_window_ : 0;
    lines_in_window_ = 0;
    window_start_ = now;
  }
  ++lines_in_window_;
  return std::max(lines_in_window_, lines_in_previous_window_) <= options_.quiet_lines;
}

void BatchingSink::write_held() {
  if (buffer_.size() == 0) return;
  writer_(std::string_view(buffer_.data(), buffer_.size()));
  buffer_.clear();
}

bool BatchingSink::start_flusher() {
  if (flusher_.joinable()) return true;
  try {
    flusher_ = std::thread([this] { run_flusher(); });
    return true;
  } catch (const std::system_error&) {
    return false;  // no thread to be had: each line is written at once, as when quiet
  }
}

void BatchingSink::run_flusher() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    if (buffer_.size() == 0) {
      wake_flusher_.wait(lock);
    } else if (const auto due = first_held_ + options_.interval; Clock::now() < due) {
      wake_flusher_.wait_until(lock, due);
    } else {
      write_held();
    }
  }
}

std::unique_ptr<spdlog::formatter> make_formatter(bool json) {
  auto formatter = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
  if (json) {
    formatter->add_flag<JsonMessage>('*').set_pattern(
        R"({"time":"%Y-%m-%dT%H:%M:%S.%eZ","level":"%l","message":"%*"})");
  } else {
    formatter->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %l %v");
  }
  return formatter;
}

std::string json_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 8);
  append_json_escaped(text, out);
  return out;
}

void init(std::string_view level, bool json) {
  default_sink = std::make_shared<BatchingSink>(BatchingSink::Options{});
  default_sink->set_formatter(make_formatter(json));
  auto logger = std::make_shared<spdlog::logger>("smtp-tls-proxy", default_sink);
  logger->set_level(spdlog::level::from_str(std::string(level)));
  spdlog::set_default_logger(std::move(logger));
}

void shutdown() {
  if (default_sink) default_sink->stop();
}

void write_held_at_crash() {
  if (default_sink) default_sink->try_flush(std::chrono::milliseconds(100));
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

std::string escape_command(std::string_view line, std::size_t max_length) {
  constexpr std::string_view kBlanks = " \t";
  const auto verb_at = std::min(line.find_first_not_of(kBlanks), line.size());
  const auto verb_end = std::min(line.find_first_of(kBlanks, verb_at), line.size());
  if (text::lower(line.substr(verb_at, verb_end - verb_at)) != "auth") {
    return escape(line, max_length);
  }
  // A SASL mechanism's name (RFC 4422 3.1): up to 20 of A-Z, 0-9, "-" and "_".
  auto mechanism_end = std::min(line.find_first_not_of(kBlanks, verb_end), line.size());
  for (std::size_t n = 0; mechanism_end < line.size() && n < 20; ++mechanism_end, ++n) {
    const char c = line[mechanism_end];
    const bool name = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                      c == '-' || c == '_';
    if (!name) break;
  }
  const bool more = line.find_first_not_of(kBlanks, mechanism_end) != std::string_view::npos;
  return escape(line.substr(0, mechanism_end), max_length) + (more ? " [credentials]" : "");
}

}  // namespace stp::log
