#!/bin/sh
# Sets the two things that differ between deployments, then runs Postfix in the foreground
# (its log goes to stdout: maillog_file = /dev/stdout).
#   POSTFIX_MYHOSTNAME      the MTA's name (default mx.example.org)
#   POSTFIX_BACKEND_LISTEN  where the proxy connects: "10025" (all addresses, compose) or
#                           "127.0.0.1:10025" (loopback, a Kubernetes pod shared with the proxy)
#   POSTFIX_XCLIENT_HOSTS   the proxy's address(es), and only those: Postfix believes the client
#                           address that these hosts send with XCLIENT
set -eu
: "${POSTFIX_MYHOSTNAME:=mx.example.org}"
: "${POSTFIX_BACKEND_LISTEN:=10025}"
: "${POSTFIX_XCLIENT_HOSTS:?set POSTFIX_XCLIENT_HOSTS to the address of smtp-tls-proxy}"

postconf -e "myhostname = $POSTFIX_MYHOSTNAME"
postconf -M# 10025/inet 2>/dev/null || true
postconf -M "$POSTFIX_BACKEND_LISTEN/inet=$POSTFIX_BACKEND_LISTEN inet n - n - - smtpd"
postconf -P "$POSTFIX_BACKEND_LISTEN/inet/smtpd_authorized_xclient_hosts=$POSTFIX_XCLIENT_HOSTS"
postconf -P "$POSTFIX_BACKEND_LISTEN/inet/syslog_name=postfix/from-proxy"
# Decided on the connecting address (the proxy's): no client's headers are rewritten as local.
postconf -P "$POSTFIX_BACKEND_LISTEN/inet/local_header_rewrite_clients="
postfix check
exec postfix start-fg
