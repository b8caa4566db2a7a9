// Logging set-up and escaping; see log.hpp.
#include "proxy/log.hpp"

#include <spdlog/async.h>
#include <spdlog/details/null_mutex.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>
#include <unistd.h>

#include <cerrno>
#include <memory>

namespace stp::log {
namespace {

// Lines waiting for the writer thread; past this the oldest are dropped (and counted), so a
// session never waits for the log.
constexpr std::size_t kQueueLines = 16 * 1024;
// The writer's batch: written out when the queue runs dry, or when it holds this much.
constexpr std::size_t kBatchBytes = 64 * 1024;

// stderr, written in batches by the logger's one writer thread: one write(2) for as many
// lines as arrived together (a busy proxy logs several lines per session), each line still
// out as soon as no other waits behind it.
class BatchingStderrSink final : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
 public:
  // `pool` is the one whose thread writes: not owned (the sink may be destroyed on that very
  // thread, which must not be the one to destroy, and so join, its own pool).
  explicit BatchingStderrSink(spdlog::details::thread_pool* pool) : pool_(pool) {}
  // The last lines before an exit may have been held for the pool's own stop message.
  ~BatchingStderrSink() override { flush_(); }
  BatchingStderrSink(const BatchingStderrSink&) = delete;
  BatchingStderrSink& operator=(const BatchingStderrSink&) = delete;

 protected:
  void sink_it_(const spdlog::details::log_msg& message) override {
    formatter_->format(message, batch_);
    if (batch_.size() >= kBatchBytes || pool_->queue_size() == 0) flush_();
  }

  void flush_() override {
    const char* data = batch_.data();
    std::size_t left = batch_.size();
    while (left > 0) {
      const auto n = ::write(STDERR_FILENO, data, left);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // stderr is gone: nothing to report it to
      data += n;
      left -= static_cast<std::size_t>(n);
    }
    batch_.clear();
  }

 private:
  spdlog::details::thread_pool* pool_;
  spdlog::memory_buf_t batch_;
};

// %* in a pattern: the message, escaped for a JSON string.
class JsonMessage : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& message, const std::tm&,
              spdlog::memory_buf_t& destination) override {
    const auto escaped =
        json_escape(std::string_view(message.payload.data(), message.payload.size()));
    destination.append(escaped.data(), escaped.data() + escaped.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonMessage>();
  }
};

}  // namespace

std::string json_escape(std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size() + 8);
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      out += "\\u00";
      out += kHex[c >> 4];
      out += kHex[c & 0x0f];
    } else {
      out += ch;
    }
  }
  return out;
}

void init(std::string_view level, bool json) {
  spdlog::init_thread_pool(kQueueLines, 1);
  auto pool = spdlog::thread_pool();
  auto logger = std::make_shared<spdlog::async_logger>(
      "smtp-tls-proxy", std::make_shared<BatchingStderrSink>(pool.get()), pool,
      spdlog::async_overflow_policy::overrun_oldest);
  if (json) {
    auto formatter = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
    formatter->add_flag<JsonMessage>('*').set_pattern(
        R"({"time":"%Y-%m-%dT%H:%M:%S.%eZ","level":"%l","message":"%*"})");
    logger->set_formatter(std::move(formatter));
  } else {
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %^%l%$ %v", spdlog::pattern_time_type::utc);
  }
  logger->set_level(spdlog::level::from_str(std::string(level)));
  spdlog::set_default_logger(std::move(logger));
}

std::size_t dropped_lines() {
  const auto pool = spdlog::thread_pool();
  return pool ? pool->overrun_counter() : 0;
}

void shutdown() {
  spdlog::shutdown();  // the writer thread writes what is queued, then ends
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
