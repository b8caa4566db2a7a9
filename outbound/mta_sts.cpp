// MTA-STS policies fetched and kept; see mta_sts.hpp.
#include "outbound/mta_sts.hpp"

#include "proxy/log.hpp"
#include "smtp/text.hpp"
#include "tls/tls_stream.hpp"

#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace stp::outbound {
namespace asio = boost::asio;
namespace http = boost::beast::http;
using asio::ip::tcp;
using boost::system::error_code;
using std::chrono::system_clock;

namespace {

constexpr std::string_view kFetchError = "sts-policy-fetch-error";
constexpr std::string_view kPolicyInvalid = "sts-policy-invalid";
constexpr std::string_view kWebPkiInvalid = "sts-webpki-invalid";
constexpr std::size_t kMaxKept = 5000;  // domains with a policy kept
// A failed fetch is not tried again for this long (RFC 8461 3.3 lets senders limit fetches):
// a policy host that hangs costs one fetch timeout, not one per message.
constexpr std::chrono::minutes kFailureMemory{5};
constexpr std::size_t kMaxAddresses = 4;  // of a policy host, tried in turn
constexpr std::size_t kMaxHeader = 8 * 1024;

// What may name a cache file: a domain as recipient_domain gives it (no '/', no leading dot),
// with room for ".new" in a file name's 255 bytes.
bool file_name_safe(std::string_view domain) {
  return !domain.empty() && domain.size() <= 250 && domain.front() != '.' &&
         domain.find("..") == std::string_view::npos &&
         std::all_of(domain.begin(), domain.end(), [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
                  c == '.';
         });
}

bool plain_text(std::string_view content_type) {
  const auto media = text::trim(content_type.substr(0, content_type.find(';')), " \t");
  return text::lower(media) == "text/plain";
}

}  // namespace

struct StsPolicies::InFlight {
  explicit InFlight(const asio::any_io_executor& executor) : done(executor) {
    done.expires_at(asio::steady_timer::time_point::max());
  }
  asio::steady_timer done;  // cancelled when the result is in
  Fetched result;
};

struct StsPolicies::Connection {
  explicit Connection(const asio::any_io_executor& executor) : socket(executor), timer(executor) {}
  void close() {
    error_code ignored;
    socket.close(ignored);
  }
  tcp::socket socket;
  asio::steady_timer timer;
};

std::shared_ptr<StsPolicies> StsPolicies::create(asio::any_io_executor executor,
                                                 std::shared_ptr<dns::Resolver> resolver,
                                                 std::shared_ptr<const tls::ClientContext> tls,
                                                 StsOptions options) {
  std::shared_ptr<StsPolicies> policies(new StsPolicies(std::move(executor), std::move(resolver),
                                                        std::move(tls), std::move(options)));
  return policies;
}

StsPolicies::StsPolicies(asio::any_io_executor executor, std::shared_ptr<dns::Resolver> resolver,
                         std::shared_ptr<const tls::ClientContext> tls, StsOptions options)
    : executor_(std::move(executor)),
      resolver_(std::move(resolver)),
      tls_(std::move(tls)),
      options_(std::move(options)) {
  if (options_.cache_dir.empty()) return;
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(options_.cache_dir, ec);
  const fs::path probe = fs::path(options_.cache_dir) / ".write-test";
  if (ec || !std::ofstream(probe)) {
    throw std::invalid_argument("--relay-mta-sts-cache: cannot write in " + options_.cache_dir +
                                (ec ? ": " + ec.message() : ""));
  }
  fs::remove(probe, ec);
  // The kept policies are read once, here, so that a lookup never touches the disk.
  std::size_t loaded = 0;
  for (const auto& entry : fs::directory_iterator(options_.cache_dir, ec)) {
    const std::string domain = entry.path().filename().string();
    if (!entry.is_regular_file() || !file_name_safe(domain) || kept_.size() >= kMaxKept) continue;
    std::ifstream in(entry.path());
    std::string id_line, fetched_line, blank;
    std::getline(in, id_line);
    std::getline(in, fetched_line);
    std::getline(in, blank);
    std::stringstream rest;
    rest << in.rdbuf();
    const std::string body = rest.str();
    long long fetched = 0;
    auto policy = parse_sts_policy(body);
    if (!id_line.starts_with("id ") || !fetched_line.starts_with("fetched ") || !blank.empty() ||
        !policy || !parse_sts_record("v=STSv1; id=" + id_line.substr(3)) ||
        std::sscanf(fetched_line.c_str(), "fetched %lld", &fetched) != 1) {
      spdlog::warn("--relay-mta-sts-cache: {} is not a kept policy; ignored",
                   log::escape(entry.path().string(), 300));
      continue;
    }
    // A time in the future (a clock set back, a hand-edited file) counts as now.
    Kept kept{
        std::make_shared<const StsPolicy>(std::move(*policy)), id_line.substr(3),
        std::min(system_clock::time_point(std::chrono::seconds(fetched)), system_clock::now())};
    if (kept.fetched + kept.policy->max_age <= system_clock::now()) continue;
    kept_.emplace(domain, std::move(kept));
    ++loaded;
  }
  spdlog::info("MTA-STS: {} kept policies read from {}", loaded,
               log::escape(options_.cache_dir, 300));
}

