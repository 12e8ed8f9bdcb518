package analytics

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// One real clickhouse-server for the package's tests; each test gets its own database.
var server *LocalServer

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "notifyd-clickhouse-")
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	server, err = StartLocal(ctx, dir, 0)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "analytics tests need clickhouse-server:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = server.Stop()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

var dbSeq atomic.Int32

func testDB(t *testing.T) (driver.Conn, string) {
	t.Helper()
	conn, err := Open(server.Addr, "default", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, fmt.Sprintf("t%d_%d", os.Getpid(), dbSeq.Add(1))
}
