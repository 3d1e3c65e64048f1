# berth — build, test, install, benchmark.
#
#   make build     binaries into bin/
#   make test      install what the tests need, then every test (as root)
#   make test-quick  lint, unit tests and the fast end-to-end tests
#   make bench     benchmarks against runc, crun, skopeo+umoci and containerd
#   make install   binaries into $(PREFIX)/bin
#   make release   a release tarball and SHA256SUMS; make deb a Debian package
#   make docs      manual pages of berth, berthd and berthctl
#   make run       build, start berthd and run a pod through berthctl
#   make run-oci   build, then run a container from a busybox bundle with berth
#   make cluster   a Kubernetes cluster on berth (NODES=2 for two nodes);
#                  make cluster-down removes it
#   make test-vm   every suite in a VM with cgroup v2, systemd and AppArmor

GO        ?= go
CC        ?= gcc
PREFIX    ?= /usr/local
BINDIR    := bin
# One version for every binary: the release in VERSION, the commit as
# semantic-version build metadata (0.1.0+3cf05eb), which the kubelet parses.
RELEASE   := $(shell cat VERSION)
VERSION   ?= $(RELEASE)+$(shell git describe --always --dirty 2>/dev/null || echo dev)
# seccomp: link libseccomp for seccomp profiles (as runc's release builds do).
# The others keep berth lean, since every container start runs the binary
# twice (the CLI and the container's init): no man-page generator in the
# CLI library, pure-Go user and host lookups. libcontainer's CRIU client
# is in (checkpoint and restore): 0.9 MB of the binary, 8 µs of its start.
TAGS      := seccomp urfave_cli_no_docs netgo osusergo containers_image_openpgp
LDFLAGS   := -X github.com/berth-runtime/berth/internal/version.Version=$(VERSION)
GO_FLAGS  := -trimpath -tags '$(TAGS)'
# berth is linked statically: no dynamic loader at each of its two execs.
STATIC    := -extldflags -static
# pause runs in every pod: no libc, no start-up code, two pages.
PAUSE_CFLAGS := -Os -static -nostdlib -ffreestanding -fno-pie -no-pie \
	-fno-stack-protector -fno-asynchronous-unwind-tables -fcf-protection=none \
	-Wl,--build-id=none -s -Wall -Werror
# Per-test-binary timeout; the whole suite must stay well under CI's limit.
TEST_TIMEOUT ?= 30m
# Pass TEST=<regexp> to run a subset of the end-to-end tests.
TEST      ?=
TESTRUN   := $(if $(TEST),-run '$(TEST)',)
# Pass SUITE=oci|cri|kubelet|cluster to run one end-to-end suite.
SUITE     ?=
E2E_PKGS  := $(if $(SUITE),./conformance/$(SUITE)/,./conformance/...)

BINARIES  := berth berth-shim pause berthd berthctl berth-lazy

.PHONY: deps-check vm-image vm-image-background vm-stage test-vm test-vm-quick docs release deb all build deps test-deps cni-plugins kubelet kubernetes mkimage upstream-bins upstream-bins-background e2e-upstream e2e-upstream-run e2e-upstream-node e2e-upstream-conformance e2e-upstream-features upstream-report containerd cluster cluster-down gotestsum checkpointctl unit e2e race-bin e2e-race test test-quick lint vet fmt install install-cni-config bench clean run run-oci fuzz fuzz-ci

all: build

deps:
	@hack/install-deps.sh build

test-deps:
	@hack/install-deps.sh test

build: deps
	@mkdir -p $(BINDIR)
	$(GO) build $(GO_FLAGS) -ldflags '$(LDFLAGS) $(STATIC)' -o $(BINDIR)/berth ./cmd/berth
	CGO_ENABLED=0 $(GO) build $(GO_FLAGS) -ldflags '$(LDFLAGS)' -o $(BINDIR)/berth-shim ./cmd/berth-shim
	$(CC) $(PAUSE_CFLAGS) -o $(BINDIR)/pause cmd/pause/pause.c
	$(GO) build $(GO_FLAGS) -ldflags '$(LDFLAGS)' -o $(BINDIR)/berthd ./cmd/berthd
	$(GO) build $(GO_FLAGS) -ldflags '$(LDFLAGS)' -o $(BINDIR)/berthctl ./cmd/berthctl
	$(GO) build $(GO_FLAGS) -ldflags '$(LDFLAGS)' -o $(BINDIR)/berth-lazy ./cmd/berth-lazy

