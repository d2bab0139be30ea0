# Solstice CI — see README.md. Every target works on a fresh clone.
GO        ?= go
BIN       ?= bin
FUZZTIME  ?= 30s
# Guest OS/arch pairs solstice-runner is built for.
AGENT_TARGETS := linux/amd64 linux/arm64 illumos/amd64 freebsd/amd64
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)

.PHONY: all build agents test test-short demo fuzz bench vet fmt clean

all: build

## agents: static solstice-runner for every guest OS/arch into $(BIN)/agents
agents:
	@mkdir -p $(BIN)/agents
	@set -e; for t in $(AGENT_TARGETS); do \
		os=$${t%/*}; arch=$${t#*/}; out=$(BIN)/agents/solstice-runner-$$os-$$arch; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $$out ./cmd/solstice-runner; \
		echo "$$out $$(wc -c < $$out) bytes"; \
	done

## build: the solstice binary (with the agents embedded) and the agents
build: agents
	@mkdir -p internal/agentbin/bin
	cp $(BIN)/agents/solstice-runner-* internal/agentbin/bin/
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/solstice ./cmd/solstice

## test: every test of the project (real PostgreSQL, RabbitMQ and VM tests included)
test: build
	$(GO) vet ./...
	CI=$${CI:-true} $(GO) test -count=1 -timeout 45m ./...
	# Restarts the machine's RabbitMQ and PostgreSQL: alone, after the rest.
	CI=$${CI:-true} SOLSTICE_TEST_RESTART_SERVICES=1 $(GO) test -count=1 -run TestCrashServicesRestart ./internal/orchestrator/

## test-short: unit tests only (no VM, no services)
test-short:
	$(GO) test -short -count=1 ./...

## demo: the main job — run the example workflow in a VM with solstice exec
demo: build
	./scripts/demo.sh

## fuzz: run every fuzz target for FUZZTIME
fuzz:
	./scripts/fuzz.sh $(FUZZTIME)

## bench: the benchmarks recorded in docs/benchmarks.md
bench: build
	$(GO) test -run '^$$' -bench . -benchmem ./...

vet:
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN) internal/agentbin/bin/solstice-runner-*
