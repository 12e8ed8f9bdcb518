package topology

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// deadOnSecondJoin is the network of a group member killed -9 while its
// JoinGroup waits in the broker: once the request that carries its member id
// is written, its connections close and it never dials again.
type deadOnSecondJoin struct {
	mu    sync.Mutex
	conns []net.Conn
	dead  atomic.Bool
	joins atomic.Int32
}

func (k *deadOnSecondJoin) dial(ctx context.Context, network, host string) (net.Conn, error) {
	if k.dead.Load() {
		return nil, errors.New("the process is dead")
	}
	c, err := (&net.Dialer{}).DialContext(ctx, network, host)
	if err == nil {
		k.mu.Lock()
		k.conns = append(k.conns, c)
		k.mu.Unlock()
	}
	return c, err
}

func (k *deadOnSecondJoin) OnBrokerWrite(_ kgo.BrokerMetadata, key int16, _ int, _, _ time.Duration, err error) {
	if key == 11 && err == nil && k.joins.Add(1) == 2 { // 11: JoinGroup
		k.dead.Store(true)
		k.mu.Lock()
		for _, c := range k.conns {
			_ = c.Close()
		}
		k.mu.Unlock()
	}
}

// A member that dies while its JoinGroup waits for the rebalance never reads
// the reply. The embedded broker (kfake, patched in third_party/kfake) used
// to start a member's session timer only when a reply reached it, so that
// member stayed in the group for good with the partitions the leader gave
// it, and nothing consumed them: a sink killed during a rebalance left a
// quarter of a campaign undelivered behind a live sink. Now its session
// expires and the survivor takes its partitions. The reply is lost only
// when the broker sees the closed connection first (about half the time),
// so eight groups try at once.
func TestBrokerExpiresAMemberThatDiedWaitingForItsJoin(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, "deadjoin"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const groups, session = 8, 6 * time.Second
	var wg sync.WaitGroup
	errs := make(chan error, groups)
	for i := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- deadJoinRound(c.ListenAddrs(), fmt.Sprintf("deadjoin-%d", i), session)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// deadJoinRound: A consumes all four partitions; B joins and dies waiting
// (the eager balancer: A's own rejoin completes the rebalance, with no second
// round that would drop B on its own); within three session timeouts the
// group is A alone, with every partition.
func deadJoinRound(brokers []string, group string, session time.Duration) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts := []kgo.Opt{kgo.SeedBrokers(brokers...), kgo.ConsumerGroup(group), kgo.ConsumeTopics("deadjoin"),
		kgo.Balancers(kgo.RangeBalancer()), kgo.SessionTimeout(session), kgo.HeartbeatInterval(300 * time.Millisecond),
		kgo.RebalanceTimeout(30 * time.Second)}
	a, err := kgo.NewClient(opts...)
	if err != nil {
		return err
	}
	defer a.Close()
	go func() {
		for ctx.Err() == nil {
			a.PollFetches(ctx)
		}
	}()
	adm := kadm.NewClient(a)
	members := func() (string, []string, int) {
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		defer dcancel()
		gs, err := adm.DescribeGroups(dctx, group)
		if err != nil {
			return err.Error(), nil, 0
		}
		g := gs[group]
		var ids []string
		parts := 0
		for _, m := range g.Members {
			ids = append(ids, m.MemberID)
			if ca, ok := m.Assigned.AsConsumer(); ok && len(g.Members) == 1 {
				for _, t := range ca.Topics {
					parts += len(t.Partitions)
				}
			}
		}
		return g.State, ids, parts
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if state, ids, parts := members(); state == "Stable" && len(ids) == 1 && parts == 4 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: the first member never owned the topic", group)
		}
	}
	k := &deadOnSecondJoin{}
	b, err := kgo.NewClient(append(opts, kgo.Dialer(k.dial), kgo.WithHooks(k))...)
	if err != nil {
		return err
	}
	defer b.Close() // its LeaveGroup cannot go out: the process is dead
	go func() {
		for ctx.Err() == nil {
			b.PollFetches(ctx)
		}
	}()
	var state string
	var ids []string
	var parts int
	for deadline := time.Now().Add(3 * session); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		state, ids, parts = members()
		if k.dead.Load() && state == "Stable" && len(ids) == 1 && parts == 4 {
			return nil
		}
	}
	return fmt.Errorf("%s: %s after the second member died in its join (dead: %v): members %v, the survivor's partitions %d",
		group, 3*session, k.dead.Load(), ids, parts)
}
