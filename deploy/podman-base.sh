#!/usr/bin/env bash
# A registry-free stand-in for the Dockerfile's base image, for building and running the image
# with podman on a machine that reaches Debian's mirror and PyPI but no container registry
# (the image test, tests/integration/test_image.py, and anyone in the same place):
#
#   base="$(bash deploy/podman-base.sh)"
#   podman build --format docker --network=host --build-arg BASE_IMAGE="$base" -t sluice .
#
# Prints the name of a local image: Debian bookworm (debootstrap --variant=minbase) with python3
# and pip, from the mirror apt already uses here, trusting this machine's CA certificates and
# using its pip index, so `pip install` inside the build reaches PyPI the way the host does.
# The debootstrap tree is cached under $SLUICE_BASE_CACHE (default ~/.cache/sluice/podman-base),
# keyed by a hash of this recipe; the image is kept in podman's store under a tag that hashes
# the recipe, the CA bundle and the pip settings, so a repeat run does nothing. Needs root.
set -euo pipefail

SUITE=bookworm
PACKAGES=python3-pip,python-is-python3 # python3 comes with pip
CA_BUNDLE=${SLUICE_BASE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
USER_CACHE=${XDG_CACHE_HOME:-${HOME:+$HOME/.cache}}
CACHE=${SLUICE_BASE_CACHE:-${USER_CACHE:-/var/cache}/sluice/podman-base}

say() { echo "podman-base: $*" >&2; }

# The first mirror in apt's sources that serves $SUITE itself (not -updates or -security),
# in either format: one-line (sources.list, *.list) or deb822 (*.sources).
apt_mirror() {
    local file
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$file" ] || continue
        awk -v suite="$SUITE" '$1 == "deb" {
            i = 2
            if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
            if ($(i + 1) == suite) { print $i; exit }
        }' "$file"
    done
    for file in /etc/apt/sources.list.d/*.sources; do
        [ -f "$file" ] || continue
        awk -v suite="$SUITE" 'BEGIN { RS = "" } {
            n = split($0, lines, "\n"); uri = ""; found = 0; deb = 0
            for (j = 1; j <= n; j++) {
                split(lines[j], w, /[ \t]+/)
                if (w[1] == "URIs:") uri = w[2]
                if (w[1] == "Types:") for (k = 2; k in w; k++) if (w[k] == "deb") deb = 1
                if (w[1] == "Suites:") for (k = 2; k in w; k++) if (w[k] == suite) found = 1
            }
            if (uri != "" && found && deb) { print uri; exit }
        }' "$file"
    done
}

# pip's setting NAME (e.g. index-url) as the host's pip sees it: PIP_* first, then pip's config
# files; only http(s) values, since a file:// index on the host does not exist in the build.
pip_setting() {
    local name=$1 env_name value
    env_name="PIP_$(echo "$name" | tr 'a-z-' 'A-Z_')"
    value=${!env_name:-}
    if [ -z "$value" ] && command -v python3 >/dev/null; then
        value=$(python3 -m pip config get "global.$name" 2>/dev/null || true)
    fi
    local kept=() item
    for item in $value; do
        case "$item" in http://* | https://*) kept+=("$item") ;; esac
    done
    echo "${kept[*]:-}"
}

debootstrap_tree() {
    local tree=$1 mirror=$2
    say "debootstrap $SUITE from $mirror into $tree (about a minute, once)"
    rm -rf "$tree.tmp"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tree.tmp" "$mirror" >"$CACHE/debootstrap.log" 2>&1 ||
        {
            tail -20 "$CACHE/debootstrap.log" >&2
            exit 1
        }
    # The image's pip installs system-wide, as in python:*-slim (PEP 668 marker off); no apt state.
    rm -f "$tree.tmp"/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "$tree.tmp"/var/lib/apt/lists/* "$tree.tmp"/var/cache/apt/*.bin "$tree.tmp"/var/cache/apt/archives/*.deb
    mv "$tree.tmp" "$tree"
}

# Earlier bases (another recipe, CA bundle or index); one still used by an image stays.
drop_older_images() {
    local keep=$1 name
    for name in $(podman images --format '{{.Repository}}:{{.Tag}}' localhost/sluice-podman-base); do
        [ "$name" = "$keep" ] || podman rmi "$name" >/dev/null 2>&1 || true
    done
}

# What `podman import` sets on the tree: PATH and locale as in python:*-slim, pip's trust and index.
image_changes() {
    local index extra
    index=$(pip_setting index-url)
    extra=$(pip_setting extra-index-url)
    printf '%s\n' \
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        "ENV LANG=C.UTF-8" \
        "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" \
        "ENV PIP_DEFAULT_TIMEOUT=${PIP_DEFAULT_TIMEOUT:-60}" \
        'CMD ["python3"]'
    [ -z "$index" ] || echo "ENV PIP_INDEX_URL=$index"
    [ -z "$extra" ] || echo "ENV PIP_EXTRA_INDEX_URL=$extra"
}

# The debootstrap tree for `recipe`, made once (under a lock: one debootstrap at a time).
cached_tree() {
    local recipe=$1 mirror=$2 tree="$CACHE/$SUITE-$1"
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9
    if [ ! -d "$tree" ]; then
        rm -rf "$CACHE/$SUITE"-* # trees of an older recipe
        debootstrap_tree "$tree" "$mirror"
    fi
    echo "$tree"
}

main() {
    local mirror recipe tree key image change changes args=()
    [ -r "$CA_BUNDLE" ] || {
        say "no CA bundle at $CA_BUNDLE (Debian package ca-certificates; or set SLUICE_BASE_CA_BUNDLE)"
        exit 1
    }
    mirror=${SLUICE_BASE_MIRROR:-$(apt_mirror | head -n 1)}
    mirror=${mirror:-http://deb.debian.org/debian}
    recipe=$(printf '%s\n' "$(declare -f debootstrap_tree)" "$SUITE" "$PACKAGES" "$mirror" | sha256sum | cut -c1-16)
    mapfile -t changes < <(image_changes)
    key=$(printf '%s\n' "$recipe" "$(sha256sum <"$CA_BUNDLE")" "${changes[@]}" | sha256sum | cut -c1-16)
    image="localhost/sluice-podman-base:$key"
    if ! podman image exists "$image"; then
        tree=$(cached_tree "$recipe" "$mirror")
        cp "$CA_BUNDLE" "$tree/etc/ssl/certs/ca-certificates.crt"
        for change in "${changes[@]}"; do args+=(--change "$change"); done
        say "importing $tree as $image"
        tar -C "$tree" --numeric-owner -cf - . | podman import --quiet "${args[@]}" - "$image" >/dev/null
        drop_older_images "$image"
    fi
    echo "$image"
}

main "$@"
