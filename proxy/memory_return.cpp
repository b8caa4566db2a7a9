// Returning freed heap memory when a worker goes quiet; see memory_return.hpp.
#include "proxy/memory_return.hpp"

#include <spdlog/spdlog.h>

#include <utility>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace stp {

MemoryReturn::MemoryReturn(std::function<void()> release) : release_(std::move(release)) {}

void MemoryReturn::start(const boost::asio::any_io_executor& executor) {
  timer_ = std::make_unique<boost::asio::steady_timer>(executor);
  scheduled_ = false;
}

void MemoryReturn::stop() {
  timer_.reset();  // its pending wait completes as cancelled, touching nothing
  scheduled_ = false;
}

void MemoryReturn::session_slept() {
  if (awake_ > 0) --awake_;
  if (awake_ == 0) schedule(Clock::now() + kQuietFor);
}

void MemoryReturn::schedule(Clock::time_point at) {
  if (!timer_ || scheduled_) return;
  scheduled_ = true;
  timer_->expires_at(at);
  timer_->async_wait([this](const boost::system::error_code& ec) {
    if (ec) return;  // stopped: `this` may be gone
    scheduled_ = false;
    on_timer();
  });
}

// A session that woke meanwhile and sleeps again schedules the next look itself.
void MemoryReturn::on_timer() {
  if (awake_ > 0) return;
  const auto now = Clock::now();
  if (last_release_ != Clock::time_point::min() && now - last_release_ < kMinInterval) {
    schedule(last_release_ + kMinInterval);
    return;
  }
  last_release_ = now;
  release_();
  spdlog::debug("worker quiet: freed heap memory returned in {:.2f} ms",
                std::chrono::duration<double, std::milli>(Clock::now() - now).count());
}

void MemoryReturn::trim_heaps() {
#if defined(__GLIBC__)
  ::malloc_trim(0);
#endif
}

}  // namespace stp
