GO ?= go

.PHONY: run test build vet fuzz bench clean clickhouse

# The all-in-one service on its embedded defaults: API on :8080, Kafka broker on
# 127.0.0.1:9092, ClickHouse (analytics) on 127.0.0.1:19000, state under ./data.
run: clickhouse
	$(GO) run ./cmd/notifyd run --config notifyd.dev.yaml

# Debian's clickhouse-server, for analytics (run) and its tests (test).
clickhouse:
	@command -v clickhouse-server >/dev/null || [ -x /usr/sbin/clickhouse-server ] || { \
	  echo "installing clickhouse-server (Debian) for analytics"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server clickhouse-client; }

# Everything CI runs. The chaos tests (separate OS processes killed at crash
# points) run after the rest, not beside the service's: on two cores they
# starved the service's timing-sensitive tests, and one after the other takes
# about as long. They run without the race detector: what they test runs in
# the role processes, binaries built without it, and in the test process it
# only slowed the harness (its SMTP server takes every message) and took CPU
# from the roles.
test: clickhouse vet
	$(GO) test -race -count=1 -timeout 14m -skip '^TestChaos' ./...
	$(GO) test -count=1 -timeout 14m -run '^TestChaos' ./cmd/notifyd

vet:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

build:
	$(GO) build -buildvcs=auto -o bin/notifyd ./cmd/notifyd

# Short runs of every fuzz target (FUZZTIME=30s each by default). The
# FuzzCodec* targets (typed Avro codecs against goavro) run many decodes per
# input, so they cap minimizing a new input to leave the time to fuzzing.
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./schemas -run '^$$' -fuzz FuzzDecodeSendRequest -fuzztime $(FUZZTIME)
	$(GO) test ./api -run '^$$' -fuzz FuzzSendBody -fuzztime $(FUZZTIME)
	$(GO) test ./processors -run '^$$' -fuzz FuzzParseData -fuzztime $(FUZZTIME)
	$(GO) test ./processors -run '^$$' -fuzz FuzzRender -fuzztime $(FUZZTIME)
	$(GO) test ./config -run '^$$' -fuzz FuzzLoad -fuzztime $(FUZZTIME)
	$(GO) test ./processors -run '^$$' -fuzz FuzzInboxCommand -fuzztime $(FUZZTIME)
	$(GO) test ./processors -run '^$$' -fuzz FuzzRedact -fuzztime $(FUZZTIME)
	$(GO) test ./schemas -run '^$$' -fuzz FuzzTenantKey -fuzztime $(FUZZTIME)
	$(GO) test ./schemas -run '^$$' -fuzz '^FuzzCodecNotification$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 3s
	$(GO) test ./schemas -run '^$$' -fuzz '^FuzzCodecStatusEvent$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 3s
	$(GO) test ./schemas -run '^$$' -fuzz '^FuzzCodecSendRequest$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 3s
	$(GO) test ./schemas -run '^$$' -fuzz '^FuzzCodecUserState$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 3s
	$(GO) test ./schemas -run '^$$' -fuzz '^FuzzCodecLifecycle$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 3s
	$(GO) test ./schemas -run '^$$' -fuzz '^FuzzCodecLedgerEntry$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 3s
	$(GO) test ./schemas -run '^$$' -fuzz '^FuzzCodecDedupEntry$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 3s
	$(GO) test ./schemas -run '^$$' -fuzz '^FuzzCodecOthers$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 3s
	$(GO) test ./tracking -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./tracking -run '^$$' -fuzz FuzzParseAuthenticated -fuzztime $(FUZZTIME)
	for f in $$(grep -ho '^func Fuzz[A-Za-z]*' sinks/*_test.go | sed 's/func //'); do \
	  $(GO) test ./sinks -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) || exit 1; done

# End-to-end throughput and latency on this machine (docs/PERFORMANCE.md).
bench: build
	./bin/notifyd bench

clean:
	rm -rf bin data
