#!/bin/sh
# Shared-library needs of ELF files, for the two stages of the FreeSWITCH image.
#
#   runtime-deps.sh packages FILE...  the Debian packages owning the libraries FILE... link against
#                                     (what dh_shlibdeps does for a .deb); libraries under /usr/local,
#                                     built in the image, are skipped
#   runtime-deps.sh check FILE...     exit 1, listing them, if any library FILE... needs is missing
set -eu

mode="${1:-}"
[ "$#" -ge 2 ] || { echo "usage: $0 packages|check FILE..." >&2; exit 2; }
shift

libraries() {
    for file in "$@"; do
        ldd "$file" 2>/dev/null || true
    done
}

case "$mode" in
packages)
    libraries "$@" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u | while read -r lib; do
        case "$lib" in /usr/local/*) continue ;; esac
        real="$(readlink -f "$lib")"
        # merged /usr: ldd may print /lib/... for a file dpkg registered as /usr/lib/..., or back
        for candidate in "$lib" "$real" "/usr$lib" "/usr$real" "${lib#/usr}" "${real#/usr}"; do
            owner="$(dpkg-query -S "$candidate" 2>/dev/null | head -n 1)" || owner=""
            if [ -n "$owner" ]; then
                echo "${owner%%:*}"
                break
            fi
        done
    done | sort -u
    ;;
check)
    missing="$(libraries "$@" | grep -F "not found" | sort -u || true)"
    if [ -n "$missing" ]; then
        echo "missing shared libraries:" >&2
        echo "$missing" >&2
        exit 1
    fi
    ;;
*)
    echo "usage: $0 packages|check FILE..." >&2
    exit 2
    ;;
esac