# The libcontainer fence: runc's packages are not a stable API (containerd
# forbids importing runc), so only runtime/ may import them; the others go
# through runtime/.
# One shim runs per pod and maps its binary whole: it links no gRPC, no
# Kubernetes, no libcontainer, no logrus, and not net or os/exec (0.25 MB;
# internal/unixsock and os.StartProcess do its part of them).
SHIM_FORBIDDEN := net|os/exec|google.golang.org/grpc.*|k8s.io/.*|github.com/opencontainers/runc/.*|github.com/sirupsen/logrus.*

lint: vet
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './.git/*' -not -path './.cache/*')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@bad=$$($(GO) list $(GO_FLAGS) -f '{{.ImportPath}}: {{join .Imports " "}} {{join .TestImports " "}} {{join .XTestImports " "}}' ./... | \
		grep 'github.com/opencontainers/runc/' | cut -d: -f1 | grep -v '^github.com/berth-runtime/berth/runtime$$'); \
	if [ -n "$$bad" ]; then echo "only runtime/ may import runc's packages (github.com/opencontainers/runc/...); these do:"; echo "$$bad"; exit 1; fi
	@bad=$$($(GO) list $(GO_FLAGS) -deps ./cmd/berth-shim | grep -xE '$(SHIM_FORBIDDEN)'); \
	if [ -n "$$bad" ]; then echo "berth-shim links what it must not (one runs per pod, and maps its binary whole):"; echo "$$bad"; exit 1; fi

vet:
	$(GO) vet $(GO_FLAGS) ./...

# Every direct dependency and built tool beside the newest version the
# module proxy serves; fails on a deprecated or moved module path. Not in
# make test: the proxy's answer changes by the day.
deps-check:
	@hack/deps-check.sh

fmt:
	gofmt -w $$(find . -name '*.go' -not -path './.git/*')

# Tests run through gotestsum (built from the Go module proxy): it prints
# each package's result and the output of failures, and ends with a
# summary that lists every skipped test with its reason.
GOTESTSUM := $(CURDIR)/.cache/gotestsum
TESTFORMAT = --format pkgname-and-test-fails --format-hide-empty-pkg
TESTRUNNER = $(GOTESTSUM) $(TESTFORMAT) --

gotestsum:
	@hack/gotestsum/build.sh $(GOTESTSUM)

# checkpointctl reads checkpoint archives; the VM tier's CRI suite has it
# read berth's (CRIU runs there).
CHECKPOINTCTL := $(CURDIR)/.cache/checkpointctl
checkpointctl:
	@hack/checkpointctl/build.sh $(CHECKPOINTCTL)

# Unit tests: everything outside conformance/, with the race detector.
# Some (the shim's) drive the built binaries too.
unit: build gotestsum
	BERTH_BIN_DIR=$(CURDIR)/$(BINDIR) $(TESTRUNNER) $(GO_FLAGS) -race -count=1 -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -v /conformance/)

# End-to-end tests drive the built binaries as root. One package at a time:
# they share the host's cgroups and network.
RUNTIME_TOOLS := $(CURDIR)/.cache/runtime-tools
# The standard CNI plugins (hack/cni-plugins/build.sh lists them), built
# from the Go module proxy; make install copies those missing.
CNI_BIN       := $(CURDIR)/.cache/cni-bin
CNI_INSTALL_DIR ?= /opt/cni/bin
CNI_CONF_DIR    ?= /etc/cni/net.d
BERTH_CONF_DIR  ?= /etc/berth

cni-plugins:
	hack/cni-plugins/build.sh $(CNI_BIN)

