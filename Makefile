# The two commands of the README:
#   go run ./examples/orders    the example consumer service, end to end
#   make test                   the whole test suite
# Both use the local PostgreSQL and RabbitMQ, or INBOX_POSTGRES_URL and
# INBOX_AMQP_URL when set.

GO ?= go
# The local services unless the environment names others; set here so the
# inboxtest module's tests use them too instead of starting containers.
export INBOX_POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/test?sslmode=disable
export INBOX_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/
MODULES := . $(wildcard inboxtest bench dashboard/browsertest)
# Only test-restarts may restart the services: never while other tests run.
unexport FAULTS_RESTARTS

.PHONY: test test-parallel test-restarts vet build

# The whole suite: the tests, packages in parallel, then the fault suite's
# server restarts alone.
test: test-parallel
	@$(MAKE) --no-print-directory test-restarts

test-parallel: vet
	@for m in $(MODULES); do \
		echo "== go test $$m"; \
		(cd $$m && $(GO) test -race -count=1 -timeout 8m ./...) || exit 1; \
	done

# The fault suite's cases that restart PostgreSQL and RabbitMQ (see
# docs/faults.md). Whatever they end with, both services are left up.
# Where the services are not this machine's own (containers on a laptop,
# say) and no restart commands are given, it says so and skips; under CI it
# always runs.
test-restarts:
	@if [ -z "$$CI$$FAULTS_POSTGRES_RESTART$$FAULTS_RABBITMQ_RESTART" ] && \
		! { command -v pg_ctlcluster && command -v rabbitmqctl; } >/dev/null 2>&1; then \
		echo "== server restarts skipped: no pg_ctlcluster or rabbitmqctl here; set FAULTS_POSTGRES_RESTART and FAULTS_RABBITMQ_RESTART to run them (docs/faults.md)"; \
		exit 0; \
	fi
	@echo "== go test ./faults/ (server restarts, serial)"
	@cd faults && FAULTS_RESTARTS=1 $(GO) test -race -count=1 -timeout 8m -run '^TestRestart' . ; \
		status=$$?; ../.ci/services-up || status=1; exit $$status

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	@for m in $(MODULES); do (cd $$m && $(GO) vet ./...) || exit 1; done

build:
	@for m in $(MODULES); do (cd $$m && $(GO) build ./...) || exit 1; done
