#!/bin/sh
# Entry point of the voice-platform FreeSWITCH image: check the settings conf/vars.xml reads from the
# environment, then exec the command (FreeSWITCH by default).
#
# - VP_FS_ESL_PASSWORD is required and must not be FreeSWITCH's stock password: the Event Socket
#   controls every call. It is pasted into event_socket.conf.xml by the XML pre-processor, so quotes,
#   angle brackets, ampersands and whitespace (which would break the XML or the `auth` line) are refused.
# - VP_FS_STREAM_SECRET is required (16+ URL-safe characters): the dialplan puts it in the stream URL
#   and gateway-fs refuses any stream without it.
# - An empty optional VP_FS_* variable is unset, so that vars.xml keeps its default: the pre-processor
#   copies a variable that exists even when it is empty.
set -eu

fail() {
    echo "freeswitch: $*" >&2
    exit 64
}

password="${VP_FS_ESL_PASSWORD:-}"
[ -n "$password" ] || fail "VP_FS_ESL_PASSWORD is not set (the Event Socket password gateway-fs uses)"
[ "$password" != "ClueCon" ] || fail "VP_FS_ESL_PASSWORD is FreeSWITCH's stock password; choose your own"
[ "${#password}" -ge 8 ] || fail "VP_FS_ESL_PASSWORD is shorter than 8 characters"
case "$password" in
    *[[:space:]\"\'\<\>\&]*) fail "VP_FS_ESL_PASSWORD may not contain whitespace, quotes, < > or &" ;;
esac

# the key gateway-fs requires in every stream URL: it is pasted into a URL and an XML attribute
secret="${VP_FS_STREAM_SECRET:-}"
[ -n "$secret" ] || fail "VP_FS_STREAM_SECRET is not set (the stream key gateway-fs requires)"
[ "${#secret}" -ge 16 ] || fail "VP_FS_STREAM_SECRET is shorter than 16 characters"
case "$secret" in
    *[!A-Za-z0-9_.~-]*) fail "VP_FS_STREAM_SECRET may hold only letters, digits and - _ . ~" ;;
esac

for name in VP_FS_ESL_LISTEN_IP VP_FS_ESL_ALLOWED_CIDR VP_FS_SIP_ALLOWED_CIDR VP_FS_EXTERNAL_IP \
    VP_FS_ROBOT_WS_URL VP_FS_ROBOT_BRIDGE VP_FS_OPERATOR_URI VP_FS_LOG_LEVEL; do
    eval "value=\${$name:-}"
    # shellcheck disable=SC2154  # value is assigned by the eval above
    if [ -z "$value" ]; then
        unset "$name"
    fi
done

case "${VP_FS_ROBOT_BRIDGE:-xml}" in
    xml | lua) ;;
    *) fail "VP_FS_ROBOT_BRIDGE must be xml or lua" ;;
esac

exec "$@"
