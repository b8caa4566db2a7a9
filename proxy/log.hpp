// Logging: spdlog to stderr (the container convention) through a sink that writes lines in
// batches when they come fast, and the one function that makes untrusted text safe to put in
// a log line.
#pragma once

#include <spdlog/sinks/sink.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

namespace stp::log {

// Configures the default logger; `level` is trace|debug|info|warn|error. With `json`, every
// line is one JSON object: {"time":…,"level":…,"message":…}.
void init(std::string_view level, bool json = false);

// Writes every line the default logger holds and stops its flusher thread; lines logged after
// it are written at once. main() calls it on its way out; before init() it does nothing.
void shutdown();

// For std::terminate: writes what the default logger holds, without joining a thread, and
// gives up after about 100 ms if another thread keeps the sink locked (stuck writing to a
// stderr that does not drain): a crash must not become a hang.
void write_held_at_crash();

// The formatter init() gives the logger: `2026-12-07T10:00:00.000Z info message`, or the JSON
// object above.
std::unique_ptr<spdlog::formatter> make_formatter(bool json);

// stderr, written without a write(2) per line when lines come fast.
//
// A line is formatted straight into one buffer under the sink's lock. It is written at once,
// with whatever is held before it, when it is a warning or worse, when the buffer holds
// `capacity` bytes, or when the log is quiet (at most `quiet_lines` lines in this
// `quiet_window` and in the one before): an idle or lightly used proxy writes each line as it
// is logged, as a synchronous logger does, so `tail -f`, a test reading the log right after a
// reply, and a crash all see every line. Past that rate the lines are held, and a flusher
// thread (started then) writes them `interval` after the first of them: one write(2) for many
// sessions' lines.
//
// Writes happen under the lock, on the logging thread or the flusher's, so lines are never
// reordered or split. A stderr that stops draining blocks the threads that log, as spdlog's
// synchronous stderr logger did: nothing is dropped, and at most `capacity` plus one line is
// held. Lost at a crash (abort, SIGKILL): what is held, so nothing below the rate above.
class BatchingSink final : public spdlog::sinks::sink {
 public:
  struct Options {
    std::size_t capacity = 32 * 1024;
    std::chrono::milliseconds interval{50};
    std::chrono::milliseconds quiet_window{1000};
    std::size_t quiet_lines = 100;  // 0: every line below warning is held
  };
  // Gets whole lines, one or more; by default write(2)s them to stderr, errors ignored.
  using Writer = std::function<void(std::string_view)>;

  explicit BatchingSink(Options options, Writer writer = write_stderr);
  ~BatchingSink() override;
  BatchingSink(const BatchingSink&) = delete;
  BatchingSink& operator=(const BatchingSink&) = delete;

  void log(const spdlog::details::log_msg& message) override;
  void flush() override;  // writes what is held
  void set_pattern(const std::string& pattern) override;
  void set_formatter(std::unique_ptr<spdlog::formatter> formatter) override;

  // flush(), and the flusher thread ends: from then on every line is written at once.
  void stop();
  // flush() unless the lock cannot be had within about `patience`; joins nothing.
  void try_flush(std::chrono::milliseconds patience);

  static void write_stderr(std::string_view lines);

 private:
  using Clock = std::chrono::steady_clock;
  bool quiet(Clock::time_point now);  // counts the line too
  void write_held();                  // with mutex_ held
  bool start_flusher();               // with mutex_ held; false if no thread can be made
  void run_flusher();

  const Options options_;
  const Writer writer_;
  std::mutex mutex_;
  std::condition_variable wake_flusher_;  // a first line held, or stop()
  std::unique_ptr<spdlog::formatter> formatter_;
  spdlog::memory_buf_t buffer_;
  Clock::time_point first_held_;  // when the oldest line in buffer_ was logged
  Clock::time_point window_start_;
  std::size_t lines_in_window_ = 0;
  std::size_t lines_in_previous_window_ = 0;
  bool stopping_ = false;
  std::thread flusher_;  // started the first time a line is held
};

// `text` as the inside of a JSON string.
std::string json_escape(std::string_view text);

// Printable ASCII kept (with `\` and `"` escaped), everything else as \xHH, and at most
// `max_length` input bytes (then "..."). For anything a client or a DNS server sent.
std::string escape(std::string_view text, std::size_t max_length = 100);

// A client's command line as escape() gives it, except that an AUTH line (however spaced or
// spelled) shows its mechanism only: what follows is a credential.
std::string escape_command(std::string_view line, std::size_t max_length = 100);

}  // namespace stp::log
