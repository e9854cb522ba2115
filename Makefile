# SIPEdge: two commands for people (`make run`, `make test`), and targets for benchmarks and fuzzing.
SWIFT ?= swift
CONFIG ?= conf/sipedge.toml
SECONDS ?= 600

.PHONY: run build test deps bench bench-parser bench-transport bench-calls bench-dialogs bench-cluster bench-recovery fuzz clean

run: build
	.build/release/sipedge run --config $(CONFIG)

build:
	scripts/install-deps.sh build
	$(SWIFT) build -c release --product sipedge

deps:
	scripts/install-deps.sh test

test: deps
	$(SWIFT) build --build-tests
	SWIFT=$(SWIFT) scripts/run-tests.sh
	Models/check.sh

bench: bench-parser bench-transport bench-calls bench-dialogs bench-cluster bench-recovery

bench-parser:
	scripts/install-deps.sh bench
	Benchmarks/parser-bench.sh

bench-transport:
	scripts/install-deps.sh bench
	Benchmarks/transport-bench.sh

# SIPEdge against Kamailio 5.6 (tm, rr, dialog, topoh), complete calls from SIPp, both proxies in one run.
bench-calls:
	Benchmarks/calls-bench.sh

# Resident memory per established dialog, 100,000 of them.
bench-dialogs:
	Benchmarks/dialogs-bench.sh

# What the cluster costs (CPU per call with two replicas), a 100,000-dialog sync, and failure detection.
bench-cluster:
	Benchmarks/cluster-bench.sh

# Calls moved off a killed Asterisk onto another (1,000 of them): detection and the move.
bench-recovery:
	Benchmarks/recovery-bench.sh

# libFuzzer over parse + typed access + serialize, seeded from ../shared/corpus: make fuzz SECONDS=600
fuzz:
	Fuzz/run.sh $(SECONDS)

clean:
	rm -rf .build Benchmarks/.build .build-fuzz
