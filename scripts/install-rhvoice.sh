#!/usr/bin/env bash
# Install the RHVoice library and its Russian voices from Debian's non-free component, without
# changing the system's apt sources. Idempotent; quiet when the packages are already there.
#
#   scripts/install-rhvoice.sh      (as root; scripts/setup.sh calls it)
#
# The machine's sources usually enable only `main`. Instead of editing them, a private one-line
# source list names the archive the system already uses for its release (read from
# /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list at run time) with `main non-free`, and
# apt-get update/install run against it with their own list and cache folders:
#   -o Dir::Etc::sourcelist=FILE -o Dir::Etc::sourceparts=- -o Dir::State::Lists=DIR -o Dir::Cache=DIR
# Only the library and the voices are installed: the `rhvoice` command-line package would pull in
# audio-output libraries the service does not need.
#
# Exit status: 0 installed or present, 1 failed (the caller warns; Festival stays the voice).
set -euo pipefail

PACKAGES=(librhvoice5 librhvoice-core7 rhvoice-russian)
APT_ETC="${VP_APT_ETC:-/etc/apt}"
STATE="${VP_RHVOICE_APT_DIR:-/var/lib/voice-platform/apt-rhvoice}"
SUITE="${VP_RHVOICE_SUITE:-}"
if [[ -z "$SUITE" && -r /etc/os-release ]]; then
    SUITE="$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release | tr -d '"')"
fi
SUITE="${SUITE:-bookworm}"

say() { echo "install-rhvoice.sh: $*" >&2; }

missing_packages() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        if ! dpkg -s "$pkg" 2>/dev/null | grep -q "^Status: install ok installed"; then
            echo "$pkg"
        fi
    done
}

# "URI<TAB>signed-by" of the first deb source of $SUITE: deb822 stanzas first, then one-line lists
system_source() {
    local f
    for f in "$APT_ETC"/sources.list.d/*.sources; do
        [[ -r "$f" ]] || continue
        awk -v suite="$SUITE" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uris != "") {
                    split(uris, u, " "); print u[1] "\t" signed; found = 1; exit
                }
                types = ""; suites = ""; uris = ""; signed = ""
            }
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { flush(); next }
            /^[A-Za-z-]+:/ {
                key = tolower(substr($0, 1, index($0, ":") - 1))
                value = substr($0, index($0, ":") + 1); gsub(/^[ \t]+|[ \t]+$/, "", value)
                if (key == "types") types = value
                else if (key == "suites") suites = value
                else if (key == "uris") uris = value
                else if (key == "signed-by" && value ~ /^\//) signed = value
                else if (key == "enabled" && tolower(value) == "no") types = ""
            }
            END { if (!found) flush() }
        ' "$f" | head -n 1
    done
    for f in "$APT_ETC/sources.list" "$APT_ETC"/sources.list.d/*.list; do
        [[ -r "$f" ]] || continue
        awk -v suite="$SUITE" '
            $1 != "deb" { next }
            {
                opts = ""; i = 2
                if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) { opts = opts " " $i; i++ }; opts = opts " " $i; i++ }
                if ($(i + 1) != suite) next
                signed = ""
                if (match(opts, /signed-by=[^] ]+/)) signed = substr(opts, RSTART + 10, RLENGTH - 10)
                print $i "\t" signed; exit
            }
        ' "$f"
    done
}

mapfile -t missing < <(missing_packages)
((${#missing[@]} == 0)) && exit 0
if [[ $(id -u) -ne 0 ]]; then
    say "not root: cannot install ${missing[*]}"
    exit 1
fi

source_line="$(system_source | head -n 1)"
uri="${source_line%%$'\t'*}"
signed="${source_line#*$'\t'}"
if [[ -z "$uri" ]]; then
    say "no deb source for $SUITE in $APT_ETC: cannot find the archive to take non-free from"
    exit 1
fi
options=""
[[ -n "$signed" && -r "$signed" ]] && options="[signed-by=$signed] "

mkdir -p "$STATE/lists/partial" "$STATE/cache/archives/partial"
echo "deb ${options}${uri} ${SUITE} main non-free" >"$STATE/sources.list"
APT_OPTS=(
    -o "Dir::Etc::sourcelist=$STATE/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$STATE/lists"
    -o "Dir::Cache=$STATE/cache"
)
say "installing ${missing[*]} from $SUITE non-free (private source list, system sources unchanged)"
export DEBIAN_FRONTEND=noninteractive
log_file="$STATE/apt.log"
if ! apt-get "${APT_OPTS[@]}" update -qq >"$log_file" 2>&1; then
    say "apt-get update of the private source list failed:"
    tail -n 5 "$log_file" >&2
    exit 1
fi
if ! apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends "${missing[@]}" >>"$log_file" 2>&1; then
    say "apt-get install ${missing[*]} failed:"
    tail -n 5 "$log_file" >&2
    exit 1
fi
apt-get "${APT_OPTS[@]}" clean >/dev/null 2>&1 || true
mapfile -t still < <(missing_packages)
if ((${#still[@]})); then
    say "still missing after install: ${still[*]}"
    exit 1
fi
