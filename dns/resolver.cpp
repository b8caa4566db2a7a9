// The validating resolver on the event loop; see resolver.hpp.
#include "dns/resolver.hpp"

#include <unbound.h>

#include <boost/asio/async_result.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <stdexcept>

namespace stp::dns {
namespace asio = boost::asio;

namespace {

// Kept answers: bounded, and none for longer than a day whatever its TTL says.
constexpr std::size_t kMaxKept = 10000;
constexpr std::chrono::seconds kMaxKeepTime{24 * 3600};
// A failure is kept briefly, so that sessions arriving together do not each ask again.
constexpr std::chrono::seconds kFailureKeepTime{5};
constexpr std::size_t kMaxQueryName = 253;
// An answer larger than this is not kept (libunbound's own caches, bounded in bytes, still
// hold it): the kept answers stay under kMaxKept times this.
constexpr std::size_t kMaxKeptAnswerBytes = 8 * 1024;

[[noreturn]] void fail(const std::string& flag, const std::string& why) {
  throw std::invalid_argument(flag + ": " + why);
}

std::string key_of(std::string_view name, RecordType type) {
  std::string key(name);
  std::transform(key.begin(), key.end(), key.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (!key.empty() && key.back() == '.') key.pop_back();
  return key + "/" + std::to_string(static_cast<unsigned>(type));
}

// Letters, digits, hyphens, underscores and dots: what a mail domain or an MX name can be
// (after IDNA), so nothing else reaches libunbound's name parser.
bool query_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxQueryName) return false;
  return std::all_of(name.begin(), name.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '-' || c == '_' || c == '.';
  });
}

Answer failure(std::string why) {
  Answer answer;
  answer.why = std::move(why);
  return answer;
}

Answer answer_of(int error, const ub_result* result) {
  if (error != 0) return failure(ub_strerror(error));
  Answer answer;
  answer.security = result->secure  ? Security::secure
                    : result->bogus ? Security::bogus
                                    : Security::insecure;
  answer.ttl = std::chrono::seconds(std::max(result->ttl, 0));
  if (answer.security == Security::bogus) {
    answer.why = "DNSSEC validation failed";
    if (result->why_bogus) answer.why += std::string(": ") + result->why_bogus;
    return answer;
  }
  if (result->rcode == 3) {
    answer.status = Answer::Status::no_domain;
  } else if (result->rcode != 0) {
    answer.why = "DNS error, rcode " + std::to_string(result->rcode);
  } else if (result->havedata) {
    answer.status = Answer::Status::records;
    if (result->canonname && result->qname) {
      const std::string canonical = key_of(result->canonname, RecordType::a);
      if (canonical != key_of(result->qname, RecordType::a) && query_name(result->canonname)) {
        answer.canonical_name = canonical.substr(0, canonical.rfind('/'));
      }
    }
    for (int i = 0; result->data[i]; ++i) {
      answer.rdata.emplace_back(result->data[i], static_cast<std::size_t>(result->len[i]));
    }
  } else {
    answer.status = Answer::Status::no_records;
  }
  return answer;
}

}  // namespace

std::string_view to_string(Security security) {
  switch (security) {
    case Security::secure:
      return "secure";
    case Security::insecure:
      return "insecure";
    case Security::bogus:
      return "bogus";
  }
  return "insecure";
}

struct Resolver::Query {
  std::weak_ptr<Resolver> resolver;
  std::string key;
};

std::shared_ptr<Resolver> Resolver::create(asio::any_io_executor executor,
                                           const ResolverOptions& options) {
  return std::shared_ptr<Resolver>(new Resolver(std::move(executor), options));
}

Resolver::Resolver(asio::any_io_executor executor, const ResolverOptions& options)
    : executor_(std::move(executor)), descriptor_(executor_) {
  ctx_ = ub_ctx_create();
  if (!ctx_) fail("--dns-forwarder", "cannot create the resolver");
  // One background thread for every lookup (not a forked process: this one has threads).
  if (int e = ub_ctx_async(ctx_, 1); e != 0) fail("--dns-forwarder", ub_strerror(e));
  if (!options.trust_anchor_file.empty()) {
    if (!std::ifstream(options.trust_anchor_file)) {
      ub_ctx_delete(ctx_);
      fail("--dns-trust-anchor", "cannot read " + options.trust_anchor_file);
    }
    if (int e = ub_ctx_add_ta_file(ctx_, options.trust_anchor_file.c_str()); e != 0) {
      ub_ctx_delete(ctx_);
      fail("--dns-trust-anchor", ub_strerror(e));
    }
  }
  for (const auto& forwarder : options.forwarders) {
    if (int e = ub_ctx_set_fwd(ctx_, forwarder.c_str()); e != 0) {
      ub_ctx_delete(ctx_);
      fail("--dns-forwarder", forwarder + ": " + ub_strerror(e));
    }
  }
  // A forwarder on this machine (a local Unbound, a sidecar) is allowed; otherwise a
  // delegation to a loopback name server is not followed.
  const bool local_forwarder =
      std::any_of(options.forwarders.begin(), options.forwarders.end(), [](const auto& f) {
        boost::system::error_code ec;
        const auto address = boost::asio::ip::make_address(f.substr(0, f.find('@')), ec);
        return !ec && address.is_loopback();
      });
  if (local_forwarder) ub_ctx_set_option(ctx_, "do-not-query-localhost:", "no");
  descriptor_.assign(ub_fd(ctx_));
}

