#!/bin/sh
# Healthy when FreeSWITCH answers `status` over its Event Socket with UP (upstream's image checks the
# same with fs_cli). Connects where vars.xml makes the socket listen: loopback unless
# VP_FS_ESL_LISTEN_IP names one address.
set -eu
host="${VP_FS_ESL_LISTEN_IP:-127.0.0.1}"
case "$host" in 0.0.0.0 | ::) host=127.0.0.1 ;; esac
fs_cli -H "$host" -P 8021 -p "${VP_FS_ESL_PASSWORD:?}" -T 3000 -t 3000 -x status | grep -q '^UP'
