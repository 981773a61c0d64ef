# Cairn's one entry point. Every target installs what it needs itself, so a
# fresh clone on a Debian machine (root) needs nothing else.
#
#   make build      all binaries into bin/
#   make deps       the Debian packages every test, the demo and the benchmarks use
#   make test       unit tests (-race), tests against a real API server, end-to-end tests in the lab
#   make lint       gofmt, go vet, staticcheck
#   make generate   protobuf, deepcopy, CRD YAML, clientset/informers/listers
#   make k8s-bins   etcd and the Kubernetes binaries for tests, into bin/k8s
#   make demo       the lab with a sample application, then the mesh (istiod-lite, ztunnel)
#   make bench      Go benchmarks (speed and memory targets)
#   make fuzz       every Go fuzz target in turn, FUZZTIME (10m) each; crashers stay in testdata/fuzz/

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

GO      ?= go
BIN     := $(CURDIR)/bin
TOOLS   := $(BIN)/tools
K8S_BIN := $(BIN)/k8s
export PATH := $(TOOLS):$(PATH)

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/cairnmesh/cairn/internal/version.version=$(VERSION)
# Cairn's binaries are built without cgo: static, and a ztunnel that does
# not map libc is 1.8 MB smaller in memory. grpcnotrace leaves out gRPC's
# golang.org/x/net/trace pages (and html/template with them), which Cairn
# never serves. integration/labharness builds the lab's binaries the same way.
GOTAGS  := grpcnotrace

COMMANDS := \
	./ztunnel/cmd/ztunnel \
	./ztunnel/cmd/cairn-cni \
	./waypoint/cmd/waypoint \
	./istiod-lite/cmd/istiod-lite \
	./cairnctl/cmd/cairnctl \
	./integration/apps/echo/cmd/echoserver

# Pinned tool versions. Each tool lands in bin/tools with a stamp that names
# its version, so a version bump reinstalls it and nothing else does.
CONTROLLER_TOOLS_VERSION := v0.23.0
CODE_GENERATOR_VERSION   := v0.37.2
PROTOC_GEN_GO_VERSION    := v1.36.12
PROTOC_GEN_GRPC_VERSION  := v1.6.2
STATICCHECK_VERSION      := v0.8.2

define go-tool
$(TOOLS)/.$(1)-$(3):
	@mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) $(GO) install $(2)@$(3)
	@rm -f $(TOOLS)/.$(1)-* && touch $$@
endef
$(eval $(call go-tool,controller-gen,sigs.k8s.io/controller-tools/cmd/controller-gen,$(CONTROLLER_TOOLS_VERSION)))
$(eval $(call go-tool,client-gen,k8s.io/code-generator/cmd/client-gen,$(CODE_GENERATOR_VERSION)))
$(eval $(call go-tool,lister-gen,k8s.io/code-generator/cmd/lister-gen,$(CODE_GENERATOR_VERSION)))
$(eval $(call go-tool,informer-gen,k8s.io/code-generator/cmd/informer-gen,$(CODE_GENERATOR_VERSION)))
$(eval $(call go-tool,protoc-gen-go,google.golang.org/protobuf/cmd/protoc-gen-go,$(PROTOC_GEN_GO_VERSION)))
$(eval $(call go-tool,protoc-gen-go-grpc,google.golang.org/grpc/cmd/protoc-gen-go-grpc,$(PROTOC_GEN_GRPC_VERSION)))
$(eval $(call go-tool,staticcheck,honnef.co/go/tools/cmd/staticcheck,$(STATICCHECK_VERSION)))

GEN_TOOLS := \
	$(TOOLS)/.controller-gen-$(CONTROLLER_TOOLS_VERSION) \
	$(TOOLS)/.client-gen-$(CODE_GENERATOR_VERSION) \
	$(TOOLS)/.lister-gen-$(CODE_GENERATOR_VERSION) \
	$(TOOLS)/.informer-gen-$(CODE_GENERATOR_VERSION) \
	$(TOOLS)/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION) \
	$(TOOLS)/.protoc-gen-go-grpc-$(PROTOC_GEN_GRPC_VERSION)

