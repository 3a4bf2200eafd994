# podidentity build, generation, lint and tests. `make help` lists the targets.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c

BIN            := $(CURDIR)/bin
CONTROLLER_GEN := $(BIN)/controller-gen
STATICCHECK    := $(BIN)/staticcheck
CONTROLLER_GEN_VERSION := v0.23.0
STATICCHECK_VERSION    := v0.8.2
GO_TEST_FLAGS ?= -count=1 -timeout 25m
BINARIES := $(notdir $(wildcard cmd/*))

.PHONY: help
help: ## List targets.
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

.PHONY: build
build: ## Build every binary under cmd/ into bin/.
	@mkdir -p $(BIN)
	@for b in $(BINARIES); do go build -o $(BIN)/$$b ./cmd/$$b; done

.PHONY: tools
tools: $(CONTROLLER_GEN) $(STATICCHECK) ## Install pinned developer tools into bin/.

$(CONTROLLER_GEN):
	GOBIN=$(BIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)

$(STATICCHECK):
	GOBIN=$(BIN) go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Regenerate deepcopy code and CRD manifests (config/crd).
	$(CONTROLLER_GEN) object paths=./api/...
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=config/crd

.PHONY: verify
verify: $(CONTROLLER_GEN) ## Fail when generated files are stale.
	CONTROLLER_GEN=$(CONTROLLER_GEN) hack/verify-generated.sh

.PHONY: control-plane
control-plane: ## Build (once, cached) etcd, kube-apiserver, kubectl, kube-controller-manager, kube-scheduler.
	@hack/control-plane.sh >/dev/null

.PHONY: lint
lint: $(STATICCHECK) ## go vet and staticcheck.
	go vet ./...
	$(STATICCHECK) ./...

.PHONY: test
test: verify control-plane ## Run every test against a real kube-apiserver and the Azure emulator.
	KUBEBUILDER_ASSETS=$$(hack/control-plane.sh) go test $(GO_TEST_FLAGS) ./...

.PHONY: manifests
manifests: ## Regenerate the chart's CRD copies and the plain manifests in deploy/ from charts/podidentity.
	go run ./hack/gen-manifests

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
IMAGE_REPO ?= ghcr.io/podidentity
IMAGES := mic nmi azure-emulator probe-client
# hack/images.sh stamps the version itself (from IMAGES_FROM's commit when set); pass VERSION on
# only when it was given.
IMAGES_ENV := IMAGE_REPO=$(IMAGE_REPO) $(if $(filter command line environment,$(origin VERSION)),VERSION=$(VERSION))

.PHONY: images
images: ## Build the images and OCI archives in _output/images (Docker Buildx when an engine answers, else buildah; see docs/images.md).
	$(IMAGES_ENV) IMAGES="$(IMAGES)" hack/images.sh build

.PHONY: images-test
images-test: control-plane ## Build the images with buildah and prove under podman that they start with the chart's flags and securityContext, and that NMI's iptables work (test/images).
	@mkdir -p $(BIN)
	KUBEBUILDER_ASSETS=$$(hack/control-plane.sh) PODIDENTITY_IMAGES_TEST=require IMAGES_PRUNE=1 $(IMAGES_ENV) \
	  go test $(GO_TEST_FLAGS) -v ./test/images/ 2>&1 | grep -vE '^\s+logger.go' | tee $(BIN)/images-test.txt | grep -E '^(=== RUN|---|ok|FAIL|PASS|panic)|_test.go'

.PHONY: docs-flags
docs-flags: ## Regenerate the flag tables in docs/configuration.md from MIC's and NMI's AddFlags.
	go run ./hack/gen-flags-doc

SANDBOX_FLAGS ?=

.PHONY: sandbox
sandbox: ## Run podidentity end to end on this machine (root): control plane, emulated Azure, nodes in network namespaces, MIC, NMI, demo. Ctrl-C stops it.
	@mkdir -p $(BIN)
	go build -o $(BIN)/sandbox ./cmd/sandbox
	$(BIN)/sandbox --repo $(CURDIR) $(SANDBOX_FLAGS)

.PHONY: sandbox-down
sandbox-down: ## Stop a sandbox running in another terminal and remove what crashed runs left behind.
	@mkdir -p $(BIN)
	go build -o $(BIN)/sandbox ./cmd/sandbox
	$(BIN)/sandbox down

.PHONY: e2e
e2e: control-plane ## Run only the end-to-end suite (test/e2e) in a sandbox.
	KUBEBUILDER_ASSETS=$$(hack/control-plane.sh) go test $(GO_TEST_FLAGS) -v ./test/e2e/...

.PHONY: bench-mic
bench-mic: control-plane ## MIC benchmarks: pure desired state (20k pods) and end to end on envtest + emulator (MIC_FULL=1 for 2,000 pods / 30 nodes).
	go test ./internal/mic/desired -run '^$$' -bench . -benchtime 20x
	KUBEBUILDER_ASSETS=$$(hack/control-plane.sh) go test ./internal/mic -run '^$$' -bench EndToEnd -benchtime 1x -timeout 30m $(if $(MIC_FULL),-mic.full)

.PHONY: bench-firsttoken
bench-firsttoken: control-plane ## First token of new pods, standard vs federated mode, in a sandbox with Azure's timing (root; ~2 min; LATENCY_PODS, LATENCY_TIMING).
	KUBEBUILDER_ASSETS=$$(hack/control-plane.sh) go test ./test/latency -run '^$$' -bench FirstToken -benchtime 1x -timeout 15m -v

CHAOS_DURATION  ?= 2m
CHAOS_SEED      ?= 0
CHAOS_INTENSITY ?= 4

.PHONY: chaos
chaos: control-plane ## Chaos run in a sandbox (root): churn + seeded faults, invariants checked, report in _output/chaos (CHAOS_DURATION, CHAOS_SEED (0: random), CHAOS_INTENSITY faults/min).
	@mkdir -p $(BIN)
	go build -o $(BIN)/chaos ./cmd/chaos
	KUBEBUILDER_ASSETS=$$(hack/control-plane.sh) $(BIN)/chaos --repo $(CURDIR) --out $(CURDIR)/_output/chaos \
	  --duration $(CHAOS_DURATION) --seed $(CHAOS_SEED) --intensity $(CHAOS_INTENSITY) $(CHAOS_FLAGS)

NMI_BENCH_SUSTAINED ?= 60s

.PHONY: bench-nmi
bench-nmi: control-plane ## NMI benchmarks (issue 5 Performance: cached/direct/miss, sustained NMI_BENCH_SUSTAINED at c=8 with IMDS connections, RSS of cmd/nmi with 200+10,000 pods) as a table.
	@mkdir -p $(BIN)
	KUBEBUILDER_ASSETS=$$(hack/control-plane.sh) NMI_BENCH_SUSTAINED=$(NMI_BENCH_SUSTAINED) \
	  go test ./internal/nmi -run '^$$' -bench 'Cached|Direct|Miss|Sustained' -timeout 30m 2>&1 | tee $(BIN)/bench-nmi.txt | grep -E '^(Benchmark|---|    bench|ok|FAIL|PASS|panic)'
	@# RSS last: its 10,000 pods stay in that run's API server.
	KUBEBUILDER_ASSETS=$$(hack/control-plane.sh) go test ./internal/nmi -run '^$$' -bench RSS -timeout 30m 2>&1 | tee -a $(BIN)/bench-nmi.txt | grep -E '^(Benchmark|---|    bench|ok|FAIL|PASS|panic)'
	@echo
	@echo "NMI benchmark table (raw output: $(BIN)/bench-nmi.txt)"
	@awk '/^Benchmark/ { name=$$1; sub(/-[0-9]+$$/, "", name); row=""; \
	    for (i = 3; i < NF; i += 2) if ($$(i+1) != "ns/op") row = row sprintf("  %s=%s", $$(i+1), $$i); \
	    printf "%-46s%s\n", name, row }' $(BIN)/bench-nmi.txt
	@echo "Goals: cached c=8 at imds=10ms p50 <= 500us and >= 6880 req/s; cached imds=0 c=1 p99 <= 500us, c=8 >= 10k req/s and within 1.5x of Direct;"
	@echo "       200 pods cpu-us/req within 1.2x of 1 pod; Sustained slowest/fastest-slice near 1 with imds-conns/1k-req near 0; Miss <= 1.05x DirectMiss; RSS <= 40 MiB."
