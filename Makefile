# goiscsi: build, test and CI entry points. `make test` is what .ci/run runs.

GO ?= go
FUZZTIME ?= 60s
# Fuzz targets in ./fuzz, run one after the other by `make fuzz`; override to
# run a subset, e.g. make fuzz FUZZ_TARGETS=FuzzText FUZZTIME=10s
FUZZ_TARGETS ?= $(shell $(GO) test -list '^Fuzz' ./fuzz/ | grep '^Fuzz')

# The real peers the tests run (see internal/peers), and their packages.
PEER_BINS := tgtd tgtadm iscsi-inq iscsi-perf iscsi-ls tshark istgt
PEER_PKGS := tgt libiscsi-bin tshark istgt
# LIO, the kernel target, runs in a qemu VM (scripts/lio-vm); its kernel and
# busybox are fetched once with apt-get download into LIO_CACHE.
LIO_CACHE ?= /tmp/lio-vm-cache
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps test demo fuzz soak bench bench-go lint

all: lint test

# Install the peers if any is missing (tgtd and tgtadm live in /usr/sbin,
# which may not be on a user's PATH).
deps:
	@missing=""; \
	for b in $(PEER_BINS); do \
		command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || missing="$$missing $$b"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "deps: missing:$$missing; installing $(PEER_PKGS)"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $(PEER_PKGS); \
	else \
		echo "deps: peers present ($(PEER_BINS))"; \
	fi
	@if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then \
		echo "deps: installing qemu-system-x86 for the LIO VM"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends qemu-system-x86; \
	fi
	@LIO_CACHE=$(LIO_CACHE) LIO_PREPARE_ONLY=1 scripts/lio-vm/run-lio-vm.sh >/dev/null || \
		{ echo "deps: preparing the LIO VM cache failed" >&2; exit 1; }

test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 30m ./...
	# Allocation counts need the real sync.Pool, which -race empties at random.
	$(GO) test -count=1 -run 'NoAllocs' ./bench/ ./internal/sockio/

demo:
	$(GO) run ./cmd/iscsictl demo

fuzz:
	@set -e; \
	if [ -z "$(strip $(FUZZ_TARGETS))" ]; then echo "fuzz: no fuzz targets found in ./fuzz"; exit 1; fi; \
	for t in $(FUZZ_TARGETS); do \
		echo "fuzz: $$t for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) -timeout 0 ./fuzz/; \
	done

# The long forms of the reliability tests: 10,000 login/I/O/logout cycles
# against tgtd and the in-memory target with goroutines, fds and heap
# sampled, and 1,000 rounds of writes racing logouts read back byte for byte.
soak: deps
	SOAK=1 $(GO) test -race -count=1 -timeout 30m -run 'Soak|NoDataLoss' -v ./reliability/

# The side-by-side harness (bench/README.md): libiscsi's iscsi-perf against
# iscsictl perf on a private tgtd, the in-memory target against raw loopback
# TCP, LogoutFromTarget at scale, memory per idle session and the
# micro-benchmarks; about 15 minutes on 2 cores. BENCHFLAGS passes harness
# flags (e.g. BENCHFLAGS="-sections logout -rounds 5").
BENCHFLAGS ?=
bench: deps
	$(GO) run ./bench/harness -o bench/last-run.md $(BENCHFLAGS)

# Every Go benchmark of the module, with allocations.
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./...

lint:
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt -l: files need formatting:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
