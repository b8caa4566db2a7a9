// smtp-tls-proxy: reads the configuration, builds the TLS context, and serves until told to
// stop. Configuration errors end start-up with exit code 2 and a message naming the flag.
#include "proxy/config.hpp"
#include "proxy/log.hpp"
#include "proxy/server.hpp"
#include "tls/tls_context.hpp"

#include <csignal>
#include <iostream>

int main(int argc, char** argv) {
  // OpenSSL writes to sockets itself; a peer that is gone must be an error, not a signal.
  std::signal(SIGPIPE, SIG_IGN);
  try {
    const auto config = stp::parse_config(argc, argv, stp::process_environment(), std::cout);
    if (!config) return 0;
    stp::log::init(config->log_level, config->log_format == stp::LogFormat::json);
    auto tls = stp::tls::ServerContext::create(*config);
    if (tls->self_signed()) {
      spdlog::warn(
          "NO CERTIFICATE CONFIGURED (--tls-certificate): using a self-signed certificate for "
          "\"{}\" generated at start. Clients that verify certificates will refuse it; do not "
          "run like this in production.",
          config->hostname);
    }
    stp::Server server(*config, std::move(tls));
    return server.run();
  } catch (const stp::ConfigError& e) {
    std::cerr << "smtp-tls-proxy: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "smtp-tls-proxy: fatal: " << e.what() << "\n";
    return 1;
  }
}