void StsPolicies::stop() {
  asio::post(executor_, [self = shared_from_this()] {
    self->stopped_ = true;
    for (Connection* connection : self->connections_) connection->close();
  });
}

asio::awaitable<StsAnswer> StsPolicies::lookup(std::string domain) {
  StsAnswer result = co_await answer(std::move(domain));
  co_return result;
}

std::optional<StsPolicies::Kept> StsPolicies::kept(const std::string& domain) {
  std::lock_guard lock(kept_mutex_);
  const auto it = kept_.find(domain);
  if (it == kept_.end()) return std::nullopt;
  if (it->second.fetched + it->second.policy->max_age > system_clock::now()) return it->second;
  kept_.erase(it);
  if (!options_.cache_dir.empty() && file_name_safe(domain)) {
    std::error_code ignored;
    std::filesystem::remove(std::filesystem::path(options_.cache_dir) / domain, ignored);
  }
  return std::nullopt;
}

void StsPolicies::keep(const std::string& domain, Kept policy) {
  namespace fs = std::filesystem;
  const bool on_disk = !options_.cache_dir.empty() && file_name_safe(domain);
  std::lock_guard lock(kept_mutex_);
  if (kept_.size() >= kMaxKept && !kept_.contains(domain)) {
    // The expired first, else any one; their files go with them.
    const auto now = system_clock::now();
    std::vector<std::string> dropped;
    for (const auto& [name, entry] : kept_) {
      if (entry.fetched + entry.policy->max_age <= now) dropped.push_back(name);
    }
    if (dropped.empty()) dropped.push_back(kept_.begin()->first);
    for (const auto& name : dropped) {
      kept_.erase(name);
      std::error_code ignored;
      if (!options_.cache_dir.empty()) fs::remove(fs::path(options_.cache_dir) / name, ignored);
    }
  }
  if (on_disk) {
    const fs::path path = fs::path(options_.cache_dir) / domain;
    const fs::path temporary = path.string() + ".new";
    bool written = false;
    {
      std::ofstream out(temporary, std::ios::trunc);
      out << "id " << policy.id << "\nfetched "
          << std::chrono::duration_cast<std::chrono::seconds>(policy.fetched.time_since_epoch())
                 .count()
          << "\n\n"
          << sts_policy_file(*policy.policy);
      out.flush();
      written = static_cast<bool>(out);
    }
    std::error_code ec;
    // A file cut short (a full disk) never replaces the kept one.
    if (written) fs::rename(temporary, path, ec);
    if (!written || ec) {
      spdlog::warn("--relay-mta-sts-cache: cannot keep the policy of {}{}", domain,
                   ec ? ": " + ec.message() : "");
      fs::remove(temporary, ec);
    }
  }
  kept_.insert_or_assign(domain, std::move(policy));
}

asio::awaitable<StsAnswer> StsPolicies::answer(std::string domain) {
  const auto txt = co_await resolver_->lookup("_mta-sts." + domain, dns::RecordType::txt);
  std::optional<std::string> id;
  if (txt.status == dns::Answer::Status::records) {
    std::vector<std::string> texts;
    for (const auto& rdata : txt.rdata) {
      if (auto text = dns::read_txt(rdata)) texts.push_back(std::move(*text));
    }
    id = sts_record_id(texts);
  }
  StsAnswer result;
  const auto from_cache = [&](const Kept& kept) {
    result.policy = kept.policy;
    result.id = kept.id;
    result.from_cache = true;
  };
  const auto refresh_if_old = [&](const Kept& kept) {
    if (system_clock::now() >= kept.fetched + kept.policy->max_age / 2 && !stopped_) {
      asio::co_spawn(executor_, refresh(domain, kept.id, shared_from_this()), asio::detached);
    }
  };
  // RFC 8461 5.1: with no (valid) record, a kept policy still holds, and is still refreshed.
  if (!id) {
    if (const auto k = kept(domain)) {
      from_cache(*k);
      refresh_if_old(*k);
    } else if (txt.status == dns::Answer::Status::failure && txt.security == dns::Security::bogus) {
      result.bogus = true;
      result.why = "its _mta-sts record failed DNSSEC validation";
    }
    co_return result;
  }
  if (const auto k = kept(domain); k && k->id == *id) {
    from_cache(*k);
    refresh_if_old(*k);
    co_return result;
  }
  // Fetched on this object's executor; co_spawn resumes the caller on its own.
  auto fetch = fetch_once(domain, *id, shared_from_this());
  const Fetched fetched = co_await asio::co_spawn(executor_, std::move(fetch), asio::use_awaitable);
  if (fetched.policy) {
    result.policy = fetched.policy;
    result.id = *id;
    co_return result;
  }
  result.failure = fetched.failure;
  result.why = fetched.why;
  if (const auto k = kept(domain)) from_cache(*k);  // kept through a failed fetch
  co_return result;
}

