# Berth: run containers inside lightweight VMs.
# `make help` lists the targets.

GO        ?= go
BIN       := bin
STATE_DIR ?= /var/lib/berth
PREFIX    ?= /usr/local
ROOTFS    ?= $(BIN)/rootfs-busybox
# The agent is PID 1 of the guest: a static binary. runc's nsenter needs
# cgo, so it links glibc statically; osusergo/netgo keep NSS out of it.
# The seccomp tag compiles libcontainer's seccomp support, linking Debian's
# static libseccomp (libseccomp-dev): without it the agent refuses every
# container that carries a seccomp profile. runc_nocriu leaves out
# libcontainer's checkpoint/restore (go-criu and its protobuf descriptors,
# ~0.7 MB): Berth never checkpoints, and every byte of the agent is
# unpacked from the initramfs at each boot.
AGENT_TAGS    := osusergo netgo seccomp runc_nocriu
AGENT_LDFLAGS := -s -w -extldflags -static

.PHONY: FORCE help build deps guest rootfs demo install test test-unit test-e2e test-e2e-containerd2 bench bench-ctr bench-stats bench-net bench-devices bench-memory bench-firmware bench-pods proto clean

help: ## list targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z0-9_-]+:.*## /{printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: $(BIN)/berth $(BIN)/berth-agent $(BIN)/containerd-shim-berth-v2 ## build the binaries into bin/

# The binaries are always handed to go build, whose cache knows what
# changed: make's timestamps miss a deleted source file (nothing is newer
# than the binary), which left a stale agent behind.
FORCE:

$(BIN)/berth: FORCE
	$(GO) build -o $@ ./cmd/berth

$(BIN)/containerd-shim-berth-v2: FORCE
	$(GO) build -o $@ ./cmd/containerd-shim-berth-v2

$(BIN)/berth-agent: FORCE
	@mkdir -p $(BIN)
	@# glibc's static-linking warnings are expected; show output only on failure.
	CGO_ENABLED=1 $(GO) build -tags "$(AGENT_TAGS)" -ldflags "$(AGENT_LDFLAGS)" -o $@ ./cmd/berth-agent 2>$(BIN)/.agent-build.log || { cat $(BIN)/.agent-build.log; exit 1; }

# The hostile-guest e2e tests' agent (test/e2e/evilagent): the real agent
# plus attacks on the host, built like it. Never part of a real image; the
# tests build it (through this rule) and put it into an initramfs of their own.
$(BIN)/berth-evil-agent: FORCE
	@mkdir -p $(BIN)
	CGO_ENABLED=1 $(GO) build -tags "$(AGENT_TAGS)" -ldflags "$(AGENT_LDFLAGS)" -o $@ ./test/e2e/evilagent 2>$(BIN)/.evil-agent-build.log || { cat $(BIN)/.evil-agent-build.log; exit 1; }

deps: ## install the Debian packages Berth needs (root)
	scripts/install-deps.sh

guest: build ## build the guest kernel + initramfs into $(STATE_DIR)/guest
	$(BIN)/berth --state-dir $(STATE_DIR) guest build

rootfs: ## unpack a busybox root file system into $(ROOTFS)
	scripts/busybox-rootfs.sh $(ROOTFS)

demo: deps guest rootfs ## set up everything, then run a container in a VM (berth run, then through containerd)
	STATE_DIR=$(STATE_DIR) ROOTFS=$(ROOTFS) scripts/demo.sh

install: build ## install the binaries into $(PREFIX)/bin and a default config into /etc/berth (root)
	install -D -m 0755 $(BIN)/berth $(PREFIX)/bin/berth
	install -D -m 0755 $(BIN)/berth-agent $(PREFIX)/bin/berth-agent
	install -D -m 0755 $(BIN)/containerd-shim-berth-v2 $(PREFIX)/bin/containerd-shim-berth-v2
	@if [ ! -e /etc/berth/config.toml ]; then install -d /etc/berth && $(BIN)/berth env | grep -v '^#' > /etc/berth/config.toml && echo "wrote /etc/berth/config.toml"; fi

test-unit: ## unit tests: no root, no VM, seconds
	$(GO) test -short ./...

# The QEMU driver's own tests boot the Debian kernel `berth guest build`
# unpacked (guest.kernel_source = "debian"), else the guest image's kernel
# (Berth's own, booted through PVH); the guest image test boots an
# initramfs built around a test init.
TEST_KERNEL = $(or $(firstword $(wildcard $(STATE_DIR)/cache/linux-image-*/boot/vmlinuz-*)),$(STATE_DIR)/guest/vmlinuz)

