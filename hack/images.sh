#!/usr/bin/env bash
# Builds the four release images (mic, nmi, azure-emulator, probe-client) as $IMAGE_REPO/<name>:$VERSION
# plus one OCI archive each under $IMAGES_OUT (default _output/images). See docs/images.md.
#
#   hack/images.sh [build]   Docker Buildx from build/*.Dockerfile when a Docker engine answers;
#                            otherwise buildah, from binaries built here and base images made from
#                            the pinned Debian packages in build/base.packages (no registry needed)
#   hack/images.sh pin       print the mirror's current versions of build/base.packages' names
#
# Environment: VERSION, COMMIT, SOURCE_DATE_EPOCH (default: the last commit's date), IMAGE_REPO,
# IMAGES (subset), IMAGE_ENGINE=docker|buildah (default: docker when `docker info` works),
# IMAGES_FROM=<git revision>: build that commit (from `git archive`) instead of the working tree,
# e.g. IMAGES_FROM=HEAD while the tree holds unfinished edits.
# Everything is cached: binaries, downloaded packages, base images and images are rebuilt only
# when their inputs changed.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
ROOT=$PWD

read -r -a NAMES <<<"${IMAGES:-mic nmi azure-emulator probe-client}"
IMAGE_REPO=${IMAGE_REPO:-ghcr.io/podidentity}
FROM_REV=${IMAGES_FROM:-}
if [ -n "$FROM_REV" ]; then
  FROM_REV=$(git rev-parse --verify "$FROM_REV^{commit}") || { echo "images: IMAGES_FROM=$IMAGES_FROM is not a commit" >&2; exit 1; }
  VERSION=${VERSION:-$(git describe --tags --always "$FROM_REV")}
else
  VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
fi
COMMIT=${COMMIT:-$(git rev-parse "${FROM_REV:-HEAD}" 2>/dev/null || echo unknown)}
# The commit's date rather than now, so that two builds of one commit are identical.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct "${FROM_REV:-HEAD}" 2>/dev/null || echo 0)}
DATE=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
OUT=${IMAGES_OUT:-$ROOT/_output/images}
CACHE=${IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/podidentity/images}
# The tree the images are built from: the working tree, or IMAGES_FROM's files.
SRC=$ROOT
if [ -n "$FROM_REV" ]; then
  SRC=$CACHE/src/$FROM_REV
  if [ ! -f "$SRC/go.mod" ]; then
    # One snapshot is kept: the previous ones are only disk space.
    rm -rf "$CACHE/src" && mkdir -p "$SRC" && git archive "$FROM_REV" | tar -x -C "$SRC"
  fi
fi
PACKAGES=$SRC/build/base.packages
VPKG=github.com/podidentity/podidentity/internal/version
LDFLAGS="-s -w -X $VPKG.Version=$VERSION -X $VPKG.Commit=$COMMIT -X $VPKG.Date=$DATE"
# Both bases get this PATH; NMI's entrypoint puts the chosen iptables backend in front of it.
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
NONROOT=65532
# The local path builds for this machine's architecture: the Debian packages are the host's.
ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)

# Temporary trees, removed however the script ends.
TMPS=()
trap '[ ${#TMPS[@]} = 0 ] || rm -rf "${TMPS[@]}"' EXIT

log() { echo "images: $*" >&2; }
die() { echo "images: $*" >&2; exit 1; }
sha() { sha256sum | cut -c1-64; }

# Each image's entrypoint (the user is $NONROOT for all), as in build/<name>.Dockerfile
# (test/images checks both against the Dockerfiles and the built images).
entrypoint() { if [ "$1" = nmi ]; then echo /nmi-entrypoint.sh; else echo "/$1"; fi; }
base_of() { if [ "$1" = nmi ]; then echo nmi; else echo static; fi; }

packages() { grep -Ev '^\s*(#|$)' "$PACKAGES"; }

cmd_pin() {
  packages | while IFS== read -r name _; do
    echo "$name=$(apt-cache policy "$name" | awk '/Candidate:/ {print $2}')"
  done
}

