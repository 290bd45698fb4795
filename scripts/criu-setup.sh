#!/usr/bin/env bash
# CRIU for the whole-process path. Idempotent: prints the path of a working criu.
#
# A system criu >= 4.2 that passes `criu check` is used as it is. Otherwise CRIU 4.2.1
# is built from Debian's own source into a private prefix (.deps/criu/ in the
# repository, or $FERRY_CRIU_PREFIX). Why 4.2: on Linux >= 6.16 CRIU 4.1 cannot dump
# any TCP or UDP socket (it asks every socket for SO_PASSCRED, which those kernels
# refuse for them: "Can't get 1:16 opt: Operation not supported"); bookworm's criu 3.17
# fails on current kernels altogether (docs/driver-facts.md §15). 4.2.1 is in Debian
# forky and sid; only its upstream tarball is used, fetched through a private apt
# configuration -- deb-src lines on the mirror this machine already uses, checked
# against Debian's archive keyring -- so the system's apt sources are never touched.
# The build needs only bookworm packages (installed pinned to bookworm) and takes
# well under two minutes on two cores.
#   FERRY_CRIU           use this criu binary and build nothing
#   FERRY_CRIU_PREFIX    where to build (default: .deps/criu under the repository)
#   FERRY_CRIU_VERSION   the upstream version to build (default 4.2.1; when Debian no
#                        longer has it, the newest >= 4.2 it has)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
say() { printf 'criu-setup: %s\n' "$*" >&2; }
want=${FERRY_CRIU_VERSION:-4.2.1}
oldest=4.2  # the first CRIU that dumps TCP/UDP sockets on Linux >= 6.16

works() {  # criu binary -> 0 when it is >= $oldest and `criu check` is happy (needs root)
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/^Version: \([0-9.]*\).*/\1/p')
  [[ -n $v ]] && dpkg --compare-versions "$v" ge "$oldest" || return 1
  "$1" check >/dev/null 2>&1
}

if [[ -n ${FERRY_CRIU:-} ]]; then
  works "$FERRY_CRIU" || { say "FERRY_CRIU=$FERRY_CRIU is not a CRIU >= $oldest that passes 'criu check'"; exit 1; }
  echo "$FERRY_CRIU"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  say "CRIU must run as root (criu check, dump and restore need it)"
  exit 1
fi
if sys=$(command -v criu 2>/dev/null) && works "$sys"; then
  echo "$sys"
  exit 0
fi
prefix=${FERRY_CRIU_PREFIX:-$root/.deps/criu}
if [[ -x $prefix/criu ]] && works "$prefix/criu"; then
  echo "$prefix/criu"
  exit 0
fi

deps=(make gcc pkg-config xz-utils libprotobuf-c-dev protobuf-c-compiler protobuf-compiler libprotobuf-dev libnl-3-dev
      libnet1-dev libcap-dev libbsd-dev)
missing=()
for p in "${deps[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  say "installing CRIU's build dependencies: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm "${missing[@]}" >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
uri=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
[[ -n $uri ]] || uri=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
if [[ -z $uri ]]; then
  say "cannot find the Debian mirror this machine uses (no bookworm entry in the apt sources)"
  exit 1
fi
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
for suite in forky sid; do
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $suite main"
done >"$work/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/nonexistent
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o Debug::NoLocking=1
          -o APT::Sandbox::User=root)
say "looking for CRIU $want's source in Debian (forky, sid)"
apt-get "${apt_opts[@]}" update -qq >/dev/null
# Debian versions on offer ("4.2.1-1"): the one asked for, else the newest >= $oldest
# (testing and unstable move on, and their pool keeps only what they list).
mapfile -t offered < <(apt-cache "${apt_opts[@]}" showsrc criu 2>/dev/null | sed -n 's/^Version: *//p' | sort -u)
pick=""
for v in "${offered[@]}"; do
  [[ ${v%-*} == "$want" ]] && pick=$v
done
if [[ -z $pick ]]; then
  for v in "${offered[@]}"; do
    dpkg --compare-versions "${v%-*}" ge "$oldest" || continue
    if [[ -z $pick ]] || dpkg --compare-versions "$v" gt "$pick"; then pick=$v; fi
  done
  [[ -n $pick ]] && say "Debian no longer has CRIU $want; building ${pick%-*}, the newest it has"
fi
if [[ -z $pick ]]; then
  say "Debian (forky, sid on $uri) offers no CRIU >= $oldest (found: ${offered[*]:-none}); install one and set FERRY_CRIU"
  exit 1
fi
version=${pick%-*}
version=${version#*:}
# Only the upstream tarball is needed (Debian's packaging files are not used); apt
# checks it against the signed index whatever happens to the others.
(cd "$work" && apt-get "${apt_opts[@]}" source --download-only -qq "criu=$pick" >/dev/null 2>&1) || true
tarball="$work/criu_$version.orig.tar.xz"
if [[ ! -f $tarball ]]; then
  say "could not download criu_$version.orig.tar.xz from $uri"
  exit 1
fi
mkdir -p "$work/src"
tar -xf "$tarball" -C "$work/src" --strip-components=1
say "building CRIU $version (make criu)"
# No LDFLAGS on the command line: it would break the link of CRIU's parasite code.
if ! make -C "$work/src" -j "$(nproc)" criu >"$work/build.log" 2>&1; then
  tail -20 "$work/build.log" >&2
  say "building CRIU failed"
  exit 1
fi
mkdir -p "$prefix"
install -m 0755 "$work/src/criu/criu" "$prefix/criu.new"
mv "$prefix/criu.new" "$prefix/criu"
if ! works "$prefix/criu"; then
  "$prefix/criu" check >&2 || true
  say "the CRIU just built does not pass 'criu check' on this kernel"
  exit 1
fi
say "CRIU $version ready: $prefix/criu"
echo "$prefix/criu"