test-e2e: deps guest $(BIN)/berth-evil-agent ## end-to-end tests: boot real VMs, drive a real containerd (root)
	BERTH_TEST_KERNEL=$(TEST_KERNEL) $(GO) test -count=1 -timeout 10m ./internal/qemu/...
	BERTH_TEST_BOOT=1 $(GO) test -count=1 -timeout 10m ./internal/guest/...
	$(GO) test -count=1 -timeout 5m ./internal/sandbox/... ./internal/cgroup/... ./internal/network/... ./internal/agent/...
	BERTH_E2E=1 BERTH_STATE_DIR=$(STATE_DIR) $(GO) test -count=1 -v -timeout 40m ./test/e2e/...

# The containerd 2.x lane: the tests where containerd's version matters,
# again against containerd 2.x (built once from the Go module proxy into
# /var/cache/berth by scripts/containerd-v2.sh, then reused). The pod
# network is exercised here by TestCRIPortForward; TestCRIPodNetwork is not
# in the lane, as its runc pod needs a 2.x containerd-shim-runc-v2 and
# Debian ships 1.6's.
CONTAINERD2_VERSION ?= v2.4.2
CONTAINERD2_TESTS   := TestCtrRunExitCodeAndGuestKernel|TestCRIPortForward|TestCtrDetachedExecMetricsPauseKillDelete|TestCtrContainerdRestartKeepsTask|TestCRIPodWithTwoContainersSharesOneVM|TestCRIContainerStats|TestPodCgroupHoldsTheVM|TestPodCgroupRemovedAfterShimKilled|TestShimRuntimeInfo|TestContainerd2SandboxAPIRefused

test-e2e-containerd2: deps guest ## the containerd 2.x lane of the e2e tests (root)
	bin=$$(scripts/containerd-v2.sh $(CONTAINERD2_VERSION)) && \
	BERTH_CONTAINERD=$$bin/containerd BERTH_E2E=1 BERTH_STATE_DIR=$(STATE_DIR) $(GO) test -count=1 -v -timeout 15m -run '^($(CONTAINERD2_TESTS))$$' ./test/e2e/...

test: test-unit test-e2e test-e2e-containerd2 ## all tests (what CI runs)

bench: deps guest rootfs ## benchmark: berth run vs the raw QEMU boot floor (table)
	$(GO) run ./bench/boot -n 5 -berth $(BIN)/berth -state-dir $(STATE_DIR) -rootfs $(ROOTFS)

bench-stats: build guest rootfs ## benchmark: CRI ContainerStats latency, Berth vs runc (table)
	$(GO) run ./bench/stats -n 200 -state-dir $(STATE_DIR) -rootfs $(ROOTFS)

bench-net: build guest rootfs ## benchmark: pod TCP throughput and HTTP latency, Berth vs runc (table)
	$(GO) run ./bench/net -state-dir $(STATE_DIR) -rootfs $(ROOTFS)

bench-devices: deps guest rootfs ## benchmark: block device hot-plug latency (table)
	$(GO) run ./bench/devices -n 10 -state-dir $(STATE_DIR) -rootfs $(ROOTFS)

bench-ctr: build guest rootfs ## benchmark: ctr run --rm /bin/true, runc vs berth vs the VM boot floor (table)
	$(GO) run ./bench/ctr -n 5 -bin $(BIN) -state-dir $(STATE_DIR) -rootfs $(ROOTFS)

bench-pods: build guest rootfs ## benchmark: CRI pod start (runc vs berth), 10 pods at once, idle pod PSS (table)
	$(GO) run ./bench/pods -n 5 -parallel 10 -bin $(BIN) -state-dir $(STATE_DIR) -rootfs $(ROOTFS)

bench-firmware: deps guest ## benchmark: q35 boot to agent ready under qboot vs SeaBIOS (table)
	bench/firmware/run.sh 8 $(STATE_DIR)

bench-memory: deps guest rootfs ## benchmark: memory hot-plug +/-1 GiB (virtio-mem, DIMM, raw QMP floor), elastic grow latency, 1 GiB in chunks vs runc (table)
	$(GO) run ./bench/memory -n 5 -state-dir $(STATE_DIR) -rootfs $(ROOTFS)

proto: ## regenerate api/agent from its .proto (needs protoc)
	cd api/agent/v1 && protoc -I. -I/usr/include --go_out=paths=source_relative:. --go-ttrpc_out=paths=source_relative:. agent.proto

clean: ## remove build outputs
	rm -rf $(BIN)
