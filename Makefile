# The README's commands work without make; these are shortcuts.
.DEFAULT_GOAL := help
.PHONY: help run test race fuzz vet ci bench build

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

run: ## run the worker on the embedded defaults with the vendor simulators
	go run ./cmd/pamworker --sandbox

build: ## build ./pamworker
	CGO_ENABLED=0 go build -trimpath -o pamworker ./cmd/pamworker

test: ## run the tests
	go test ./...

race: ## run the tests with the race detector
	go test -race ./...

fuzz: ## fuzz the event decoder and the URL builder for 30s each
	go test -run '^$$' -fuzz FuzzDecode -fuzztime 30s ./events/
	go test -run '^$$' -fuzz FuzzEndpoint -fuzztime 30s ./handlers/segura/

vet: ## gofmt and go vet
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	go vet ./...

ci: ## what CI runs
	bash .ci/run

bench: ## throughput and latency against a minimal baseline worker
	go run ./bench
