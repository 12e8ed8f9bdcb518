package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/notifyd/notifyd/api"
	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/topology"
	"github.com/notifyd/notifyd/tracking"
)

// inboxAPI is the API's side of the in-app inbox: the feeds it reads and the
// hub of open streams, fed by a reader of notify.inbox.events.
type inboxAPI struct {
	api   *api.Inbox
	feeds *statusTable
}

// view is the feeds' view when this process runs no inbox group.
func (i *inboxAPI) view() *goka.View {
	if i.feeds.proc != nil {
		return nil
	}
	v, _ := i.feeds.ensureView()
	return v
}

func (s *Service) startInbox(ctx context.Context, g *errgroup.Group, kafka topology.Kafka, producer *kgo.Client) (*inboxAPI, error) {
	cfg := s.Cfg.Inbox
	secret, err := localSecret(cfg.Secret, s.Cfg.DataDir, "inbox.secret")
	if err != nil {
		return nil, err
	}
	adm := kadm.NewClient(producer)
	table := string(goka.GroupTable(topology.InboxGroup))
	feeds := &statusTable{proc: s.inboxProc, start: func() (*goka.View, error) {
		return s.startView(ctx, g, kafka, "api-inbox", goka.GroupTable(topology.InboxGroup), topology.InboxFeedTableCodec())
	}, sync: func(v *goka.View) *syncedView {
		return &syncedView{View: v, adm: adm, topic: table, partitions: s.Cfg.Kafka.Partitions}
	}}
	if s.inboxProc == nil {
		if _, err := feeds.ensureView(); err != nil {
			return nil, err
		}
	}
	hub := &api.InboxHub{MaxStreams: cfg.MaxStreams}
	// Every instance reads every inbox event, from the end: a stream opened
	// here reads what it missed from the feed, then follows from the hub.
	cl, err := topology.NewClient(kafka.Brokers, kgo.ConsumeTopics(string(topology.InboxEvents)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtEnd()), kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		return nil, fmt.Errorf("inbox events: %w", err)
	}
	g.Go(func() error {
		defer cl.Close()
		for {
			fs := cl.PollFetches(ctx)
			if ctx.Err() != nil {
				return nil
			}
			fs.EachError(func(t string, p int32, err error) {
				s.Log.Warn("inbox events", "topic", t, "partition", p, "err", err)
			})
			fs.EachRecord(hub.PublishRecord)
		}
	})
	return &inboxAPI{feeds: feeds, api: &api.Inbox{Feeds: feeds, Sync: feeds.Sync, Hub: hub, Secret: secret,
		AllowedOrigins: cfg.AllowedOrigins, Heartbeat: cfg.Heartbeat, Capacity: cfg.MaxMessages}}, nil
}

// localSecret is the configured secret, or one generated once and kept in
// dataDir/file (0600): enough for one instance; several need it configured.
func localSecret(configured, dataDir, file string) ([]byte, error) {
	if configured != "" {
		return []byte(configured), nil
	}
	path := filepath.Join(dataDir, file)
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) >= 32 {
		return []byte(strings.TrimSpace(string(b))), nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return nil, err
	}
	secret := hex.EncodeToString(buf)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return []byte(secret), nil
}

// tracker signs and verifies email tracking links (nil when tracking.baseUrl
// is not set).
func tracker(cfg config.Config) (*tracking.Signer, error) {
	if cfg.Tracking.BaseURL == "" {
		return nil, nil
	}
	secret, err := localSecret(cfg.Tracking.Secret, cfg.DataDir, "tracking.secret")
	if err != nil {
		return nil, err
	}
	legacyUntil, err := cfg.Tracking.LegacyDeadline(cfg.DataDir, time.Now())
	if err != nil {
		return nil, fmt.Errorf("tracking: %w", err)
	}
	t, err := tracking.NewSigner(cfg.Tracking.BaseURL, secret, tracking.AcceptLegacyUntil(legacyUntil))
	if err != nil {
		return nil, fmt.Errorf("tracking: %w", err)
	}
	return t, nil
}
