// Gives memory that finished work freed back to the operating system once a worker thread has
// gone quiet. glibc keeps freed blocks inside its heaps for reuse; after a burst of sessions the
// blocks that lie between long-lived allocations (TLS record buffers, input buffers and
// coroutine frames of sessions that have since gone idle) stay resident until malloc_trim()
// walks the heaps and releases their whole pages. A busy proxy reuses them at once, so trimming
// is only worth it when nothing is awake: each worker counts its sessions that are running
// (not parked on a read), and when the count has stayed at zero for a moment it trims the
// process's heaps, at most once a second per worker. Runs on the worker's thread only.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>

namespace stp {

class MemoryReturn {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr auto kQuietFor = std::chrono::milliseconds(200);
  static constexpr auto kMinInterval = std::chrono::seconds(1);

  // `release` does the work (tests count it); by default the heaps are trimmed.
  explicit MemoryReturn(std::function<void()> release = trim_heaps);
  MemoryReturn(const MemoryReturn&) = delete;
  MemoryReturn& operator=(const MemoryReturn&) = delete;

  // Until start() (and after stop()) only the count is kept.
  void start(const boost::asio::any_io_executor& executor);
  void stop();

  void session_woke() { ++awake_; }
  void session_slept();
  std::size_t awake() const { return awake_; }

  // glibc's malloc_trim(0); nothing elsewhere.
  static void trim_heaps();

 private:
  void schedule(Clock::time_point at);
  void on_timer();

  std::function<void()> release_;
  std::unique_ptr<boost::asio::steady_timer> timer_;
  std::size_t awake_ = 0;
  bool scheduled_ = false;
  Clock::time_point last_release_ = Clock::time_point::min();
};

// Counts a session as awake for as long as it lives (one run of its coroutine).
class AwakeSession {
 public:
  explicit AwakeSession(MemoryReturn& memory) : memory_(&memory) { memory_->session_woke(); }
  AwakeSession(AwakeSession&& other) noexcept : memory_(other.memory_) { other.memory_ = nullptr; }
  AwakeSession(const AwakeSession&) = delete;
  AwakeSession& operator=(const AwakeSession&) = delete;
  AwakeSession& operator=(AwakeSession&&) = delete;
  ~AwakeSession() {
    if (memory_) memory_->session_slept();
  }

 private:
  MemoryReturn* memory_;
};

}  // namespace stp