# Kubernetes of the release whose CRI berth speaks, built once from the
# k8s.io/kubernetes module (and etcd, CoreDNS at the versions its kubeadm
# deploys): the kubelet for conformance/kubelet, all of it for a cluster.
K8S_DIR       := $(CURDIR)/.cache/kubernetes
K8S_CLUSTER   := kubelet kubeadm kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd coredns
KUBELET_DIR   := $(K8S_DIR)

kubelet:
	hack/kubernetes/build.sh $(K8S_DIR) kubelet

kubernetes:
	hack/kubernetes/build.sh $(K8S_DIR) $(K8S_CLUSTER)

# containerd 2.4 and the runc it pins, built from the Go module proxy: the
# peer berth is compared with.
CONTAINERD_DIR := $(CURDIR)/.cache/containerd

containerd:
	hack/containerd/build.sh $(CONTAINERD_DIR)

# A cluster on this machine whose runtime is berthd (hack/cluster/cluster.sh):
# `make cluster NODES=2`, then the two lines it prints to eval; `make
# cluster-down` removes all of it. CLUSTER_RUNTIME=containerd: the same
# cluster on containerd.
NODES ?= 1
CLUSTER_RUNTIME ?= berth
CLUSTER_ENV = BERTH_BIN_DIR=$(CURDIR)/$(BINDIR) CNI_BIN_DIR=$(CNI_BIN) K8S_BIN_DIR=$(K8S_DIR) MKIMAGE=$(CURDIR)/.cache/mkimage CONTAINERD_BIN_DIR=$(CONTAINERD_DIR) CLUSTER_RUNTIME=$(CLUSTER_RUNTIME)

cluster: build test-deps cni-plugins kubernetes mkimage $(if $(filter containerd,$(CLUSTER_RUNTIME)),containerd)
	$(CLUSTER_ENV) hack/cluster/cluster.sh up $(NODES)

cluster-down:
	$(CLUSTER_ENV) hack/cluster/cluster.sh down

mkimage:
	$(GO) build $(GO_FLAGS) -o .cache/mkimage ./hack/cluster/mkimage

# Kubernetes' own end-to-end tests (e2e.test of the same release) on a
# two-node cluster, berth then containerd (hack/upstream/run.sh), with the
# test images built by hack/upstream/images.sh. conformance/upstream/
# RESULTS.md gets the table, the triage of every failure and the JUnit
# reports; the target fails when a berth failure is berth's own.
# UPSTREAM_FOCUS and UPSTREAM_EXCLUDE choose the specs (upstream's node
# conformance jobs leave out [Slow]|[Serial]|[Flaky]); UPSTREAM_RUNTIMES=
# berth runs one column.
UPSTREAM_OUT      ?= $(CURDIR)/.cache/upstream-out
UPSTREAM_FOCUS    ?= \[NodeConformance\]|\[sig-node\].*\[Conformance\]|\[sig-network\].*\[Conformance\]
UPSTREAM_EXCLUDE  ?=
FLAKE_ATTEMPTS    ?=
UPSTREAM_RUNTIMES ?= berth containerd
UPSTREAM_RESULTS  ?= conformance/upstream
# ginkgo processes: most specs wait (probes, periods), so more than the
# cores; the longest specs (4 min of liveness probing) bound the run.
UPSTREAM_PARALLEL ?= 8
upstream-bins:
	@mkdir -p $(K8S_DIR)
	flock $(UPSTREAM_BINS_LOCK) hack/kubernetes/build.sh $(K8S_DIR) $(UPSTREAM_BINS)

# e2e.test, ginkgo and agnhost take minutes to build when the Go build
# cache does not hold them (ten in one run here; 34 s with it warm): make
# test builds them behind the e2e suites, which mostly wait on
# containers, at the lowest CPU priority. upstream-bins then waits for
# that build (one flock) and finds them built; if it failed, it builds
# them again and shows why. The background build's log is
# $(K8S_DIR)/upstream-bins.log.
UPSTREAM_BINS      := e2e.test ginkgo agnhost
UPSTREAM_BINS_LOCK := $(K8S_DIR)/.upstream-bins.lock
upstream-bins-background: kubernetes
	@mkdir -p $(K8S_DIR) && (flock $(UPSTREAM_BINS_LOCK) nice -n 19 hack/kubernetes/build.sh $(K8S_DIR) $(UPSTREAM_BINS) >$(K8S_DIR)/upstream-bins.log 2>&1 &)