# ---- Docker Buildx: the Dockerfiles as users with a registry build them.
build_docker() {
  [ -z "$FROM_REV" ] || die "IMAGES_FROM works with buildah only (Docker builds the working tree): unset it, or IMAGE_ENGINE=buildah"
  mkdir -p "$OUT"
  for n in "${NAMES[@]}"; do
    local tag=$IMAGE_REPO/$n:$VERSION
    local args=(-f "build/$n.Dockerfile" --build-arg "VERSION=$VERSION" --build-arg "COMMIT=$COMMIT"
      --build-arg "DATE=$DATE" --build-arg "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH")
    log "docker buildx: $tag"
    docker buildx build "${args[@]}" -t "$tag" --load .
    # Second pass from the build cache, for the archive.
    docker buildx build "${args[@]}" --output "type=oci,dest=$OUT/$n.tar,name=$tag" .
  done
  build_env
}

# ---- buildah: same layout, without a registry.

# Static linux/$ARCH binaries, relinked only when a Go file, go.mod/go.sum or the stamp changed.
build_binaries() {
  local bin=$OUT/bin key
  mkdir -p "$bin"
  if [ -n "$FROM_REV" ]; then
    key=$(echo "$LDFLAGS $(go version) $FROM_REV" | sha)
  else
    key=$( { echo "$LDFLAGS"; go version; git ls-files -co --exclude-standard -- '*.go' go.mod go.sum |
      grep -v '_test\.go$' | LC_ALL=C sort | xargs sha256sum; } | sha)
  fi
  local fresh=1
  for n in "${NAMES[@]}"; do [ -x "$bin/$n" ] || fresh=0; done
  if [ "$fresh" = 1 ] && [ "$(cat "$bin/.key" 2>/dev/null)" = "$key" ]; then log "binaries up to date"; return; fi
  log "go build (static, linux/$ARCH): ${NAMES[*]}"
  local pkgs=()
  for n in "${NAMES[@]}"; do pkgs+=("./cmd/$n"); done
  rm -f "$bin/.key"
  (cd "$SRC" && CGO_ENABLED=0 GOOS=linux GOARCH=$ARCH go build -trimpath -ldflags "$LDFLAGS" -o "$bin/" "${pkgs[@]}")
  echo "$key" >"$bin/.key"
}

