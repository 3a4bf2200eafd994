# syntax=docker/dockerfile:1
# Image of NMI (Node Managed Identity). Unlike the other images it needs iptables, and a shell for
# the backend selection in nmi-entrypoint.sh, so its base is debian-slim rather than distroless.
# Build from the repository root:
#   docker build -f build/nmi.Dockerfile --build-arg VERSION=$(git describe --tags --always) \
#     --build-arg COMMIT=$(git rev-parse HEAD) --build-arg DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ) -t nmi .
ARG GO_IMAGE=golang:1.26-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM --platform=$BUILDPLATFORM ${GO_IMAGE} AS build
ARG TARGETOS=linux TARGETARCH=amd64 VERSION=dev COMMIT=unknown DATE=unknown
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath \
      -ldflags "-s -w -X github.com/podidentity/podidentity/internal/version.Version=$VERSION -X github.com/podidentity/podidentity/internal/version.Commit=$COMMIT -X github.com/podidentity/podidentity/internal/version.Date=$DATE" \
      -o /out/nmi ./cmd/nmi

FROM ${BASE_IMAGE}
ARG VERSION=dev COMMIT=unknown
# iptables ships both backends (legacy and nf_tables). NMI's rule must go into the backend the
# node's kube-proxy and CNI use, or it is invisible to the kernel path that matters;
# nmi-entrypoint.sh picks it at start. The choice is made through PATH (two directories of
# symlinks prepared here) because the root filesystem is read-only at run time.
# The versions are build/base.packages', which the local build (hack/images.sh) uses too.
RUN --mount=type=bind,source=build/base.packages,target=/tmp/base.packages \
    apt-get update \
 && apt-get install -y --no-install-recommends $(grep -E '^(iptables|ca-certificates)=' /tmp/base.packages) \
 && rm -rf /var/lib/apt/lists/* \
 && for mode in legacy nft; do \
      mkdir -p /opt/iptables/$mode; \
      for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do \
        ln -s /usr/sbin/xtables-$mode-multi /opt/iptables/$mode/$t; \
      done; \
    done
LABEL org.opencontainers.image.title="podidentity-nmi" \
      org.opencontainers.image.source="https://github.com/podidentity/podidentity" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$COMMIT"
COPY build/nmi-entrypoint.sh /nmi-entrypoint.sh
COPY --from=build /out/nmi /nmi
# NMI must run as root (the chart sets runAsUser: 0 with only NET_ADMIN and NET_RAW): iptables and
# the host's /run/xtables.lock need it. The image default is non-root so that running it anywhere
# else by mistake gains nothing.
USER 65532:65532
ENTRYPOINT ["/nmi-entrypoint.sh"]