# upstream-results FOCUS,EXCLUDE,DIR: DIR/RESULTS.md and the trimmed JUnit
# reports of the UPSTREAM_REPORT runtimes' runs, for the specs of FOCUS.
UPSTREAM_REPORT ?= $(UPSTREAM_RUNTIMES)
UPSTREAM_TARGET ?= e2e-upstream
define upstream-results
	mkdir -p $(3)
	$(GO) run $(GO_FLAGS) ./hack/upstream/results -by 'make $(UPSTREAM_TARGET)' -focus '$(1)' -exclude '$(2)' -out $(3)/RESULTS.md -junit-dir $(3) \
		-title "Kubernetes $$(cat $(K8S_DIR)/.version-kubeadm), two nodes, $$(uname -r), cgroup $$(if [ -f /sys/fs/cgroup/cgroup.controllers ]; then echo v2; else echo v1; fi), $$(date -u +%F)." \
		$(foreach r,$(UPSTREAM_REPORT),$(r)=$(UPSTREAM_OUT)/$(r))
endef

e2e-upstream: e2e-upstream-run
	$(call upstream-results,$(UPSTREAM_FOCUS),$(UPSTREAM_EXCLUDE),$(UPSTREAM_RESULTS))

e2e-upstream-run: build test-deps cni-plugins kubernetes upstream-bins mkimage $(if $(filter containerd,$(UPSTREAM_RUNTIMES)),containerd)
	@set -e; for r in $(UPSTREAM_RUNTIMES); do \
		$(CLUSTER_ENV) CLUSTER_RUNTIME=$$r PARALLEL=$(UPSTREAM_PARALLEL) UPSTREAM_EXCLUDE='$(UPSTREAM_EXCLUDE)' FLAKE_ATTEMPTS=$(FLAKE_ATTEMPTS) hack/upstream/run.sh $$r $(UPSTREAM_OUT) '$(UPSTREAM_FOCUS)'; \
	done

# make test's share: the [NodeConformance] specs upstream's node jobs run,
# on berth alone (the containerd column is make e2e-upstream's). A spec
# that fails is retried once (FLAKE_ATTEMPTS=2, reported as a flake in
# ginkgo's log); the report is $(UPSTREAM_OUT)/RESULTS.md.
e2e-upstream-node:
	@rc=0; $(MAKE) e2e-upstream UPSTREAM_RUNTIMES=berth UPSTREAM_FOCUS='\[NodeConformance\]' \
		UPSTREAM_EXCLUDE='\[Slow\]|\[Serial\]|\[Flaky\]' UPSTREAM_RESULTS=$(UPSTREAM_OUT) FLAKE_ATTEMPTS=2 || rc=$$?; \
	sed -n '/^| runtime/,/^## Where/p' $(UPSTREAM_OUT)/RESULTS.md 2>/dev/null; exit $$rc

