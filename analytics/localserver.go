// Package analytics owns notifyd's ClickHouse side: the schema and its
// migrations, the report queries, and the local clickhouse-server the
// all-in-one mode (and the tests) run as a child process.
package analytics

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
)

// ErrServerNotInstalled means no clickhouse-server binary was found.
var ErrServerNotInstalled = errors.New("clickhouse-server not found on PATH (nor in /usr/sbin, /usr/bin): " +
	"install it (Debian/Ubuntu: apt-get install clickhouse-server clickhouse-client) or set analytics.addr to an existing ClickHouse")

// LocalNice is the niceness of the local clickhouse-server: below notifyd's
// CPU priority, so that analytics lags rather than delivery.
const LocalNice = 10

// LocalServer is a clickhouse-server child process with its data in one directory.
type LocalServer struct {
	Addr     string // native protocol, 127.0.0.1:port
	HTTPAddr string
	Dir      string

	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has ended
	waitErr error
}

// FindServer returns the path of clickhouse-server.
func FindServer() (string, error) {
	if p, err := exec.LookPath("clickhouse-server"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"} {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", ErrServerNotInstalled
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartLocal runs clickhouse-server on free loopback ports with every file under
// dir, and waits until it answers. tcpPort 0 picks a free port. When a previous
// server of the same directory is still shutting down (notifyd restarted right
// after a crash; its child got SIGTERM), it waits for that one to go.
func StartLocal(ctx context.Context, dir string, tcpPort int) (*LocalServer, error) {
	deadline := time.Now().Add(90 * time.Second)
	for {
		s, err := startOnce(ctx, dir, tcpPort)
		// Retried: a previous server still holding the directory, and a port
		// picked free that another process took before clickhouse-server bound it.
		if !(errors.Is(err, errDirLocked) || errors.Is(err, errPortTaken)) || time.Now().After(deadline) {
			return s, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

var (
	errDirLocked = errors.New("another clickhouse-server holds the data directory")
	errPortTaken = errors.New("a port picked for clickhouse-server was taken before it bound it")
)

func startOnce(ctx context.Context, dir string, tcpPort int) (*LocalServer, error) {
	bin, err := FindServer()
	if err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	// Its data is the owner's alone, like the rest of notifyd's data directory.
	for _, d := range []string{"tmp", "user_files", "format_schemas", "log"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	if tcpPort == 0 {
		if tcpPort, err = freePort(); err != nil {
			return nil, err
		}
	}
	httpPort, err := freePort()
	if err != nil {
		return nil, err
	}
	interPort, err := freePort()
	if err != nil {
		return nil, err
	}
	config := "/etc/clickhouse-server/config.xml"
	if _, err := os.Stat(config); err != nil {
		return nil, fmt.Errorf("clickhouse-server is installed but %s is missing: reinstall the clickhouse-server package", config)
	}
	s := &LocalServer{Addr: "127.0.0.1:" + strconv.Itoa(tcpPort), HTTPAddr: "127.0.0.1:" + strconv.Itoa(httpPort), Dir: dir,
		exited: make(chan struct{})}
	args := []string{bin, "--config-file=" + config, "--",
		"--path=" + dir + "/", "--tmp_path=" + filepath.Join(dir, "tmp") + "/",
		"--user_files_path=" + filepath.Join(dir, "user_files") + "/", "--format_schema_path=" + filepath.Join(dir, "format_schemas") + "/",
		"--tcp_port=" + strconv.Itoa(tcpPort), "--http_port=" + strconv.Itoa(httpPort), "--interserver_http_port=" + strconv.Itoa(interPort),
		"--listen_host=127.0.0.1",
		"--logger.log=" + filepath.Join(dir, "log", "server.log"), "--logger.errorlog=" + filepath.Join(dir, "log", "error.log"),
		"--logger.console=0",
		// clickhouse-server sets its own umask (027 by default: group may read
		// the data and logs); it runs as notifyd's user, which 077 leaves
		// every right it needs.
		"--umask=077"}
	// Analytics may lag, delivery may not: on a shared machine the server runs
	// at a lower CPU priority than notifyd (nice 10). Measured in
	// docs/PERFORMANCE.md: lower API tail latency, a larger but bounded lag.
	if nice, err := exec.LookPath("nice"); err == nil {
		args = append([]string{nice, "-n", strconv.Itoa(LocalNice)}, args...)
	}
	s.cmd = exec.Command(args[0], args[1:]...)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM} // never outlive notifyd
	out, err := os.OpenFile(filepath.Join(dir, "log", "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	s.cmd.Stdout, s.cmd.Stderr = out, out
	if err := s.cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start clickhouse-server: %w", err)
	}
	go func() { s.waitErr = s.cmd.Wait(); out.Close(); close(s.exited) }()
	if err := s.waitReady(ctx, 60*time.Second); err != nil {
		_ = s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *LocalServer) waitReady(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{s.Addr}, DialTimeout: time.Second})
		if err == nil {
			err = conn.Ping(ctx)
			conn.Close()
			if err == nil {
				return nil
			}
		}
		select {
		case <-s.exited:
			errLog := filepath.Join(s.Dir, "log", "error.log")
			tail, _ := os.ReadFile(errLog)
			_ = os.Truncate(errLog, 0) // so the next attempt reads its own errors
			switch {
			case bytes.Contains(tail, []byte("Another server instance in same directory")):
				return errDirLocked
			case bytes.Contains(tail, []byte("Address already in use")):
				return errPortTaken
			}
			return fmt.Errorf("clickhouse-server exited at start (%v): %s", s.waitErr, lastLine(tail))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("clickhouse-server on %s not answering after %v: %v", s.Addr, limit, err)
		}
	}
}

// Stop ends the server (SIGTERM, then SIGKILL after 20 s) and waits for it.
func (s *LocalServer) Stop() error {
	if s.cmd.Process == nil {
		return nil
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	return nil
}

// Kill ends the server at once, as a crash would (tests of outages).
func (s *LocalServer) Kill() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

func lastLine(b []byte) string {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	return string(lines[len(lines)-1])
}