# Debian packages: every one that a test, the demo or a benchmark runs, in
# one list, installed by `make deps` before the first of them starts (test,
# demo, bench, generate and lab-up depend on it). Go code never installs
# packages; the lab and the tests only check, and name this target when
# something is missing. A package is installed when dpkg does not list it as
# installed, so a machine where an earlier run installed it does nothing.
#   iptables                     ztunnel's capture rules (iptables-restore, ip6tables), kube-proxy in the lab
#   containernetworking-plugins  the lab's CNI (bridge, host-local, loopback)
#   iproute2                     ip netns, ip link: the lab and the netns tests
#   util-linux                   nsenter: kubectl exec in the lab
#   curl                         the lab tests and the demo run it in pods
#   protobuf-compiler, libprotobuf-dev   protoc for `make generate` and its freshness test
#   haproxy, iperf3              the data-path benchmark's reference pair and load
DEB_PACKAGES := iptables containernetworking-plugins iproute2 util-linux curl \
	protobuf-compiler libprotobuf-dev haproxy iperf3
APT_UPDATED := $(BIN)/.apt-updated

.PHONY: deps
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null | grep -qx installed || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  [ -f $(APT_UPDATED) ] || { apt-get update -qq && mkdir -p $(BIN) && touch $(APT_UPDATED); }; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

.PHONY: build
build:
	CGO_ENABLED=0 $(GO) build -trimpath -tags '$(GOTAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/ $(COMMANDS)

.PHONY: tools
tools: $(GEN_TOOLS) deps

.PHONY: generate
generate: tools
	hack/generate.sh

.PHONY: k8s-bins
k8s-bins:
	hack/k8s-bins.sh $(K8S_BIN)

# Unit tests run with -race. Integration tests (the integration package and
# the lab) start their own etcd + kube-apiserver per package; two at a time
# at most, since API server start-up is CPU-heavy on small machines. They are
# built with the flags of `build` (no cgo, -trimpath, the same tags), so on a
# cold cache they reuse the packages compiled for the binaries instead of
# compiling the whole dependency graph a third time (about 3 minutes on 2
# cores).
INTEGRATION_PKGS = $(shell $(GO) list ./integration/... | grep -E '/integration(/lab.*)?$$')
UNIT_PKGS = $(shell $(GO) list ./... | grep -vE '/integration(/lab.*)?$$')

# Everything the tests run is prepared first, two jobs at a time: the
# Kubernetes build alone takes a quarter of an hour on a cold cache, and the
# race-instrumented compile of the unit tests' packages (race-build), the
# Debian packages, the tools and the other binaries go on beside it rather
# than after it. (A make started with its own -j keeps its job count.) Then
# the unit tests, then the integration tests: run side by side they saved
# three minutes but loaded the machine enough to fail tests whose pods must
# start within seconds, as on a real kubelet.
MAKE_J2 = $(MAKE) $(if $(filter -j%,$(MAKEFLAGS)),,-j2)
.PHONY: test test-prepare test-run-unit test-run-integration race-build
test:
	@start=$$(date +%s); $(MAKE_J2) test-prepare; \
	  echo "make test: prepared in $$(( $$(date +%s) - start ))s"; \
	  $(MAKE) test-run-unit test-run-integration; \
	  echo "make test: passed in $$(( $$(date +%s) - start ))s"

test-run-unit:
	K8S_ASSETS=$(K8S_BIN) $(GO) test -race -count=1 $(UNIT_PKGS)
test-run-integration:
	K8S_ASSETS=$(K8S_BIN) CGO_ENABLED=0 $(GO) test -trimpath -tags '$(GOTAGS)' -count=1 -p 2 -timeout 20m $(INTEGRATION_PKGS)

test-prepare: k8s-bins deps tools lab-bins race-build

