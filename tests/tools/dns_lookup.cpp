// A test tool: looks names up through dns::Resolver, as the outbound side does, and prints
// what it got, for the integration tests' DNSSEC lab (tests/integration/dns_lab.py).
//
//   dns_lookup [--forwarder ADDR@PORT] [--trust-anchor FILE] [--repeat N] NAME/TYPE...
//
// Every lookup of a run starts at once, each NAME/TYPE --repeat times (default 1), then the
// same again after all answered. One line per distinct lookup:
//   NAME/TYPE STATUS SECURITY [records...] [why="..."]
// (MX as "PREFERENCE:EXCHANGE", A/AAAA as addresses), and last the resolver's counts:
//   counts sent=N cache_hits=N joined=N
#include "dns/resolver.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <iostream>
#include <map>
#include <string>
#include <vector>

namespace {
namespace asio = boost::asio;
using stp::dns::Answer;
using stp::dns::RecordType;

std::string status_of(Answer::Status status) {
  switch (status) {
    case Answer::Status::records:
      return "records";
    case Answer::Status::no_records:
      return "no_records";
    case Answer::Status::no_domain:
      return "no_domain";
    case Answer::Status::failure:
      return "failure";
  }
  return "?";
}

std::string describe(const std::string& lookup, RecordType type, const Answer& answer) {
  std::string line = lookup + " " + status_of(answer.status) + " " +
                     std::string(stp::dns::to_string(answer.security));
  for (const auto& rdata : answer.rdata) {
    if (type == RecordType::mx) {
      const auto mx = stp::dns::read_mx(rdata);
      line += mx ? " " + std::to_string(mx->preference) + ":" + mx->exchange : " (bad MX)";
    } else if (const auto address = stp::dns::read_address(type, rdata)) {
      line += " " + address->to_string();
    } else {
      line += " (" + std::to_string(rdata.size()) + " bytes)";
    }
  }
  if (!answer.why.empty()) line += " why=\"" + answer.why + "\"";
  return line;
}

}  // namespace

int main(int argc, char** argv) {
  stp::dns::ResolverOptions options;
  options.trust_anchor_file.clear();
  int repeat = 1;
  std::vector<std::pair<std::string, RecordType>> lookups;
  const std::map<std::string, RecordType> types = {{"A", RecordType::a},
                                                   {"AAAA", RecordType::aaaa},
                                                   {"MX", RecordType::mx},
                                                   {"TLSA", RecordType::tlsa},
                                                   {"TXT", RecordType::txt}};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--forwarder" && i + 1 < argc) {
      options.forwarders.push_back(argv[++i]);
    } else if (arg == "--trust-anchor" && i + 1 < argc) {
      options.trust_anchor_file = argv[++i];
    } else if (arg == "--repeat" && i + 1 < argc) {
      repeat = std::stoi(argv[++i]);
    } else {
      const auto slash = arg.rfind('/');
      const auto type =
          slash == std::string::npos ? types.end() : types.find(arg.substr(slash + 1));
      if (type == types.end()) {
        std::cerr << "usage: dns_lookup [--forwarder ADDR@PORT] [--trust-anchor FILE] "
                     "[--repeat N] NAME/TYPE...\n";
        return 2;
      }
      lookups.emplace_back(arg, type->second);
    }
  }
  asio::io_context io;
  std::shared_ptr<stp::dns::Resolver> resolver;
  try {
    resolver = stp::dns::Resolver::create(io.get_executor(), options);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 2;
  }
  int exit_code = 0;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        for (int round = 0; round < 2; ++round) {
          std::size_t left = lookups.size() * static_cast<std::size_t>(repeat);
          std::map<std::string, std::string> lines;
          auto all_done =
              std::make_shared<asio::steady_timer>(io, asio::steady_timer::time_point::max());
          for (const auto& [lookup, type] : lookups) {
            for (int n = 0; n < repeat; ++n) {
              asio::co_spawn(
                  io,
                  [&, lookup = lookup, type = type]() -> asio::awaitable<void> {
                    const std::string name = lookup.substr(0, lookup.rfind('/'));
                    const Answer answer = co_await resolver->lookup(name, type);
                    lines[lookup] = describe(lookup, type, answer);
                    if (--left == 0) all_done->cancel();
                  },
                  asio::detached);
            }
          }
          boost::system::error_code ec;
          if (left > 0)
            co_await all_done->async_wait(asio::redirect_error(asio::use_awaitable, ec));
          if (round == 0) {
            for (const auto& [lookup, line] : lines) std::cout << line << "\n";
          }
        }
        const auto counts = resolver->counts();
        std::cout << "counts sent=" << counts.sent << " cache_hits=" << counts.cache_hits
                  << " joined=" << counts.joined << "\n";
        resolver->stop();
        co_return;
      },
      [&](std::exception_ptr e) {
        if (e) exit_code = 1;
      });
  io.run();
  return exit_code;
}