Resolver::~Resolver() {
  // The descriptor is libunbound's: given back, not closed, before the context goes.
  boost::system::error_code ignored;
  descriptor_.cancel(ignored);
  descriptor_.release();
  for (auto& [key, flight] : in_flight_) {
    ub_cancel(ctx_, flight.async_id);
    delete flight.query;
  }
  ub_ctx_delete(ctx_);
}

void Resolver::stop() {
  asio::post(executor_, [self = shared_from_this()] {
    self->stopped_ = true;
    boost::system::error_code ignored;
    self->descriptor_.cancel(ignored);
    auto flights = std::move(self->in_flight_);
    self->in_flight_.clear();
    for (auto& [key, flight] : flights) {
      ub_cancel(self->ctx_, flight.async_id);
      delete flight.query;
      for (auto& waiter : flight.waiters) deliver(std::move(waiter), failure("resolver stopped"));
    }
  });
}

std::optional<Answer> Resolver::kept_answer(const std::string& key) {
  std::lock_guard lock(kept_mutex_);
  const auto kept = kept_.find(key);
  if (kept == kept_.end()) return std::nullopt;
  if (kept->second.until <= std::chrono::steady_clock::now()) {
    kept_.erase(kept);
    return std::nullopt;
  }
  ++cache_hits_;
  return kept->second.answer;
}

asio::awaitable<Answer> Resolver::lookup(std::string name, RecordType type) {
  if (query_name(name)) {
    auto kept = kept_answer(key_of(name, type));
    if (kept) co_return std::move(*kept);
  }
  // Named, not a temporary in the co_await expression (GCC 12 miscompiles those).
  auto initiation = [self = shared_from_this()](auto handler, std::string name, RecordType type) {
    // The caller's executor, known here with the handler's own type.
    const asio::any_io_executor caller = asio::get_associated_executor(handler, self->executor_);
    Waiter waiter{Handler(std::move(handler)), asio::make_work_guard(caller)};
    asio::post(self->executor_,
               [self, name = std::move(name), type, waiter = std::move(waiter)]() mutable {
                 self->enqueue(std::move(name), type, std::move(waiter));
               });
  };
  Answer answer = co_await asio::async_initiate<decltype(asio::use_awaitable), void(Answer)>(
      std::move(initiation), asio::use_awaitable, std::move(name), type);
  co_return answer;
}

void Resolver::deliver(Waiter waiter, Answer answer) {
  const auto executor = waiter.work.get_executor();
  asio::post(executor,
             [handler = std::move(waiter.handler), answer = std::move(answer),
              work = std::move(waiter.work)]() mutable { std::move(handler)(std::move(answer)); });
}

void Resolver::enqueue(std::string name, RecordType type, Waiter waiter) {
  if (stopped_) return deliver(std::move(waiter), failure("resolver stopped"));
  if (!query_name(name)) return deliver(std::move(waiter), failure("not a domain name"));
  const std::string key = key_of(name, type);
  if (auto kept = kept_answer(key)) return deliver(std::move(waiter), std::move(*kept));
  if (const auto flight = in_flight_.find(key); flight != in_flight_.end()) {
    ++joined_;
    flight->second.waiters.push_back(std::move(waiter));
    return;
  }
  auto* query = new Query{weak_from_this(), key};
  int async_id = 0;
  const int error = ub_resolve_async(ctx_, name.c_str(), static_cast<int>(type), 1 /* IN */, query,
                                     &Resolver::on_result, &async_id);
  if (error != 0) {
    delete query;
    return deliver(std::move(waiter), failure(ub_strerror(error)));
  }
  ++sent_;
  auto& flight = in_flight_[key];
  flight.async_id = async_id;
  flight.query = query;
  flight.waiters.push_back(std::move(waiter));
  watch();
}

void Resolver::watch() {
  if (watching_ || in_flight_.empty()) return;
  watching_ = true;
  descriptor_.async_wait(asio::posix::descriptor_base::wait_read,
                         [self = shared_from_this()](const boost::system::error_code& ec) {
                           self->watching_ = false;
                           if (ec) return;
                           ub_process(self->ctx_);  // runs on_result for each answer ready
                           self->watch();
                         });
}

void Resolver::on_result(void* data, int error, ub_result* result) {
  std::unique_ptr<Query> query(static_cast<Query*>(data));
  Answer answer = answer_of(error, result);
  ub_resolve_free(result);
  if (auto self = query->resolver.lock()) self->finish(query->key, std::move(answer));
}

void Resolver::finish(const std::string& key, Answer answer) {
  keep(key, answer);
  auto flight = in_flight_.find(key);
  if (flight == in_flight_.end()) return;
  auto waiters = std::move(flight->second.waiters);
  in_flight_.erase(flight);
  for (auto& waiter : waiters) deliver(std::move(waiter), answer);
}

void Resolver::keep(const std::string& key, const Answer& answer) {
  const auto now = std::chrono::steady_clock::now();
  const auto time = answer.status == Answer::Status::failure ? kFailureKeepTime
                                                             : std::min(answer.ttl, kMaxKeepTime);
  std::size_t bytes = 0;
  for (const auto& rdata : answer.rdata) bytes += rdata.size();
  if (time.count() == 0 || bytes > kMaxKeptAnswerBytes) return;
  std::lock_guard lock(kept_mutex_);
  if (kept_.size() >= kMaxKept) {
    std::erase_if(kept_, [&](const auto& entry) { return entry.second.until <= now; });
    if (kept_.size() >= kMaxKept) kept_.erase(kept_.begin());
  }
  kept_[key] = {answer, now + time};
}

}  // namespace stp::dns
