# syntax=docker/dockerfile:1
# Image of the probe client (an Azure-SDK-like client for checking token access from a pod).
# Build from the repository root:
#   docker build -f build/probe-client.Dockerfile --build-arg VERSION=$(git describe --tags --always) \
#     --build-arg COMMIT=$(git rev-parse HEAD) --build-arg DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ) -t probe-client .
ARG GO_IMAGE=golang:1.26-bookworm
ARG BASE_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM --platform=$BUILDPLATFORM ${GO_IMAGE} AS build
ARG TARGETOS=linux TARGETARCH=amd64 VERSION=dev COMMIT=unknown DATE=unknown
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# Static (no cgo), so the distroless base without libc is enough.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath \
      -ldflags "-s -w -X github.com/podidentity/podidentity/internal/version.Version=$VERSION -X github.com/podidentity/podidentity/internal/version.Commit=$COMMIT -X github.com/podidentity/podidentity/internal/version.Date=$DATE" \
      -o /out/probe-client ./cmd/probe-client

FROM ${BASE_IMAGE}
ARG VERSION=dev COMMIT=unknown
LABEL org.opencontainers.image.title="podidentity-probe-client" \
      org.opencontainers.image.source="https://github.com/podidentity/podidentity" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$COMMIT"
COPY --from=build /out/probe-client /probe-client
# 65532 is distroless's "nonroot".
USER 65532:65532
ENTRYPOINT ["/probe-client"]
