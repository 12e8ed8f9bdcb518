package service

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"github.com/lovoo/goka"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/crypt"
	"github.com/notifyd/notifyd/topology"
)

// masterKeys are the configured master keys. Without any, the all-in-one
// mode (embedded broker) generates one once under the data directory; a role
// against external brokers must be given the same keys as every other
// process, so it refuses to start without them.
func masterKeys(cfg config.Config) (crypt.MasterKeys, error) {
	spec := strings.TrimSpace(cfg.Encryption.MasterKeys)
	if spec == "" {
		if len(cfg.Kafka.Brokers) > 0 {
			return crypt.MasterKeys{}, errors.New("encryption.masterKeys (or NOTIFYD_MASTER_KEYS) is required with external brokers: " +
				"every process must wrap personal data keys with the same master key; generate one with `notifyd keys generate`")
		}
		var err error
		if spec, err = localMasterKey(cfg.DataDir); err != nil {
			return crypt.MasterKeys{}, err
		}
	}
	mk, err := crypt.ParseMasterKeys(spec)
	if err != nil {
		return crypt.MasterKeys{}, fmt.Errorf("encryption.masterKeys: %w", err)
	}
	return mk, nil
}

// NewMasterKeySpec is a fresh master key in the masterKeys format, named id.
func NewMasterKeySpec(id string) (string, error) {
	b := make([]byte, crypt.KeySize)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	spec := id + ":" + base64.StdEncoding.EncodeToString(b)
	if _, err := crypt.ParseMasterKeys(spec); err != nil { // the id must be one the configuration accepts
		return "", err
	}
	return spec, nil
}

// localMasterKey reads dataDir/master.key, creating it (0600) on first use.
func localMasterKey(dataDir string) (string, error) {
	path := filepath.Join(dataDir, "master.key")
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("master key: %w", err)
	}
	spec, err := NewMasterKeySpec("local1")
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", fmt.Errorf("master key: %w", err)
	}
	if err := os.WriteFile(path, []byte(spec+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("master key: %w", err)
	}
	return spec, nil
}

// startKeyring runs the view of notify.datakeys and the keyring over it.
func (s *Service) startKeyring(ctx context.Context, g *errgroup.Group, kafka topology.Kafka, producer *kgo.Client) (*crypt.Keyring, func(context.Context) error, error) {
	mk, err := masterKeys(s.Cfg)
	if err != nil {
		return nil, nil, err
	}
	filter, opt := kafka.PrefixFilteredStorage("datakeys", crypt.RecordPrefix)
	v, err := s.startView(ctx, g, kafka, "datakeys", topology.DataKeys, crypt.TableCodec(), opt)
	if err != nil {
		return nil, nil, err
	}
	return crypt.New(mk, filteredKeyView{v, filter}, producer, s.Log), viewReady(v), nil
}

// filteredKeyView is the view of notify.datakeys with the filter of its
// owners' prefixes: the keyring skips the scan for a user without keys.
type filteredKeyView struct {
	*goka.View
	*topology.PrefixFilter
}

// The keyring trusts a key it read until the view changes its record.
var _ crypt.WatchedView = filteredKeyView{}

// RewrapKeys rewraps every tenant key under the current master key (the
// first of encryption.masterKeys), the step of a master key rotation that
// lets the old master key be removed afterwards. It needs the brokers of a
// running deployment (or the embedded broker's address) and returns the
// number of tenant keys rewrapped.
func RewrapKeys(ctx context.Context, cfg config.Config, brokers []string) (int, error) {
	if strings.TrimSpace(cfg.Encryption.MasterKeys) == "" {
		return 0, errors.New("keys rewrap: encryption.masterKeys (or NOTIFYD_MASTER_KEYS) is required: the new master key first, then the old ones")
	}
	cfg.Kafka.Brokers = brokers
	mk, err := masterKeys(cfg)
	if err != nil {
		return 0, err
	}
	producer, err := topology.NewProducer(brokers)
	if err != nil {
		return 0, err
	}
	defer producer.Close()
	kafka := topology.Kafka{Brokers: brokers, Replication: cfg.Kafka.Replication}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	s := &Service{Cfg: cfg, Log: slog.Default()}
	v, err := s.startView(gctx, g, kafka, "datakeys-rewrap", topology.DataKeys, crypt.TableCodec())
	if err != nil {
		return 0, err
	}
	if err := viewReady(v)(gctx); err != nil {
		return 0, fmt.Errorf("keys rewrap: %w", err)
	}
	n, err := crypt.New(mk, v, producer, nil).Rewrap(gctx)
	cancel()
	_ = g.Wait()
	return n, err
}

// Keyring is the process's keyring of personal data (nil before Run).
func (s *Service) Keyring() *crypt.Keyring {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keys
}
