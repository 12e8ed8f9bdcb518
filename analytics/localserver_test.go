package analytics

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A server started on a directory another instance still holds waits for it
// to go, as after notifyd restarts right after a crash.
func TestStartLocalWaitsForPreviousInstance(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	first, err := StartLocal(ctx, dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan *LocalServer, 1)
	failed := make(chan error, 1)
	go func() {
		s, err := StartLocal(ctx, dir, 0)
		if err != nil {
			failed <- err
			return
		}
		started <- s
	}()
	select {
	case <-started:
		t.Fatal("a second server started on a directory the first still holds")
	case err := <-failed:
		t.Fatalf("second start failed instead of waiting: %v", err)
	case <-time.After(1500 * time.Millisecond):
	}
	_ = first.Stop()
	select {
	case s := <-started:
		defer s.Stop()
		conn, err := Open(s.Addr, "default", "")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := conn.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	case err := <-failed:
		t.Fatalf("second start failed: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("second server never started after the first stopped")
	}
}

// The error of a machine without ClickHouse tells the operator what to install.
func TestServerNotInstalledNamesThePackage(t *testing.T) {
	msg := ErrServerNotInstalled.Error()
	for _, want := range []string{"apt-get install clickhouse-server", "analytics.addr"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q does not say %q", msg, want)
		}
	}
}

// The local server yields the CPU to the pipeline: every one of its threads
// runs at LocalNice.
func TestLocalServerRunsBelowNotifydPriority(t *testing.T) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", server.cmd.Process.Pid))
	if err != nil || len(tasks) < 2 {
		t.Fatalf("threads of clickhouse-server: %v %v", tasks, err)
	}
	for _, task := range tasks {
		stat, err := os.ReadFile(task)
		if err != nil {
			continue // the thread ended
		}
		// Fields after the parenthesised command name start at field 3 (state);
		// nice is field 19.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) < 17 || fields[16] != strconv.Itoa(LocalNice) {
			t.Fatalf("%s: nice %v, want %d", task, fields[16:17], LocalNice)
		}
	}
}
