// smtp-tls-proxy: reads the configuration, builds the TLS context, binds the ports, drops root
// (--user), and serves until told to stop. Configuration errors end start-up with exit code 2
// and a message naming the flag.
#include "proxy/config.hpp"
#include "proxy/log.hpp"
#include "proxy/server.hpp"
#include "tls/tls_context.hpp"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
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

}  // namespace

int main(int argc, char** argv) {
  // OpenSSL writes to sockets itself; a peer that is gone must be an error, not a signal.
  std::signal(SIGPIPE, SIG_IGN);
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
    auto tls = stp::tls::ServerContext::create(*config);
    if (tls->self_signed()) {
      spdlog::warn(
          "NO CERTIFICATE CONFIGURED (--tls-certificate): using a self-signed certificate for "
          "\"{}\" generated at start. Clients that verify certificates will refuse it; do not "
          "run like this in production.",
          config->hostname);
    }
    stp::Server server(*config, std::move(tls));
    if (!config->user.empty()) {
      switch_user(config->user);
      spdlog::info("running as user {} (uid {})", config->user, geteuid());
    } else if (geteuid() == 0) {
      spdlog::warn(
          "running as root: use --user to switch to an unprivileged user after binding the ports");
    }
    return server.run();
  } catch (const stp::ConfigError& e) {
    report("", e.what());
    return 2;
  } catch (const std::exception& e) {
    report("fatal: ", e.what());
    return 1;
  }
}