asio::awaitable<void> StsPolicies::refresh(std::string domain, std::string id,
                                           std::shared_ptr<StsPolicies> self) {
  try {
    co_await fetch_once(std::move(domain), std::move(id), std::move(self));
  } catch (const std::exception& e) {
    spdlog::error("MTA-STS: refreshing a policy failed: {}", e.what());
  }
}

asio::awaitable<StsPolicies::Fetched> StsPolicies::fetch_once(std::string domain, std::string id,
                                                              std::shared_ptr<StsPolicies>) {
  if (const auto it = in_flight_.find(domain); it != in_flight_.end()) {
    const auto in_flight = it->second;
    error_code ignored;
    co_await in_flight->done.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    co_return in_flight->result;
  }
  const auto now = std::chrono::steady_clock::now();
  if (const auto it = failed_.find(domain); it != failed_.end()) {
    if (it->second.id == id && it->second.until > now) co_return it->second.result;
    failed_.erase(it);
  }
  const auto in_flight = std::make_shared<InFlight>(executor_);
  in_flight_.emplace(domain, in_flight);
  Fetched fetched;
  try {
    fetched = co_await fetch(domain);
  } catch (const std::exception& e) {  // the waiters must hear, whatever happened
    fetched = {nullptr, std::string(kFetchError), e.what()};
  }
  if (!fetched.policy) {
    if (failed_.size() >= kMaxKept) {
      std::erase_if(failed_, [&](const auto& entry) { return entry.second.until <= now; });
    }
    if (failed_.size() < kMaxKept) failed_[domain] = {id, now + kFailureMemory, fetched};
  }
  if (fetched.policy) {
    const auto& p = *fetched.policy;
    spdlog::info("MTA-STS policy of {} fetched: id={} mode={} max_age={} mx={}", domain, id,
                 to_string(p.mode), p.max_age.count(), p.mx.size());
    keep(domain, {fetched.policy, id, system_clock::now()});
  } else {
    spdlog::warn("MTA-STS policy of {} (id={}) not fetched, {}: {}", domain, id, fetched.failure,
                 fetched.why);
  }
  in_flight_.erase(domain);
  in_flight->result = fetched;
  in_flight->done.cancel();
  co_return fetched;
}

asio::awaitable<StsPolicies::Fetched> StsPolicies::fetch(std::string domain) {
  const std::string host = "mta-sts." + domain;
  // One bound for the whole fetch, every address of the policy host included.
  const auto deadline = std::chrono::steady_clock::now() + options_.fetch_timeout;
  std::vector<tcp::endpoint> endpoints;
  std::size_t refused = 0;
  std::string why = "no address";
  for (const auto type : {dns::RecordType::a, dns::RecordType::aaaa}) {
    const auto answer = co_await resolver_->lookup(host, type);
    if (answer.status == dns::Answer::Status::failure) why = "address lookup failed";
    for (const auto& rdata : answer.rdata) {
      const auto address = dns::read_address(type, rdata);
      if (address && options_.refused.matches(*address)) {
        ++refused;
      } else if (address && endpoints.size() < kMaxAddresses) {
        endpoints.emplace_back(*address, options_.port);
      }
    }
  }
  if (endpoints.empty()) {
    if (refused > 0) why = "refused address (--relay-mx-refuse-addresses)";
    co_return Fetched{nullptr, std::string(kFetchError), host + ": " + why};
  }
  Fetched fetched;
  for (const auto& endpoint : endpoints) {
    if (stopped_) break;
    fetched = co_await fetch_from(endpoint, host, deadline);
    // An answer (a policy, a bad one, a bad certificate) ends it; an unreachable host does not.
    if (fetched.policy || fetched.failure != kFetchError) break;
  }
  if (stopped_ && !fetched.policy) fetched = {nullptr, std::string(kFetchError), "stopping"};
  co_return fetched;
}

