// smtp-tls-proxy: reads the configuration, builds the TLS context, fits the descriptor limit to
// --max-connections, binds the ports, drops root (--user), and serves until told to stop.
// Configuration errors end start-up with exit code 2 and a message naming the flag.
#include "inbound/session.hpp"
#include "metrics/http_endpoint.hpp"
#include "outbound/session.hpp"
#include "proxy/config.hpp"
#include "proxy/log.hpp"
#include "proxy/server.hpp"
#include "tls/tls_context.hpp"

#include <grp.h>
#include <pwd.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iostream>

namespace {

// After the ports are bound: become `name` and its groups, for good. Any failure stops
// start-up: a daemon facing the internet must not go on as root by accident.
void switch_user(const std::string& name) {
  const passwd* user = getpwnam(name.c_str());
  if (!user) throw stp::ConfigError("--user: no user named \"" + name + "\"");
  const uid_t uid = user->pw_uid;
  const gid_t gid = user->pw_gid;
  if (geteuid() != 0) {
    if (geteuid() == uid) return;  // already that user
    throw stp::ConfigError("--user: switching to \"" + name + "\" needs root");
  }
  if (initgroups(user->pw_name, gid) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
    throw stp::ConfigError("--user " + name + ": " + std::strerror(errno));
  }
  if (uid != 0 && setuid(0) == 0) throw stp::ConfigError("--user: root could be regained");
}

// A session holds two descriptors (client and MTA) while it uses the MTA, one while it idles
// (--backend-idle-timeout); the limit is fitted to all of them using it at once. Beyond them:
// the metrics port's connections, and 64 for listeners, the log, resolver sockets and the event
// loops' own.
constexpr rlim_t kDescriptorsPerSession = 2;
constexpr rlim_t kDescriptorsReserved = stp::metrics::HttpEndpoint::kMaxConnections + 64;

// Before the ports are bound and root is dropped: let the process open as many descriptors as
// --max-connections needs. The soft limit goes up towards the hard one (the usual soft 1024
// would cap the proxy at about 450 sessions); as root, the hard limit too when it is lower.
// What is still short is a warning with the numbers: past it accept() fails with EMFILE and
// backs off, and sessions get 421 for an MTA connection that cannot be opened.
void fit_descriptor_limit(std::size_t max_connections) {
  const rlim_t needed = kDescriptorsPerSession * max_connections + kDescriptorsReserved;
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= needed) return;
  const rlim_t before = limit.rlim_cur;
  if (limit.rlim_max < needed && geteuid() == 0) {
    const rlimit raised{needed, needed};
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;  // fails above fs.nr_open
  }
  if (limit.rlim_cur < needed) {
    const rlimit raised{std::min(needed, limit.rlim_max), limit.rlim_max};
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  if (limit.rlim_cur != before) {
    spdlog::info("descriptor limit (RLIMIT_NOFILE) raised from {} to {} for --max-connections {}",
                 before, limit.rlim_cur, max_connections);
  }
  if (limit.rlim_cur < needed) {
    const rlim_t sessions = limit.rlim_cur > kDescriptorsReserved
                                ? (limit.rlim_cur - kDescriptorsReserved) / kDescriptorsPerSession
                                : 0;
    spdlog::warn(
        "descriptor limit (RLIMIT_NOFILE) {} is enough for about {} sessions, fewer than "
        "--max-connections {} ({} needed): raise it (ulimit -n, LimitNOFILE=, docker --ulimit "
        "nofile=) or lower --max-connections",
        limit.rlim_cur, sessions, max_connections, needed);
  }
}

// Everything but the log's last write (main's).
int run(int argc, char** argv) {
  // Once logging is set up, a failure is a log line like any other (a JSON line with
  // --log-format json); before that, the flags could not be read and it is plain text.
  bool logging = false;
  auto report = [&](std::string_view prefix, const char* what) {
    if (logging) {
      spdlog::critical("{}{}", prefix, what);
    } else {
      std::cerr << "smtp-tls-proxy: " << prefix << what << "\n";
    }
  };
  try {
    const auto config = stp::parse_config(argc, argv, stp::process_environment(), std::cout);
    if (!config) return 0;
    stp::log::init(config->log_level, config->log_format == stp::LogFormat::json);
    logging = true;
    auto tls = stp::tls::ServerContext::create(stp::server_tls_options(*config));
    if (tls->self_signed()) {
      spdlog::warn(
          "NO CERTIFICATE CONFIGURED (--tls-certificate): using a self-signed certificate for "
          "\"{}\" generated at start. Clients that verify certificates will refuse it; do not "
          "run like this in production.",
          config->hostname);
    }
    fit_descriptor_limit(config->max_connections);
    stp::Server server(*config, std::move(tls));
    if (!config->user.empty()) {
      switch_user(config->user);
      spdlog::info("running as user {} (uid {})", config->user, geteuid());
    } else if (geteuid() == 0) {
      spdlog::warn(
          "running as root: use --user to switch to an unprivileged user after binding the ports");
    }
    stp::inbound::SessionServices inbound(server.runtime());
    std::optional<stp::outbound::SessionServices> relay;
    if (config->relay.enabled()) relay.emplace(server.runtime());
    return server.run(inbound, relay ? &*relay : nullptr);
  } catch (const std::invalid_argument& e) {  // ConfigError, or a lower layer's setup error
    report("", e.what());
    return 2;
  } catch (const std::exception& e) {
    report("fatal: ", e.what());
    return 1;
  }
}

std::terminate_handler default_terminate = nullptr;

}  // namespace

int main(int argc, char** argv) {
  // OpenSSL writes to sockets itself; a peer that is gone must be an error, not a signal.
  std::signal(SIGPIPE, SIG_IGN);
  // The log may hold lines (stp::log::BatchingSink): they are written on every way out, an
  // uncaught exception's too.
  default_terminate = std::set_terminate([] {
    stp::log::write_held_at_crash();
    if (default_terminate) default_terminate();
    std::abort();
  });
  const int status = run(argc, argv);
  stp::log::shutdown();
  return status;
}
