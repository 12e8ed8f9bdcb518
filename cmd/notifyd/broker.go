package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"

	"github.com/notifyd/notifyd/service"
	"github.com/notifyd/notifyd/topology"
)

// runBroker runs the embedded Kafka-protocol broker alone, with every notifyd
// topic created, until ctx ends: the roles (process, sink, api) then run as
// separate processes with --brokers pointing at it. Once the topics exist it
// prints "broker listening on ADDR" to stdout, the line scripts and tests wait for.
func runBroker(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("broker", flag.ContinueOnError)
	port := fs.Int("port", 0, "listen port on 127.0.0.1 (default kafka.embeddedPort)")
	partitions := fs.Int("partitions", 0, "partitions of every topic (default kafka.partitions)")
	cfg, err := loadConfig(fs, args)
	if err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["brokers"] {
		return errors.New("broker: --brokers does not apply; the broker command runs the embedded broker")
	}
	if set["port"] {
		if *port < 0 || *port > 65535 {
			return fmt.Errorf("broker: --port must be 0 (any free port) to 65535, got %d", *port)
		}
		cfg.Kafka.EmbeddedPort = *port
	}
	if set["partitions"] {
		if *partitions < 1 {
			return fmt.Errorf("broker: --partitions must be >= 1, got %d", *partitions)
		}
		cfg.Kafka.Partitions = *partitions
	}
	log := newLogger(cfg.LogLevel)
	if err := privateDataDir(cfg.DataDir, log); err != nil {
		return err
	}

	cluster, err := service.StartBroker(cfg.DataDir, cfg.Kafka.EmbeddedPort)
	if err != nil {
		return err
	}
	defer cluster.Close() // persists the broker's state under dataDir/kafka
	addrs := cluster.ListenAddrs()
	err = topology.CreateTopics(ctx, addrs, cfg.Kafka.Partitions, cfg.Kafka.Replication,
		topology.RetryTopics(cfg.Sink.Retry.Tiers)...)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return fmt.Errorf("broker: %w", err)
	}
	log.Info("embedded Kafka broker ready", "addr", addrs[0], "dataDir", filepath.Join(cfg.DataDir, "kafka"),
		"partitions", cfg.Kafka.Partitions)
	fmt.Fprintf(stdout, "broker listening on %s\n", addrs[0])
	<-ctx.Done()
	log.Info("embedded Kafka broker stopping")
	return nil
}