# The .deb of name=version, downloaded once into the cache (apt-get download checks its hash
# against the mirror's signed index).
deb() {
  local name=$1 version=$2 dir=$CACHE/debs f
  mkdir -p "$dir"
  f=$(ls "$dir/${name}_${version/:/%3a}"_*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$f" ]; then
    (cd "$dir" && apt-get download -q "$name=$version" >&2) ||
      die "$name=$version is not on this machine's Debian mirror (apt-get update first?); run hack/images.sh pin and update $PACKAGES"
    f=$(ls "$dir/${name}_${version/:/%3a}"_*.deb | head -n1)
  fi
  [ "$(dpkg-deb -f "$f" Package) $(dpkg-deb -f "$f" Version)" = "$name $version" ] || die "$f is not $name=$version"
  echo "$f"
}

# unpack root deb...: files only, no maintainer scripts; merged /usr as in Debian 12.
unpack() {
  local root=$1; shift
  mkdir -p "$root/usr/bin" "$root/usr/sbin" "$root/usr/lib" "$root/usr/lib64"
  for d in bin sbin lib lib64; do [ -e "$root/$d" ] || ln -s "usr/$d" "$root/$d"; done
  for f in "$@"; do dpkg-deb --fsys-tarfile "$f" | tar -x -C "$root" --keep-directory-symlink; done
}

# /etc/ssl/certs/ca-certificates.crt as update-ca-certificates writes it: every certificate of
# the package, in name order.
ca_bundle() {
  local root=$1 tmp f
  f=$(deb ca-certificates "$(packages | sed -n 's/^ca-certificates=//p')")
  tmp=$(mktemp -d)
  TMPS+=("$tmp")
  unpack "$tmp" "$f"
  mkdir -p "$root/etc/ssl/certs"
  find "$tmp/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | while read -r c; do
    cat "$c"; [ -z "$(tail -c1 "$c")" ] || echo
  done >"$root/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$tmp"
  [ "$(grep -c 'BEGIN CERTIFICATE' "$root/etc/ssl/certs/ca-certificates.crt")" -gt 100 ] || die "the CA bundle from $f has too few certificates"
}

users() {
  local root=$1
  mkdir -p "$root/etc" "$root/tmp" "$root/run" "$root/home/nonroot"
  chmod 1777 "$root/tmp"
  chown "$NONROOT:$NONROOT" "$root/home/nonroot"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' $NONROOT $NONROOT >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:%s:\n' $NONROOT >"$root/etc/group"
}

# NMI's base: iptables (both backends), dash and grep for nmi-entrypoint.sh, and only the files
# they need, laid out as build/nmi.Dockerfile lays out debian:bookworm-slim + iptables.
nmi_root() {
  local root=$1 debs=() f name version
  for line in $(packages); do
    name=${line%%=*} version=${line#*=}
    [ "$name" != ca-certificates ] || continue
    f=$(deb "$name" "$version")
    debs+=("$f")
  done
  unpack "$root" "${debs[@]}"
  # Drop what nothing here runs. No ld.so.cache is needed: Debian's loader searches the
  # multiarch library directories by default (the chroot checks below prove it).
  rm -rf "$root"/usr/share/{doc,man,info,locale,lintian,bug,bash-completion} "$root"/usr/lib/*-linux-gnu*/gconv \
    "$root/var" "$root/etc/ld.so.conf.d" "$root/usr/libexec"
  find "$root/usr/bin" "$root/usr/sbin" -type f ! -name dash ! -name grep ! -name 'xtables-*-multi' -delete
  find "$root/usr/bin" "$root/usr/sbin" -xtype l -delete
  ln -sf dash "$root/usr/bin/sh"
  for mode in legacy nft; do
    mkdir -p "$root/opt/iptables/$mode"
    for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
      ln -sf "/usr/sbin/xtables-$mode-multi" "$root/opt/iptables/$mode/$t"
    done
  done
  # The image must be able to run what the entrypoint runs.
  chroot "$root" /bin/sh -c 'echo ok | grep -q ok' || die "the NMI base's sh/grep do not run"
  for mode in legacy nft; do
    chroot "$root" "/opt/iptables/$mode/iptables" --version >/dev/null || die "the NMI base's iptables ($mode) does not run"
  done
}

# A deterministic layer from a directory: sorted, owned by root unless set, one fixed mtime.
layer_tar() {
  tar -C "$1" --sort=name --mtime="@$2" --numeric-owner --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -cf "$3" .
}

# Base image localhost/podidentity-base/<kind>:<hash of its inputs>, built once; sets BASE_TAG.
build_base() {
  local kind=$1 key tag root ctr
  key=$( { echo "$kind"; cat "$PACKAGES"; sed -n '/^# ---- buildah/,/^# ---- images/p' "$0"; } | sha | cut -c1-16)
  tag=localhost/podidentity-base/$kind:$key
  BASE_TAG=$tag
  if podman image exists "$tag" >/dev/null 2>&1; then return; fi
  log "base image $tag (from $PACKAGES)"
  root=$(mktemp -d "$OUT/.root-XXXXXX")
  TMPS+=("$root" "$root.tar")
  ca_bundle "$root"
  [ "$kind" = static ] || nmi_root "$root"
  users "$root"
  layer_tar "$root" 0 "$root.tar"
  ctr=$(buildah from --pull=never scratch)
  buildah add --quiet "$ctr" "$root.tar" / >/dev/null
  buildah config --os linux --arch "$ARCH" --env "PATH=$IMAGE_PATH" --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --label "io.podidentity.base.packages=$(sha <"$PACKAGES")" "$ctr"
  buildah commit --quiet --rm --timestamp 0 --format oci "$ctr" "$tag" >/dev/null
  rm -rf "$root" "$root.tar"
}
# ---- images

build_image() {
  local n=$1 base=$2 tag=$IMAGE_REPO/$1:$VERSION entry user=$NONROOT:$NONROOT key stage ctr
  entry=$(entrypoint "$n")
  key=$( { podman image inspect --format "{{.Id}}" "$base"; sha256sum "$OUT/bin/$n";
    [ "$n" != nmi ] || sha256sum "$SRC/build/nmi-entrypoint.sh"; echo "$tag $COMMIT $DATE"; sed -n '/^# ---- images/,$p' "$0"; } | sha)
  if [ -f "$OUT/$n.tar" ] && [ "$(cat "$OUT/$n.key" 2>/dev/null)" = "$key" ] &&
    [ "$(podman image inspect --format "{{index .Labels \"io.podidentity.build-key\"}}" "$tag" 2>/dev/null)" = "$key" ]; then
    log "$tag up to date"; return
  fi
  log "image $tag (base $base)"
  stage=$(mktemp -d "$OUT/.stage-XXXXXX")
  TMPS+=("$stage" "$stage.tar")
  install -m 0755 "$OUT/bin/$n" "$stage/$n"
  [ "$n" != nmi ] || install -m 0755 "$SRC/build/nmi-entrypoint.sh" "$stage/nmi-entrypoint.sh"
  layer_tar "$stage" "$SOURCE_DATE_EPOCH" "$stage.tar"
  ctr=$(buildah from --pull=never "$base")
  buildah add --quiet "$ctr" "$stage.tar" / >/dev/null
  buildah config --entrypoint "[\"$entry\"]" --cmd '' --user "$user" --workingdir / \
    --label "org.opencontainers.image.title=podidentity-$n" \
    --label "org.opencontainers.image.source=https://github.com/podidentity/podidentity" \
    --label "org.opencontainers.image.version=$VERSION" --label "org.opencontainers.image.revision=$COMMIT" \
    --label "org.opencontainers.image.created=$DATE" --label "io.podidentity.build-key=$key" "$ctr"
  buildah commit --quiet --rm --timestamp "$SOURCE_DATE_EPOCH" --format oci "$ctr" "$tag" >/dev/null
  rm -rf "$stage" "$stage.tar" "$OUT/$n.tar"
  buildah push --quiet "$tag" "oci-archive:$OUT/$n.tar:$tag"
  echo "$key" >"$OUT/$n.key"
}

build_buildah() {
  command -v podman >/dev/null || die "podman not found (needed to run the images): apt-get install -y podman buildah crun"
  mkdir -p "$OUT"
  build_binaries
  local -A bases=()
  for n in "${NAMES[@]}"; do
    local k; k=$(base_of "$n")
    if [ -z "${bases[$k]:-}" ]; then build_base "$k"; bases[$k]=$BASE_TAG; fi
    build_image "$n" "${bases[$k]}"
  done
  {
    printf '%-42s %-14s %10s  %s\n' IMAGE ID SIZE ARCHIVE
    for n in "${NAMES[@]}"; do
      local tag=$IMAGE_REPO/$n:$VERSION
      printf '%-42s %-14s %10s  %s\n' "$tag" "$(podman image inspect --format '{{.Id}}' "$tag" | cut -c1-12)" \
        "$(podman image inspect --format '{{.Size}}' "$tag" | numfmt --to=iec)" "${OUT#"$ROOT"/}/$n.tar"
    done
  } | tee "$OUT/images.txt"
  build_env
  [ "${IMAGES_PRUNE:-}" != 1 ] || prune "${bases[@]}"
}

# IMAGES_PRUNE=1: remove the images this script built before (other versions, old bases), so
# that repeated test runs across commits do not fill podman's storage.
prune() {
  local keep=" $* " ref n
  for n in "${NAMES[@]}"; do keep+="$IMAGE_REPO/$n:$VERSION "; done
  podman images --noheading --format '{{.Repository}}:{{.Tag}}' \
    --filter label=io.podidentity.build-key | sort -u | while read -r ref; do
    case "$keep" in *" $ref "*) ;; *) if podman rmi "$ref" >/dev/null 2>&1; then log "pruned $ref"; fi ;; esac
  done
  podman images --noheading --format '{{.Repository}}:{{.Tag}}' \
    --filter label=io.podidentity.base.packages | sort -u | while read -r ref; do
    case "$keep" in *" $ref "*) ;; *) if podman rmi "$ref" >/dev/null 2>&1; then log "pruned $ref"; fi ;; esac
  done
}

# What was stamped, for test/images and for scripts that push or load the images.
build_env() {
  printf 'VERSION=%s\nCOMMIT=%s\nDATE=%s\nIMAGE_REPO=%s\nSOURCE_DATE_EPOCH=%s\n' \
    "$VERSION" "$COMMIT" "$DATE" "$IMAGE_REPO" "$SOURCE_DATE_EPOCH" >"$OUT/build.env"
}

case "${1:-build}" in
pin) cmd_pin ;;
build)
  engine=${IMAGE_ENGINE:-}
  if [ -z "$engine" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
    elif command -v buildah >/dev/null; then engine=buildah
    else die "no Docker engine answers (docker info) and buildah is not installed: start Docker with Buildx, or apt-get install -y podman buildah crun"
    fi
  fi
  log "engine $engine, version $VERSION (commit ${COMMIT:0:12}, date $DATE)"
  case "$engine" in
  docker) build_docker ;;
  buildah) build_buildah ;;
  *) die "IMAGE_ENGINE=$engine: use docker or buildah" ;;
  esac
  ;;
*) die "unknown command $1: use build or pin" ;;
esac