# The whole [Conformance] set, as a certified distribution runs it: the
# parallel specs, then the [Serial] ones on one process (run.sh's two
# passes), with the specs of the node features Kubernetes turns on
# (UPSTREAM_FEATURES: runtime classes, image volumes, DRA with its test
# driver; without what needs a gate that is off, a DRA gate of its own or
# resource.k8s.io's beta APIs, which 1.37 does not serve by default, and
# which no [Conformance] spec does) in the same runs. About 45 minutes
# per runtime here: not part of make test. Reports: conformance/upstream/
# conformance/ and conformance/upstream/features/ (RESULTS.md each). One
# runtime at a time: UPSTREAM_RUNTIMES=containerd, then berth with
# UPSTREAM_REPORT='berth containerd' for the side-by-side reports.
UPSTREAM_FEATURES ?= \[sig-node\] (RuntimeClass|ImageVolume|\[DRA\])
UPSTREAM_FEATURES_EXCLUDE ?= \[Alpha\]|\[Beta\]|OffByDefault|\[Flaky\]|\[FeatureGate:DRA|with v1beta[12] API
UPSTREAM_CONFORMANCE_OUT := $(CURDIR)/.cache/upstream-conformance
e2e-upstream-conformance:
	$(MAKE) e2e-upstream-run UPSTREAM_FOCUS='\[Conformance\]|$(UPSTREAM_FEATURES)' UPSTREAM_EXCLUDE='$(UPSTREAM_FEATURES_EXCLUDE)' \
		UPSTREAM_OUT=$(UPSTREAM_CONFORMANCE_OUT)
	@rc=0; \
	$(MAKE) --no-print-directory upstream-report UPSTREAM_TARGET=e2e-upstream-conformance UPSTREAM_REPORT_FOCUS='\[Conformance\]' UPSTREAM_RESULTS=conformance/upstream/conformance || rc=$$?; \
	$(MAKE) --no-print-directory upstream-report UPSTREAM_TARGET=e2e-upstream-conformance UPSTREAM_REPORT_FOCUS='$(UPSTREAM_FEATURES)' UPSTREAM_REPORT_EXCLUDE='$(UPSTREAM_FEATURES_EXCLUDE)' UPSTREAM_RESULTS=conformance/upstream/features || rc=$$?; \
	exit $$rc

# The node features' specs alone, without the [Conformance] set around
# them: the same selection and report (conformance/upstream/features/),
# about 10 minutes of specs per runtime here (not part of make test).
e2e-upstream-features:
	$(MAKE) e2e-upstream UPSTREAM_FOCUS='$(UPSTREAM_FEATURES)' UPSTREAM_EXCLUDE='$(UPSTREAM_FEATURES_EXCLUDE)' \
		UPSTREAM_OUT=$(CURDIR)/.cache/upstream-features UPSTREAM_RESULTS=conformance/upstream/features UPSTREAM_TARGET=e2e-upstream-features

# upstream-report: the report of UPSTREAM_REPORT_FOCUS's specs from runs
# already made (e2e-upstream-conformance's by default).
upstream-report: UPSTREAM_OUT = $(UPSTREAM_CONFORMANCE_OUT)
upstream-report:
	$(call upstream-results,$(UPSTREAM_REPORT_FOCUS),$(UPSTREAM_REPORT_EXCLUDE),$(UPSTREAM_RESULTS))

e2e: build cni-plugins kubernetes mkimage gotestsum
	hack/runtime-tools/build.sh $(RUNTIME_TOOLS)
	BERTH_BIN_DIR=$(CURDIR)/$(BINDIR) BERTH_RUNTIME_TOOLS=$(RUNTIME_TOOLS) BERTH_CNI_BIN=$(CNI_BIN) BERTH_KUBELET=$(KUBELET_DIR)/kubelet BERTH_K8S_DIR=$(K8S_DIR) BERTH_MKIMAGE=$(CURDIR)/.cache/mkimage $(GOTESTSUM) $(TESTFORMAT) --jsonfile $(CURDIR)/.cache/e2e.json -- $(GO_FLAGS) -count=1 -p 1 -timeout $(TEST_TIMEOUT) $(TESTRUN) $(E2E_PKGS)
	@echo "the slowest end-to-end tests (gotestsum tool slowest):"; $(GOTESTSUM) tool slowest --jsonfile $(CURDIR)/.cache/e2e.json --threshold 20s | head -25

# The VM tier: the node users run (cgroup v2, systemd as PID 1, AppArmor),
# which this machine kind is not. hack/vm/image.sh makes a Debian image
# from Debian's packages (mmdebstrap, cached in VM_DIR/image); hack/vm/
# run.sh boots it under qemu (KVM where a stock kernel boots under it,
# else software emulation) and runs hack/vm/plan.VM_PLAN inside: the test
# binaries built here (go test -c) and the builds they drive, shared over
# virtio-9p with the checkout; results come back as test2json streams,
# shown here through gotestsum like every other suite. make test runs
# plan.quick, make test-vm plan.full.
VM_DIR   := $(CURDIR)/.cache/vm
VM_STAGE := $(VM_DIR)/stage
VM_OUT   ?= $(VM_DIR)/out
VM_PLAN  ?= full
VM_PKGS  := ./cgroups ./cgroups/oomwatch ./runtime ./runtime/ocicli ./internal/shim ./conformance/oci ./conformance/cri ./conformance/kubelet

vm-image:
	@hack/install-deps.sh vm
	hack/vm/image.sh $(VM_DIR)/image

# make test builds the image behind the upstream suite, which mostly
# waits on probes; test-vm's own vm-image waits for it (image.sh locks)
# and says what went wrong if it failed.
vm-image-background:
	@hack/install-deps.sh vm
	@mkdir -p $(VM_DIR) && (hack/vm/image.sh $(VM_DIR)/image >$(VM_DIR)/image.log 2>&1 &)

# What the guest copies onto its own disk: the binaries, the test
# binaries and what they drive.
vm-stage: build cni-plugins kubelet mkimage gotestsum checkpointctl
	hack/runtime-tools/build.sh $(RUNTIME_TOOLS)
	@rm -rf $(VM_STAGE) && mkdir -p $(VM_STAGE)/tests $(VM_STAGE)/kubernetes
	$(GO) test -c $(GO_FLAGS) -o $(VM_STAGE)/tests/ $(VM_PKGS)
	cp -a $(BINDIR) $(VM_STAGE)/bin
	cp -a $(CNI_BIN) $(VM_STAGE)/cni-bin
	cp -a $(RUNTIME_TOOLS) $(VM_STAGE)/runtime-tools
	cp -a $(KUBELET_DIR)/kubelet $(VM_STAGE)/kubernetes/
	cp -a $(CURDIR)/.cache/mkimage $(VM_STAGE)/mkimage
	cp -a $(CHECKPOINTCTL) $(VM_STAGE)/checkpointctl
	$(GO) build -o $(VM_STAGE)/test2json cmd/test2json

test-vm: vm-image vm-stage
	@rc=0; VM_DIR=$(VM_DIR) VM_OUT=$(VM_OUT) hack/vm/run.sh $(VM_PLAN) || rc=$$?; \
	if ls $(VM_OUT)/*.json >/dev/null 2>&1; then \
		$(GOTESTSUM) $(TESTFORMAT) --raw-command -- cat $(VM_OUT)/*.json || rc=1; \
	fi; exit $$rc

# make test's share of the VM tier.
test-vm-quick:
	@$(MAKE) --no-print-directory test-vm VM_PLAN=quick

# The edit-test loop, a few minutes: lint, the unit tests with -race, and
# the OCI and CRI suites without their slow tests (testutil.Slow, skipped
# by go test -short); one after the other, as some tests compare the
# host's whole mount table before and after. make test runs everything: the slow tests, the
# kubelet, cluster and upstream suites, the fuzz budgets, the race pass.
QUICK_PKGS := ./conformance/oci/ ./conformance/cri/

test-quick: test-deps build lint gotestsum cni-plugins
	BERTH_BIN_DIR=$(CURDIR)/$(BINDIR) $(TESTRUNNER) $(GO_FLAGS) -race -short -count=1 -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -v /conformance/)
	BERTH_BIN_DIR=$(CURDIR)/$(BINDIR) BERTH_CNI_BIN=$(CNI_BIN) $(GOTESTSUM) $(TESTFORMAT) --jsonfile $(CURDIR)/.cache/quick.json -- $(GO_FLAGS) -short -count=1 -p 1 -timeout $(TEST_TIMEOUT) $(TESTRUN) $(QUICK_PKGS)
	@echo "the slowest of them:"; $(GOTESTSUM) tool slowest --jsonfile $(CURDIR)/.cache/quick.json --threshold 10s | head -15

# The race pass: berthd and berth-shim built with the race detector (the
# shim's races only show in the shim process), driven by the shim's tests
# and the CRI tests of the lifecycle, streaming, restarts and chaos. Every
# race-built process writes its reports under RACE_LOG (GORACE log_path);
# any report fails the pass. atexit_sleep_ms=0: a race-built binary would
# otherwise linger a second at exit, which the leak checks would see.
RACE_BIN   := $(CURDIR)/.cache/bin-race
RACE_LOG   := $(CURDIR)/.cache/race-reports
RACE_TESTS := TestPodAndContainerLifecycle|TestExecAndExecSync|TestAttachStdinOnce|TestPortForward|TestStreamingWebSocket|TestLogsAndRotation|TestContainerEvents|TestDaemonRestartAndCrash|TestShimKilled|TestShimUnreachableIsNotGone|TestChaosKill|TestConcurrentStateDuringCreate|TestExecAttachAndReopen|TestCreateStartLogsAndExit

race-bin: build
	@mkdir -p $(RACE_BIN)
	$(GO) build $(GO_FLAGS) -race -ldflags '$(LDFLAGS)' -o $(RACE_BIN)/berthd ./cmd/berthd
	$(GO) build $(GO_FLAGS) -race -ldflags '$(LDFLAGS)' -o $(RACE_BIN)/berth-shim ./cmd/berth-shim
	cp $(BINDIR)/berth $(BINDIR)/pause $(BINDIR)/berthctl $(RACE_BIN)/

e2e-race: race-bin cni-plugins gotestsum
	@rm -rf $(RACE_LOG) && mkdir -p $(RACE_LOG)
	GORACE="log_path=$(RACE_LOG)/race halt_on_error=0 atexit_sleep_ms=0" BERTH_BIN_DIR=$(RACE_BIN) BERTH_CNI_BIN=$(CNI_BIN) $(TESTRUNNER) $(GO_FLAGS) -count=1 -p 1 -timeout $(TEST_TIMEOUT) -run '$(RACE_TESTS)' ./internal/shim/ ./conformance/cri/
	@if [ -n "$$(ls -A $(RACE_LOG))" ]; then echo "data races in berthd or berth-shim:"; cat $(RACE_LOG)/*; exit 1; fi
	@echo "race pass: no data race reported by berthd or berth-shim"

# Fuzz targets as package:Target:CI budget. CI runs each for its budget of
# executions (about 15 s on a 2-core machine) rather than for a duration:
# Go 1.26's fuzz coordinator can fail a target with a bare "context
# deadline exceeded" when a duration ends mid-execution (golang/go#75804,
# fixed in Go 1.27); a count has no deadline to race. `make fuzz` runs
# each for FUZZTIME. Minimization is off: on two cores it stalls the
# engine for minutes per new input.
FUZZ_TARGETS := ./runtime:FuzzParseSpec:400000x ./image:FuzzUnpack:6000x ./image:FuzzReference:25000x \
	./image:FuzzManifest:4000x ./image/lazy:FuzzOpen:20000x ./cri:FuzzCRIRequests:30000x
FUZZTIME     ?= 10m
# Workers per target; FUZZPARALLEL=1 leaves a core for other work.
FUZZPARALLEL ?= $(shell nproc)

# The cached corpus goes first: replaying hundreds of saved inputs can
# outlast a short budget, and CI starts without one anyway.
fuzz-ci:
	$(GO) clean -fuzzcache
	@set -e; for ft in $(FUZZ_TARGETS); do \
		pkg=$${ft%%:*}; rest=$${ft#*:}; fn=$${rest%%:*}; budget=$${rest#*:}; \
		echo "fuzz $$fn ($$pkg), budget $$budget"; \
		$(GO) test $(GO_FLAGS) -run '^$$' -fuzz "^$$fn$$" -fuzztime $$budget -fuzzminimizetime 0s $$pkg; \
	done

# Every target runs even when one fails; the failures are listed at the end.
fuzz:
	@failed=""; for ft in $(FUZZ_TARGETS); do \
		pkg=$${ft%%:*}; rest=$${ft#*:}; fn=$${rest%%:*}; \
		echo "fuzz $$fn ($$pkg) for $(FUZZTIME)"; \
		$(GO) test $(GO_FLAGS) -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) -timeout 0 -parallel $(FUZZPARALLEL) -fuzzminimizetime 0s $$pkg || failed="$$failed $$fn"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz targets failed:$$failed"; exit 1; fi

test: test-deps build lint unit fuzz-ci upstream-bins-background e2e e2e-race vm-image-background e2e-upstream-node test-vm-quick

# berthd renders the bridge template for the pod CIDR the kubelet gives;
# until then, or without a kubelet, the default bridge network (10.88.0.0/16)
# serves, installed only where no CNI configuration exists. An edited
# template is kept.
install-cni-config:
	install -d $(DESTDIR)$(BERTH_CONF_DIR) $(DESTDIR)$(CNI_CONF_DIR)
	@if [ ! -e $(DESTDIR)$(BERTH_CONF_DIR)/cni-bridge.conflist.template ]; then \
		install -m 0644 contrib/cni/bridge.conflist.template $(DESTDIR)$(BERTH_CONF_DIR)/cni-bridge.conflist.template; \
	fi
	@if ! ls $(DESTDIR)$(CNI_CONF_DIR) | grep -qE '\.(conf|conflist|json)$$'; then \
		echo "install the default CNI network (bridge berth0, 10.88.0.0/16) into $(CNI_CONF_DIR)"; \
		install -m 0644 contrib/cni/10-berth-bridge.conflist $(DESTDIR)$(CNI_CONF_DIR)/10-berth-bridge.conflist; \
	fi

install: build cni-plugins install-cni-config
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(addprefix $(BINDIR)/,$(BINARIES)) $(DESTDIR)$(PREFIX)/bin/
	install -d $(DESTDIR)$(CNI_INSTALL_DIR)
	@for f in $(CNI_BIN)/*; do \
		p=$$(basename $$f); \
		if [ ! -e $(DESTDIR)$(CNI_INSTALL_DIR)/$$p ]; then \
			echo "install CNI plugin $$p into $(CNI_INSTALL_DIR)"; \
			install -m 0755 $$f $(DESTDIR)$(CNI_INSTALL_DIR)/$$p; \
		fi; \
	done

# Release artifacts into RELEASE_DIR (hack/release/package.sh): the
# tarball laid out as containerd's (extract at /) with SHA256SUMS, and a
# Debian package built with dpkg-deb.
RELEASE_DIR ?= $(CURDIR)/.cache/release

release: build cni-plugins docs
	BIN_DIR=$(CURDIR)/$(BINDIR) CNI_BIN=$(CNI_BIN) VERSION=$(VERSION) MAN_DIR=$(DOCS_DIR) hack/release/package.sh tarball $(RELEASE_DIR)

deb: build docs
	BIN_DIR=$(CURDIR)/$(BINDIR) VERSION=$(VERSION) MAN_DIR=$(DOCS_DIR) hack/release/package.sh deb $(RELEASE_DIR)

# Manual pages of berth, berthd and berthctl (roff, DOCS_DIR/<name>.8),
# generated from their command definitions: man -l .cache/docs/berthctl.8
DOCS_DIR ?= $(CURDIR)/.cache/docs

docs:
	GO=$(GO) hack/docs/build.sh $(DOCS_DIR)

bench: build cni-plugins containerd
	@hack/install-deps.sh bench
	BERTH_BIN_DIR=$(CURDIR)/$(BINDIR) BERTH_CNI_BIN=$(CNI_BIN) $(GO) run $(GO_FLAGS) ./conformance/bench/cmd/berth-bench -peers $(CONTAINERD_DIR) -out bench/results

# The main job: start berthd, pull an image with progress bars and run a
# pod through berthctl; berthd keeps running. run-oci: the OCI CLI alone.
run: build test-deps
	$(GO) run $(GO_FLAGS) ./hack/demo -bin-dir $(CURDIR)/$(BINDIR)

run-oci: build test-deps
	@hack/demo.sh $(CURDIR)/$(BINDIR)/berth

clean:
	rm -rf $(BINDIR) .cache
