package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/notifyd/notifyd/service"
)

const keysUsage = `notifyd keys — master keys of the personal-data encryption

  notifyd keys generate [--id ID]
      print a new master key as ID:BASE64, the format of encryption.masterKeys
      and NOTIFYD_MASTER_KEYS

  notifyd keys rewrap --brokers HOST:PORT [--config FILE]
      rewrap every tenant key under the current master key (the first one of
      encryption.masterKeys / NOTIFYD_MASTER_KEYS). A master key rotation:
        1. generate a new key; configure "new:…,old:…" on every process and
           restart them one by one (both keys open data, the new one wraps);
        2. run keys rewrap;
        3. configure "new:…" alone and restart again.
`

// runKeys is `notifyd keys generate|rewrap`.
func runKeys(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 {
		return usageError(keysUsage)
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "generate":
		fs := flag.NewFlagSet("keys generate", flag.ContinueOnError)
		id := fs.String("id", "m1", "the key's id: letters, digits, . _ -")
		if err := fs.Parse(args); err != nil {
			return err
		}
		spec, err := service.NewMasterKeySpec(*id)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, spec)
		return nil
	case "rewrap":
		fs := flag.NewFlagSet("keys rewrap", flag.ContinueOnError)
		cfg, err := loadConfig(fs, args)
		if err != nil {
			return err
		}
		if len(cfg.Kafka.Brokers) == 0 {
			return fmt.Errorf("keys rewrap: --brokers (or kafka.brokers) is required; an all-in-one `notifyd run` listens on 127.0.0.1:%d (kafka.embeddedPort)",
				cfg.Kafka.EmbeddedPort)
		}
		n, err := service.RewrapKeys(ctx, cfg, cfg.Kafka.Brokers)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "rewrapped %d tenant keys\n", n)
		return nil
	}
	return usageError(fmt.Sprintf("notifyd keys: unknown command %q\n\n%s", cmd, keysUsage))
}