asio::awaitable<StsPolicies::Fetched> StsPolicies::fetch_from(
    tcp::endpoint endpoint, std::string host, std::chrono::steady_clock::time_point deadline) {
  const std::string where =
      host + " [" + endpoint.address().to_string() + "]:" + std::to_string(endpoint.port());
  const auto failed = [&](std::string_view type, const std::string& why) {
    return Fetched{nullptr, std::string(type), where + ": " + why};
  };
  const auto connection = std::make_shared<Connection>(executor_);
  connections_.insert(connection.get());
  struct Forget {
    std::unordered_set<Connection*>& set;
    Connection* connection;
    ~Forget() {
      set.erase(connection);
      connection->timer.cancel();
    }
  } forget{connections_, connection.get()};
  // The whole fetch, connect to last byte, is bounded: the socket is closed at the time.
  connection->timer.expires_at(deadline);
  connection->timer.async_wait([connection](const error_code& ec) {
    if (!ec) connection->close();
  });
  error_code ec;
  co_await connection->socket.async_connect(endpoint,
                                            asio::redirect_error(asio::use_awaitable, ec));
  if (ec) co_return failed(kFetchError, "cannot connect: " + ec.message());

  tls::ConnectParameters parameters;
  parameters.sni = host;
  parameters.names = {host};
  parameters.verification = tls::ServerVerification::verify;
  tls::TlsStream stream(connection->socket, tls_, parameters);
  if (!stream.native_handle()) co_return failed(kFetchError, "cannot start TLS");
  co_await stream.handshake(ec);
  if (ec) {
    const long verified = SSL_get_verify_result(stream.native_handle());
    if (verified != X509_V_OK) {
      co_return failed(kWebPkiInvalid, std::string("certificate not valid for ") + host + ": " +
                                           X509_verify_cert_error_string(verified));
    }
    co_return failed(kFetchError, "TLS handshake failed: " + ec.message());
  }
  // A body that runs to the connection's end (no Content-Length, not chunked) ends only at
  // close_notify: a bare TCP close could be anyone's, cutting the policy short (RFC 8461 10).
  SSL_clear_options(stream.native_handle(), SSL_OP_IGNORE_UNEXPECTED_EOF);
  const std::string request = "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: " + host +
                              "\r\nUser-Agent: smtp-tls-proxy\r\nAccept: text/plain\r\n"
                              "Connection: close\r\n\r\n";
  co_await stream.write(asio::buffer(request), ec);
  if (ec) co_return failed(kFetchError, "cannot send the request: " + ec.message());

  http::response_parser<http::string_body> parser;
  parser.header_limit(kMaxHeader);
  parser.body_limit(kMaxStsPolicySize);
  parser.eager(true);
  std::string unparsed;  // at most a header's worth: the parser takes the body as it comes
  std::array<char, 16 * 1024> buffer{};
  while (!parser.is_done()) {
    const std::size_t n = co_await stream.read_some(asio::buffer(buffer), ec);
    if (ec) {
      error_code end;
      if (ec == asio::error::eof) parser.put_eof(end);
      if (ec != asio::error::eof || end) {
        co_return failed(kFetchError, "the response ended early: " + ec.message());
      }
      break;
    }
    unparsed.append(buffer.data(), n);
    error_code parse_error;
    const std::size_t used = parser.put(asio::buffer(unparsed), parse_error);
    unparsed.erase(0, used);
    if (parse_error == http::error::need_more) {
      if (unparsed.size() > kMaxHeader + kMaxStsPolicySize) {
        co_return failed(kFetchError, "response too long");
      }
      continue;
    }
    if (parse_error == http::error::body_limit) {
      co_return failed(kPolicyInvalid, "policy longer than 64 KiB");
    }
    if (parse_error)
      co_return failed(kFetchError, "not an HTTP response: " + parse_error.message());
  }
  stream.shutdown();
  const auto& response = parser.get();
  const unsigned status = response.result_int();
  if (status >= 300 && status < 400) {
    co_return failed(kFetchError, "redirected (to \"" +
                                      log::escape(response[http::field::location], 200) +
                                      "\"), which RFC 8461 3.3 forbids following");
  }
  if (status != 200) co_return failed(kFetchError, "HTTP status " + std::to_string(status));
  if (!plain_text(response[http::field::content_type])) {
    co_return failed(kPolicyInvalid, "content type \"" +
                                         log::escape(response[http::field::content_type], 100) +
                                         "\", not text/plain");
  }
  std::string error;
  auto policy = parse_sts_policy(response.body(), &error);
  if (!policy) co_return failed(kPolicyInvalid, "not a policy: " + error);
  co_return Fetched{std::make_shared<const StsPolicy>(std::move(*policy)), {}, {}};
}

}  // namespace stp::outbound
