// One lazily re-armed timer per connection; see deadline.hpp.
#include "proxy/deadline.hpp"

#include <algorithm>

namespace stp {

void Deadline::arm_at(Clock::time_point when) {
  deadline_ = when;
  fired_ = Fired::no;
  if (pending_ && timer_.expiry() <= std::min(deadline_, wake_point_)) return;
  timer_.expires_at(std::min(deadline_, wake_point_));  // cancels a later wait, if any
  start();
}

void Deadline::wake_at(Clock::time_point when) {
  wake_point_ = when;
  if (pending_ && timer_.expiry() <= when) return;
  timer_.expires_at(std::min(deadline_, wake_point_));
  start();
}

void Deadline::start() {
  pending_ = true;
  timer_.async_wait([this, alive = owner_.keep_alive()](const boost::system::error_code& ec) {
    if (ec == boost::asio::error::operation_aborted) return;  // superseded or finished
    pending_ = false;
    on_timer();
  });
}

void Deadline::on_timer() {
  const auto now = Clock::now();
  if (now >= wake_point_ && now < deadline_) {
    wake_point_ = Clock::time_point::max();
    fired_ = Fired::wake_point;
    owner_.on_wake_point();
  }
  if (now < deadline_) {
    timer_.expires_at(std::min(deadline_, wake_point_));
    start();
    return;
  }
  fired_ = Fired::expired;
  owner_.on_deadline_expired();
}

}  // namespace stp