# The unit tests' packages, what their tests import, and all their
# dependencies, compiled with -race into the build cache, where `go test
# -race` finds them. Not main packages: go build would link each one only to
# throw it away; nor test-only packages, which go build refuses.
RACE_BUILD_PKGS = $(shell $(GO) list -f '{{if and .GoFiles (ne .Name "main")}}{{.ImportPath}}{{end}}' \
	$$($(GO) list -f '{{.ImportPath}}{{range .TestImports}} {{.}}{{end}}{{range .XTestImports}} {{.}}{{end}}' $(UNIT_PKGS) | tr ' ' '\n' | sort -u))
race-build:
	@echo "go build -race <the unit tests' $(words $(RACE_BUILD_PKGS)) packages and what their tests import>"
	@$(GO) build -race $(RACE_BUILD_PKGS)

.PHONY: test-unit
test-unit: deps tools
	$(GO) test -race $(UNIT_PKGS)

# Benchmarks: speed and memory targets are checked here, never by timed
# tests. Those of the lab need root, as the lab does; the data-path one
# (integration/benchlab) runs Debian's haproxy and iperf3 as pods.
.PHONY: bench
bench: deps tools k8s-bins lab-bins
	K8S_ASSETS=$(K8S_BIN) $(GO) test -run '^$$' -bench . -benchtime 10x \
	  $$(grep -rl --include='*_test.go' '^func Benchmark' . | xargs -r -n1 dirname | sort -u)

# Fuzzing: hack/fuzz.sh runs each target (func FuzzX in a *_fuzz_test.go)
# for FUZZTIME; FUZZ=<regexp> picks targets, FUZZPARALLEL sets the
# processes per target. An input that fails is kept in testdata/fuzz/FuzzX/
# next to the target, where `make test` runs it from then on with the seed
# corpus. Logs and the record of runs go to bin/fuzz/.
FUZZTIME ?= 10m
.PHONY: fuzz
fuzz:
	FUZZTIME=$(FUZZTIME) hack/fuzz.sh

.PHONY: lint
lint: $(TOOLS)/.staticcheck-$(STATICCHECK_VERSION)
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt would change:"; echo "$$out"; exit 1; }
	$(GO) vet ./...
	staticcheck $$($(GO) list ./... | grep -v '/apis/client/')

.PHONY: demo
demo: lab-demo

.PHONY: clean
clean:
	rm -rf $(BIN)

# --- lab ---
# The lab (integration/lab, issue 3): a multi-node cluster in network
# namespaces. Needs root. `make lab-up` leaves it running (.lab/kubeconfig);
# `make lab-down` removes everything it made.
# bin/echoserver, which the lab runs too, comes from `build`.
LAB_BINS := ./integration/cmd/lab
FORTIO_VERSION  := v1.68.2

.PHONY: lab-bins lab-cmds
lab-bins: k8s-bins build lab-cmds $(BIN)/coredns $(BIN)/fortio

lab-cmds:
	CGO_ENABLED=0 $(GO) build -trimpath -tags '$(GOTAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/ $(LAB_BINS)

$(BIN)/fortio:
	@echo "building fortio $(FORTIO_VERSION) into bin/ (once)"
	GOBIN=$(BIN) CGO_ENABLED=0 $(GO) install fortio.org/fortio@$(FORTIO_VERSION)

# CoreDNS with the plugins of the lab's Corefile only (hack/coredns, its
# own module; the release is pinned in hack/coredns/go.mod).
$(BIN)/coredns: hack/coredns/main.go hack/coredns/go.mod hack/coredns/go.sum
	@echo "building CoreDNS (hack/coredns) into bin/ (once, ~2.5 min on a cold cache)"
	cd hack/coredns && CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ .

.PHONY: lab-up
lab-up: deps lab-bins
	$(BIN)/lab up

.PHONY: lab-down
lab-down:
	@[ -x $(BIN)/lab ] || $(GO) build -o $(BIN)/ ./integration/cmd/lab
	$(BIN)/lab down

.PHONY: lab-status
lab-status:
	@$(BIN)/lab status

.PHONY: lab-demo
lab-demo: deps lab-bins
	hack/demo.sh
# --- end lab ---
