// Command notifyd is the notification service: `notifyd run` is the all-in-one
// process; api, process and sink are the roles of a scaled-out deployment;
// bench drives load through an all-in-one instance.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/notifyd/notifyd/analytics"
	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/service"
	"github.com/notifyd/notifyd/sinks"
	"github.com/notifyd/notifyd/topology"
)

const usage = `usage: notifyd <command> [flags]

commands:
  run                 all-in-one: embedded broker (unless --brokers), every group, every sink, the API
  api                 the HTTP API role
  process             the goka groups (dedup, deliver, status)
  sink --channel=C    the sink of channel C (repeat the flag or comma-separate for several)
  analytics           the ClickHouse sink (needs analytics.addr)
  broker              the embedded Kafka broker alone, every topic created (--port, --partitions), for the roles to use
  migrate             create or upgrade the ClickHouse schema at analytics.addr, load prices, and exit
  report KIND         print an analytics report (summary, latency, reconciliation) as a table or CSV
  bench               drive notifications through an in-process all-in-one instance and report figures
  dlq list|replay     show the dead letters of notify.dlq; re-inject them into their topics, each once
  keys generate|rewrap  print a new master key; rewrap tenant keys under the current master key (rotation)

common flags: --config FILE, --data-dir DIR, --brokers host:port[,…], --http ADDR
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	privateUmask()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch cmd {
	case "run", "api", "process", "sink", "analytics":
		err = runRole(ctx, cmd, args)
	case "migrate":
		err = runMigrate(ctx, args)
	case "report":
		err = runReport(ctx, args, os.Stdout)
	case "bench":
		err = runBench(ctx, args)
	case "broker":
		err = runBroker(ctx, args, os.Stdout)
	case "dlq":
		if err = runDLQ(ctx, args, os.Stdout); errors.As(err, new(usageError)) {
			fmt.Fprint(os.Stderr, err)
			os.Exit(2)
		}
	case "keys":
		if err = runKeys(ctx, args, os.Stdout); errors.As(err, new(usageError)) {
			fmt.Fprint(os.Stderr, err)
			os.Exit(2)
		}
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "notifyd: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "notifyd:", err)
		os.Exit(1)
	}
}

type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// loadConfig parses the common flags and returns the configuration they name.
func loadConfig(fs *flag.FlagSet, args []string) (config.Config, error) {
	path := fs.String("config", "", "YAML configuration file")
	dataDir := fs.String("data-dir", "", "data directory (default ./data)")
	httpAddr := fs.String("http", "", "API listen address (default :8080)")
	var brokers listFlag
	fs.Var(&brokers, "brokers", "Kafka brokers; none = run the embedded broker")
	if err := fs.Parse(args); err != nil {
		return config.Config{}, err
	}
	cfg, err := config.Load(*path, os.Getenv)
	if err != nil {
		return cfg, err
	}
	// Every provider's own section, checked by its type (sinks registry).
	if err := sinks.Check(cfg); err != nil {
		return cfg, err
	}
	if *dataDir != "" {
		cfg.DataDir = *dataDir
	}
	if *httpAddr != "" {
		cfg.HTTP.Addr = *httpAddr
	}
	if len(brokers) > 0 {
		cfg.Kafka.Brokers = brokers
	}
	// TLS and SASL apply to external brokers; the embedded one is plaintext
	// on loopback.
	if len(cfg.Kafka.Brokers) > 0 {
		if err := topology.SetSecurity(cfg.Kafka.Security); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

func runRole(ctx context.Context, role string, args []string) error {
	fs := flag.NewFlagSet(role, flag.ContinueOnError)
	var channels listFlag
	if role == "sink" {
		fs.Var(&channels, "channel", "channel whose sink to run (repeatable)")
	}
	cfg, err := loadConfig(fs, args)
	if err != nil {
		return err
	}
	log := newLogger(cfg.LogLevel)
	slog.SetDefault(log)
	service.SetKafkaClientLogger(log)
	if err := privateDataDir(cfg.DataDir, log); err != nil {
		return err
	}
	var roles service.Roles
	switch role {
	case "run":
		roles = service.AllInOne
	case "api":
		roles = service.Roles{API: true}
	case "process":
		roles = service.Roles{Process: true}
	case "sink":
		if len(channels) == 0 {
			return errors.New("sink: --channel is required")
		}
		roles = service.Roles{Sinks: channels}
	case "analytics":
		roles = service.Roles{Analytics: true}
	}
	if role != "run" && len(cfg.Kafka.Brokers) == 0 {
		return fmt.Errorf("%s: --brokers (or kafka.brokers) is required outside `notifyd run`", role)
	}
	if role == "run" || role == "api" {
		path, err := cfg.EnsureAPIKey()
		if err != nil {
			return err
		}
		if path != "" {
			log.Warn("no API key configured; using the generated key in the file (every scope, default tenant)", "file", path)
		}
	}
	svc := &service.Service{Cfg: cfg, Roles: roles, Log: log}
	return svc.Run(ctx)
}

func runMigrate(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	cfg, err := loadConfig(fs, args)
	if err != nil {
		return err
	}
	a := cfg.Analytics
	if a.Addr == "" {
		return errors.New("migrate: analytics.addr (or NOTIFYD_ANALYTICS_ADDR) is required; `notifyd run` migrates its local ClickHouse itself")
	}
	conn, err := analytics.Open(a.Addr, a.User, a.Password)
	if err != nil {
		return err
	}
	defer conn.Close()
	applied, err := analytics.Migrate(ctx, conn, a.Database)
	if err != nil {
		return err
	}
	prices := analytics.PricesFromConfig(a.Prices)
	if err := analytics.LoadPrices(ctx, conn, a.Database, prices); err != nil {
		return err
	}
	if len(applied) == 0 {
		fmt.Printf("schema of %s at %s is current (version %d)\n", a.Database, a.Addr, analytics.SchemaVersion())
	} else {
		fmt.Printf("applied migrations %v to %s at %s\n", applied, a.Database, a.Addr)
	}
	fmt.Printf("loaded %d prices\n", len(prices))
	return nil
}
