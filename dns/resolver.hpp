// A validating DNS resolver for the outbound side (issue 23): libunbound, validating DNSSEC
// itself from its trust anchor (so no resolver's AD bit is taken on trust), with its answers
// handed to the event loop: libunbound works in one background thread of its own and signals
// through a file descriptor that Asio watches, so no thread waits for a lookup. Answers are
// kept for their TTL (and read from the caller's thread), and one query is in flight per name
// and type however many sessions ask.
//
// Trusts libunbound's verdict (secure, insecure, bogus); the records themselves are the
// network's and are read by dns/records.hpp. A bogus answer is a failure, never records.
#pragma once

#include "dns/records.hpp"

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

struct ub_ctx;
struct ub_result;

namespace stp::dns {

struct ResolverOptions {
  // DNSSEC trust anchors (DS or DNSKEY lines, as in Debian's dns-root-data root.key); empty:
  // none, so nothing is secure.
  std::string trust_anchor_file = "/usr/share/dns/root.key";
  // Resolvers to forward to, "ADDRESS@PORT"; none: full recursion from the root.
  std::vector<std::string> forwarders;
};

enum class Security { secure, insecure, bogus };

struct Answer {
  enum class Status {
    records,     // rdata holds them
    no_records,  // the name exists, without records of the type (NODATA)
    no_domain,   // NXDOMAIN
    failure,     // SERVFAIL, a timeout, a bogus answer: try again later
  };
  Status status = Status::failure;
  Security security = Security::insecure;
  std::vector<std::string> rdata;  // each record's data, as read_mx/read_address take it
  std::string why;                 // for a failure: libunbound's words (log them escaped)
  // The name the records belong to when the one asked for is an alias (CNAME), lower case,
  // without the trailing dot; empty otherwise.
  std::string canonical_name;
  std::chrono::seconds ttl{0};
};

std::string_view to_string(Security security);

class Resolver : public std::enable_shared_from_this<Resolver> {
 public:
  // Answers are handled on `executor`'s thread (a single-threaded io_context). Throws
  // std::invalid_argument("--dns-...: why").
  static std::shared_ptr<Resolver> create(boost::asio::any_io_executor executor,
                                          const ResolverOptions& options);
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  // From any thread; resumes on the caller's executor.
  boost::asio::awaitable<Answer> lookup(std::string name, RecordType type);

  // Ends every lookup in flight with a failure; later lookups not answered from the kept
  // answers fail at once.
  void stop();

  struct Counts {
    std::size_t sent = 0;        // queries handed to libunbound
    std::size_t cache_hits = 0;  // answered from the kept answers
    std::size_t joined = 0;      // waited for a query already in flight
  };
  Counts counts() const { return {sent_, cache_hits_, joined_}; }

 private:
  using Handler = boost::asio::any_completion_handler<void(Answer)>;
  struct Waiter {
    Handler handler;
    boost::asio::executor_work_guard<boost::asio::any_io_executor> work;
  };
  struct Query;  // what libunbound's callback gets back
  struct InFlight {
    std::vector<Waiter> waiters;
    int async_id = 0;
    Query* query = nullptr;  // libunbound's until its callback runs; freed here if cancelled
  };
  struct Kept {
    Answer answer;
    std::chrono::steady_clock::time_point until;
  };
  Resolver(boost::asio::any_io_executor executor, const ResolverOptions& options);
  void enqueue(std::string name, RecordType type, Waiter waiter);
  void finish(const std::string& key, Answer answer);
  static void on_result(void* query, int error, ub_result* result);
  void keep(const std::string& key, const Answer& answer);
  void watch();
  static void deliver(Waiter waiter, Answer answer);

  boost::asio::any_io_executor executor_;
  ub_ctx* ctx_ = nullptr;
  boost::asio::posix::stream_descriptor descriptor_;
  bool watching_ = false;
  bool stopped_ = false;
  std::unordered_map<std::string, InFlight> in_flight_;
  // The kept answers are read on the callers' threads too: a cached answer costs no hop to the
  // resolver's thread and back.
  std::optional<Answer> kept_answer(const std::string& key);
  mutable std::mutex kept_mutex_;
  std::unordered_map<std::string, Kept> kept_;
  std::atomic<std::size_t> sent_{0};
  std::atomic<std::size_t> cache_hits_{0};
  std::atomic<std::size_t> joined_{0};
};

}  // namespace stp::dns
