package main

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks"
	"github.com/notifyd/notifyd/topology"
)

// rolesBench is `notifyd bench -roles`: notifyd as operators scale it out on
// one machine — a standalone broker, two `process`, two `sink
// --channel=webhook` and one `api`, each a child OS process of the bench —
// delivering to a webhook receiver in the bench that verifies each request's
// signature. It runs the bulk and API phases of the in-process bench against
// them, checks that every notification was accepted exactly once, and reports
// the CPU each process used in each phase.
type rolesBench struct {
	bin        string // the notifyd binary the children run ("" = this one)
	n          int
	rate       int
	dur        time.Duration
	partitions int
	users      int
	ceiling    *ceiling // nil: not measured
	report     *benchReport
	jsonOut    string
}

// rolesFigures are the "roles" section of the bench's -json report.
type rolesFigures struct {
	Partitions int                  `json:"partitions"`
	Binary     string               `json:"binary"`
	ReadyMS    float64              `json:"ready_ms"` // first child started → every role ready, each group with two members
	Processes  []roleProcessFigures `json:"processes"`
	Bulk       *rolesPhaseFigures   `json:"bulk,omitempty"`
	API        *rolesPhaseFigures   `json:"api,omitempty"`
}

type roleProcessFigures struct {
	Name string   `json:"name"`
	PID  int      `json:"pid"`
	Args []string `json:"args"`
}

// rolesPhaseFigures: Count notifications went in (requests on notify.ingest);
// Accepted of them reached the receiver, Duplicates is how many times more
// than once, Unexpected counts acceptances of notifications of no request of
// the phase. CPU is each process's (and the bench's own) over CPUWindowMS.
type rolesPhaseFigures struct {
	phaseFigures
	Accepted    int       `json:"accepted"`
	Duplicates  int       `json:"duplicates"`
	Unexpected  int       `json:"unexpected"`
	CPUWindowMS float64   `json:"cpu_window_ms"`
	CPU         []roleCPU `json:"cpu"`
}

type roleCPU struct {
	Name    string  `json:"name"`
	PID     int     `json:"pid"`
	Seconds float64 `json:"seconds"`
	// ShareOfPhase is Seconds over the window: 1.0 is one core busy throughout.
	ShareOfPhase float64 `json:"share_of_phase"`
}

// rolesReport is the bench's report with the roles section.
type rolesReport struct {
	*benchReport
	Roles *rolesFigures `json:"roles"`
}

// write writes the report to path as JSON, as benchReport.write does.
func (r rolesReport) write(path string) error { return writeJSON(path, r) }

func (b rolesBench) run(ctx context.Context) error {
	if b.n < 1 || b.rate < 1 || b.dur <= 0 || b.partitions < 1 {
		return errors.New("bench -roles: -n, -rate, -duration and -partitions must be positive")
	}
	bin := b.bin
	if bin == "" {
		var err error
		if bin, err = os.Executable(); err != nil {
			return err
		}
	}
	dir, err := os.MkdirTemp("", "notifyd-bench-roles-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	secret := randomHex(16)
	hook, err := startHookReceiver([]byte(secret))
	if err != nil {
		return err
	}
	defer hook.close() // after the sinks stopped (defers run last first)

	figs := &rolesFigures{Partitions: b.partitions, Binary: bin}
	started := time.Now()
	c, err := startRoleCluster(ctx, bin, dir, b.partitions, hook.url, secret)
	if c != nil {
		defer c.stop()
	}
	if err != nil {
		return err
	}
	figs.ReadyMS = msec(time.Since(started))
	for _, p := range c.all() {
		figs.Processes = append(figs.Processes, roleProcessFigures{Name: p.name, PID: p.pid(), Args: p.cmd.Args[1:]})
	}
	fmt.Printf("notifyd bench -roles: broker, 2 process, 2 sink --channel=webhook and api as separate processes of %s; %d partitions, goka state on disk, GOMAXPROCS from %d CPUs each\n",
		bin, b.partitions, runtime.NumCPU())
	var pids []string
	for _, p := range c.all() {
		pids = append(pids, fmt.Sprintf("%s %d", p.name, p.pid()))
	}
	fmt.Printf("  PIDs: %s; the webhook receiver runs in the bench (PID %d) at %s\n", strings.Join(pids, ", "), os.Getpid(), hook.url)
	fmt.Printf("  ready %v after the first start (every role ready, each group with both its members)\n\n", time.Since(started).Round(time.Millisecond))

	base := "http://" + c.apiAddr
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 512, MaxConnsPerHost: 512}}
	tmpl := `{"category":"transactional","channels":{"webhook":{"body":"{\"event\":\"order.shipped\",\"orderId\":\"{{.orderId}}\"}"}}}`
	if err := call(ctx, client, "PUT", base+"/v1/templates/bench", tmpl, http.StatusOK); err != nil {
		return err
	}
	producer, err := topology.NewProducer(c.brokers)
	if err != nil {
		return err
	}
	defer producer.Close()

	// Warm-up: first records pay for connections, and the roles' first
	// data keys and template lookups.
	if err := ingest(ctx, producer, "warm", 500, 0, b.users); err != nil {
		return err
	}
	if err := hook.wait(ctx, c, 500, 2*time.Minute); err != nil {
		return err
	}
	hook.take()

	// Bulk: everything produced at once to notify.ingest.
	cpuBefore, err := c.cpu()
	if err != nil {
		return err
	}
	start := time.Now()
	if err := ingest(ctx, producer, "bulk", b.n, 0, b.users); err != nil {
		return err
	}
	produced := time.Since(start)
	if err := hook.wait(ctx, c, int64(b.n), 10*time.Minute); err != nil {
		return err
	}
	cpuAfter, err := c.cpu()
	if err != nil {
		return err
	}
	got := hook.take()
	accepted, err := acceptedTimes(ctx, c.brokers, func(r *schemas.SendRequest) bool {
		return r.Source == "bench" && strings.HasPrefix(r.EventID, "bulk-")
	})
	if err != nil {
		return err
	}
	bulk := rolesPhase(got, accepted, start, b.ceiling)
	bulk.ProducedMS = msec(produced)
	bulk.CPUWindowMS, bulk.CPU = cpuUsed(cpuBefore, cpuAfter)
	figs.Bulk = bulk
	fmt.Printf("bulk: %d notifications produced to notify.ingest in %v, all accepted by the webhook receiver in %v\n",
		b.n, produced.Round(time.Millisecond), msDur(bulk.DurationMS))
	fmt.Printf("  throughput end to end: %.0f notifications/s%s\n", bulk.Rate, b.ceiling.inParens(bulk.Rate))
	fmt.Printf("  ingest → provider (includes queueing behind the backlog): %s\n", p50p99(bulk.Latency))
	printRolesPhase(bulk)

	// API: an open-loop request rate against the api process.
	cpuBefore, err = c.cpu()
	if err != nil {
		return err
	}
	start = time.Now()
	apiLat, errs, err := apiLoad(ctx, client, base, b.rate, b.dur)
	if err != nil {
		return err
	}
	if err := hook.wait(ctx, c, int64(len(apiLat)-errs), 5*time.Minute); err != nil {
		return err
	}
	// A request that failed at the client may still have been accepted:
	// what went in is what notify.ingest holds.
	if accepted, err = acceptedTimes(ctx, c.brokers, func(r *schemas.SendRequest) bool { return r.Source == "api" }); err != nil {
		return err
	}
	if err := hook.wait(ctx, c, int64(len(accepted)), time.Minute); err != nil {
		return err
	}
	cpuAfter, err = c.cpu()
	if err != nil {
		return err
	}
	api := rolesPhase(hook.take(), accepted, start, b.ceiling)
	api.TargetRate, api.Errors, api.RequestLatency = b.rate, errs, latencies(apiLat)
	api.CPUWindowMS, api.CPU = cpuUsed(cpuBefore, cpuAfter)
	figs.API = api
	fmt.Printf("api: %d POST /v1/notifications at %d/s (%d errors)\n", len(apiLat), b.rate, errs)
	fmt.Printf("  achieved, first request → last delivery: %.0f notifications/s%s\n", api.Rate, b.ceiling.inParens(api.Rate))
	fmt.Printf("  request latency: p50 %s  p99 %s  max %s\n", ms(percentile(apiLat, .5)), ms(percentile(apiLat, .99)), ms(percentile(apiLat, 1)))
	fmt.Printf("  API accept → provider: %s\n", p50p99(api.Latency))
	printRolesPhase(api)

	if err := (rolesReport{benchReport: b.report, Roles: figs}).write(b.jsonOut); err != nil {
		return err
	}
	for _, p := range []struct {
		name string
		f    *rolesPhaseFigures
	}{{"bulk", bulk}, {"api", api}} {
		if p.f.Accepted != p.f.Count || p.f.Duplicates > 0 || p.f.Unexpected > 0 {
			return fmt.Errorf("bench -roles: %s: %d of %d notifications accepted, %d duplicates, %d unexpected",
				p.name, p.f.Accepted, p.f.Count, p.f.Duplicates, p.f.Unexpected)
		}
	}
	return nil
}

// rolesPhase compares what the receiver accepted (got) with the phase's
// notifications and when their requests were accepted (want): the rate counts
// from start to the last first acceptance, the latency from each request's
// acceptance to the receiver's.
func rolesPhase(got map[string]hookAccept, want map[string]time.Time, start time.Time, ceil *ceiling) *rolesPhaseFigures {
	var lat []time.Duration
	last := start
	accepted, dups, unexpected := 0, 0, 0
	for id, a := range got {
		at, ok := want[id]
		if !ok {
			unexpected += a.count
			continue
		}
		accepted++
		dups += a.count - 1
		lat = append(lat, a.first.Sub(at))
		if a.first.After(last) {
			last = a.first
		}
	}
	return &rolesPhaseFigures{phaseFigures: *newPhase(len(want), last.Sub(start), ceil, lat),
		Accepted: accepted, Duplicates: dups, Unexpected: unexpected}
}

func printRolesPhase(p *rolesPhaseFigures) {
	if p.Accepted == p.Count && p.Duplicates == 0 && p.Unexpected == 0 {
		fmt.Printf("  checked: the receiver accepted each of the %d notifications exactly once, signature verified\n", p.Count)
	} else {
		fmt.Printf("  WRONG: the receiver accepted %d of %d notifications, %d duplicates, %d of no request of the phase\n",
			p.Accepted, p.Count, p.Duplicates, p.Unexpected)
	}
	window := p.CPUWindowMS / 1000
	fmt.Printf("  CPU over the phase (%.1f s, %d CPUs):\n", window, runtime.NumCPU())
	var roles float64
	for _, c := range p.CPU {
		perCPUSecond := ""
		if c.Seconds > 0 {
			perCPUSecond = fmt.Sprintf(" · %s notifications per CPU-second", thousands(float64(p.Count)/c.Seconds))
		}
		fmt.Printf("    %s: %.2f s CPU (%.0f%% of the phase)%s\n", c.Name, c.Seconds, c.ShareOfPhase*100, perCPUSecond)
		if c.PID != os.Getpid() {
			roles += c.Seconds
		}
	}
	fmt.Printf("    broker and roles together: %.2f s CPU (%.0f%% of the phase)\n\n", roles, roles/window*100)
}

// p50p99 says a latency's p50 and p99 as the bench prints them.
func p50p99(l *latencyFigures) string {
	if l == nil {
		return "p50 -  p99 -"
	}
	return fmt.Sprintf("p50 %.1f ms  p99 %.1f ms", l.P50, l.P99)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// roleCluster is the bench's child processes: the broker and the roles.
type roleCluster struct {
	broker  *roleProc
	roles   []*roleProc
	brokers []string
	apiAddr string
}

// roleGroups are the consumer groups that carry a notification to the
// webhook; the bench measures once each has both its instances as members.
var roleGroups = []string{string(topology.DedupGroup), string(topology.DeliverGroup), string(topology.StatusGroup),
	topology.SinkGroup("webhook")}

// startRoleCluster starts the broker, then the roles with one configuration
// (the broker, the bench's API key, a master key, no daily caps, the webhook
// channel to url), each with a data directory of its own under dir, and
// waits until every role is ready and every group of roleGroups has two
// members. On an error the cluster it returns, if any, still needs stop.
func startRoleCluster(ctx context.Context, bin, dir string, partitions int, url, secret string) (*roleCluster, error) {
	c := &roleCluster{}
	var err error
	c.broker, err = startRoleProc(bin, "broker", "broker listening on ",
		"broker", "--data-dir", filepath.Join(dir, "broker"), "--port", "0", "--partitions", strconv.Itoa(partitions))
	if err != nil {
		return nil, err
	}
	line, err := c.broker.waitLine(ctx, time.Minute)
	if err != nil {
		return c, err
	}
	addr := strings.TrimSpace(line[strings.Index(line, "broker listening on ")+len("broker listening on "):])
	c.brokers = []string{addr}
	master := make([]byte, 32)
	if _, err := rand.Read(master); err != nil {
		return c, err
	}
	cfg := fmt.Sprintf(`logLevel: info
kafka: {brokers: [%q], partitions: %d}
apiKeys: [{name: bench, key: bench-key-0001}]
limits: {defaultPerDay: 0}
encryption: {masterKeys: %q}
channels:
  webhook:
    - name: bench-hook
      type: webhook
      webhook: {allowPrivateTargets: true, endpoints: {default: {url: %q, secret: %q}}}
`, addr, partitions, "bench:"+base64.StdEncoding.EncodeToString(master), url, secret)
	cfgPath := filepath.Join(dir, "notifyd.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return c, err
	}
	for _, r := range []struct {
		name string
		args []string
	}{
		{"process-1", []string{"process"}},
		{"process-2", []string{"process"}},
		{"sink-1", []string{"sink", "--channel=webhook"}},
		{"sink-2", []string{"sink", "--channel=webhook"}},
		{"api", []string{"api", "--http", "127.0.0.1:0"}},
	} {
		args := append(r.args, "--config", cfgPath, "--data-dir", filepath.Join(dir, r.name))
		p, err := startRoleProc(bin, r.name, `msg="notifyd ready"`, args...)
		if err != nil {
			return c, err
		}
		c.roles = append(c.roles, p)
	}
	for _, p := range c.roles {
		line, err := p.waitLine(ctx, 3*time.Minute)
		if err != nil {
			return c, err
		}
		if p.name == "api" {
			if c.apiAddr = logField(line, "api"); c.apiAddr == "" {
				return c, fmt.Errorf("bench -roles: no API address in the api's ready line %q", line)
			}
		}
	}
	return c, c.waitGroups(ctx, 2, time.Minute)
}

// logField is the value of key in a log/slog text line ("" if absent).
func logField(line, key string) string {
	_, v, ok := strings.Cut(line, " "+key+"=")
	if !ok {
		return ""
	}
	v, _, _ = strings.Cut(v, " ")
	return strings.Trim(v, `"`)
}

// all is the broker and the roles, in the order they started.
func (c *roleCluster) all() []*roleProc {
	if c.broker == nil {
		return c.roles
	}
	return append([]*roleProc{c.broker}, c.roles...)
}

// alive fails, with its output, if a child process has exited.
func (c *roleCluster) alive() error {
	for _, p := range c.all() {
		if err := p.alive(); err != nil {
			return err
		}
	}
	return nil
}

// waitGroups waits until every group of roleGroups is stable with members members.
func (c *roleCluster) waitGroups(ctx context.Context, members int, limit time.Duration) error {
	cl, err := topology.NewClient(c.brokers)
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	deadline := time.Now().Add(limit)
	var last string
	for {
		if err := c.alive(); err != nil {
			return err
		}
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		described, err := adm.DescribeGroups(dctx, roleGroups...)
		cancel()
		if err == nil {
			last = ""
			for _, g := range roleGroups {
				d, ok := described[g]
				if !ok || d.Err != nil || d.State != "Stable" || len(d.Members) != members {
					last = fmt.Sprintf("%s: %s with %d members", g, d.State, len(d.Members))
					break
				}
			}
			if last == "" {
				return nil
			}
		} else {
			last = err.Error()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench -roles: groups not stable with %d members each after %v (%s)", members, limit, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// cpu is the CPU time each child and the bench itself have used so far.
func (c *roleCluster) cpu() (cpuSample, error) {
	if err := c.alive(); err != nil {
		return cpuSample{}, err
	}
	s := cpuSample{at: time.Now()}
	for _, p := range c.all() {
		d, err := procCPU(p.pid())
		if err != nil {
			return s, fmt.Errorf("bench -roles: CPU of %s: %w", p.name, err)
		}
		s.procs = append(s.procs, procTime{p.name, p.pid(), d})
	}
	d, err := procCPU(os.Getpid())
	if err != nil {
		return s, err
	}
	s.procs = append(s.procs, procTime{"bench (producer, load, receiver)", os.Getpid(), d})
	return s, nil
}

// stop ends the roles (SIGTERM, SIGKILL after 20 s), then the broker, and
// waits for each.
func (c *roleCluster) stop() {
	var wg sync.WaitGroup
	for _, p := range c.roles {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop(20 * time.Second) }()
	}
	wg.Wait()
	if c.broker != nil {
		c.broker.stop(20 * time.Second)
	}
}

type cpuSample struct {
	at    time.Time
	procs []procTime
}

type procTime struct {
	name string
	pid  int
	cpu  time.Duration
}

// cpuUsed is the window between two samples and what each process used in it.
func cpuUsed(before, after cpuSample) (float64, []roleCPU) {
	window := after.at.Sub(before.at)
	var out []roleCPU
	for i, p := range after.procs {
		used := p.cpu - before.procs[i].cpu
		out = append(out, roleCPU{Name: p.name, PID: p.pid, Seconds: used.Seconds(), ShareOfPhase: used.Seconds() / window.Seconds()})
	}
	return msec(window), out
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat:
// 100 on every Linux architecture Go runs on.
const clockTicks = 100

// procCPU is the user and system CPU time process pid (all its threads) has
// used, from /proc.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseProcStatCPU(string(b))
}

// parseProcStatCPU reads utime and stime (fields 14 and 15) of a
// /proc/<pid>/stat line. Field 2, the command name in parentheses, may hold
// spaces and parentheses itself: fields count from the last ')'.
func parseProcStatCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("unreadable /proc stat %q", stat)
	}
	f := strings.Fields(stat[i+1:]) // f[0] is field 3
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc stat %q", stat)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc stat: %w", err)
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// roleProc is one child process of the bench, its output kept (the tail)
// and watched for the line that says it is ready.
type roleProc struct {
	name   string
	cmd    *exec.Cmd
	out    *tailBuffer
	line   chan string   // receives the first line holding the awaited text
	exited chan struct{} // closed once the process was waited for
	err    error         // the process's end, once exited
}

// startRoleProc starts bin with args as a child of the bench, with the
// environment less NOTIFYD_* (the configuration file says everything).
func startRoleProc(bin, name, await string, args ...string) (*roleProc, error) {
	cmd := exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NOTIFYD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the bench
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	p := &roleProc{name: name, cmd: cmd, out: &tailBuffer{max: 64 << 10}, line: make(chan string, 1), exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench -roles: start %s: %w", name, err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		seen := false
		for sc.Scan() {
			p.out.Write(append(sc.Bytes(), '\n'))
			if !seen && strings.Contains(sc.Text(), await) {
				seen = true
				p.line <- sc.Text()
			}
		}
		_, _ = io.Copy(io.Discard, pr) // a line too long for the scanner
	}()
	go func() {
		p.err = cmd.Wait()
		pw.Close()
		close(p.exited)
	}()
	return p, nil
}

func (p *roleProc) pid() int { return p.cmd.Process.Pid }

// waitLine waits for the awaited line.
func (p *roleProc) waitLine(ctx context.Context, limit time.Duration) (string, error) {
	select {
	case l := <-p.line:
		return l, nil
	case <-p.exited:
		return "", p.alive()
	case <-ctx.Done():
		return "", ctx.Err()
	case <-time.After(limit):
		return "", fmt.Errorf("bench -roles: %s not ready after %v; its output:\n%s", p.name, limit, p.out)
	}
}

func (p *roleProc) alive() error {
	select {
	case <-p.exited:
		return fmt.Errorf("bench -roles: %s (PID %d) exited: %v; its output:\n%s", p.name, p.pid(), p.err, p.out)
	default:
		return nil
	}
}

// stop sends SIGTERM, then SIGKILL after grace, and waits for the process.
func (p *roleProc) stop(grace time.Duration) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// tailBuffer keeps the last max bytes written to it, or a little more.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > 2*t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.b) > t.max {
		return "…" + string(t.b[len(t.b)-t.max:])
	}
	return string(t.b)
}

// hookReceiver is the bench's webhook endpoint on loopback: it checks each
// request's signature as a customer would (sinks' documented scheme), answers
// 200, and notes per notification id how often and first when it accepted it.
type hookReceiver struct {
	secret   []byte
	url      string
	srv      *http.Server
	mu       sync.Mutex
	got      map[string]hookAccept
	distinct atomic.Int64
	rejected atomic.Int64
}

type hookAccept struct {
	count int
	first time.Time
}

func startHookReceiver(secret []byte) (*hookReceiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &hookReceiver{secret: secret, url: "http://" + ln.Addr().String() + "/hook", got: map[string]hookAccept{}}
	h.srv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = h.srv.Serve(ln) }()
	return h, nil
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	id := r.Header.Get(sinks.HeaderID)
	if err != nil || r.Method != http.MethodPost || id == "" || !h.verified(r.Header, body, time.Now()) {
		h.rejected.Add(1)
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	now := time.Now()
	h.mu.Lock()
	a, seen := h.got[id]
	if !seen {
		a.first = now
		h.distinct.Add(1)
	}
	a.count++
	h.got[id] = a
	h.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// verified checks the signature header: "v1=" + hex(HMAC-SHA256(secret,
// timestamp + "." + body)), the timestamp no more than 5 minutes away.
func (h *hookReceiver) verified(hd http.Header, body []byte, now time.Time) bool {
	ts, err := strconv.ParseInt(hd.Get(sinks.HeaderTimestamp), 10, 64)
	if err != nil || now.Sub(time.Unix(ts, 0)).Abs() > 5*time.Minute {
		return false
	}
	return hmac.Equal([]byte(sinks.Sign(h.secret, ts, body)), []byte(hd.Get(sinks.HeaderSignature)))
}

// take returns what was accepted since the last take and starts afresh.
func (h *hookReceiver) take() map[string]hookAccept {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.got
	h.got = map[string]hookAccept{}
	h.distinct.Store(0)
	return out
}

// wait waits until n distinct notifications were accepted since the last
// take, failing early if a child process exited.
func (h *hookReceiver) wait(ctx context.Context, c *roleCluster, n int64, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	check := time.Now()
	for h.distinct.Load() < n {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench -roles: only %d of %d notifications accepted by the receiver after %v (%d requests rejected)",
				h.distinct.Load(), n, limit, h.rejected.Load())
		}
		if time.Since(check) > 500*time.Millisecond {
			if err := c.alive(); err != nil {
				return err
			}
			check = time.Now()
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

func (h *hookReceiver) close() { _ = h.srv.Close() }

// acceptedTimes reads the ingest lanes back up to their current ends and
// returns when the request of each notification keep selects was accepted
// (acceptedAt), by notification id: the webhook does not carry that time, and
// the requests are written by ingest (the bulk phase) or by the api process.
func acceptedTimes(ctx context.Context, brokers []string, keep func(*schemas.SendRequest) bool) (map[string]time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	lanes := make([]string, len(topology.IngestLanes))
	for i, l := range topology.IngestLanes {
		lanes[i] = string(l)
	}
	cl, err := topology.NewClient(brokers, kgo.ConsumeTopics(lanes...), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	starts, err := adm.ListStartOffsets(ctx, lanes...)
	if err != nil {
		return nil, err
	}
	ends, err := adm.ListEndOffsets(ctx, lanes...)
	if err != nil {
		return nil, err
	}
	// left[topic][partition] is the end offset still to be read up to.
	left := map[string]map[int32]int64{}
	ends.Each(func(e kadm.ListedOffset) {
		if s, ok := starts.Lookup(e.Topic, e.Partition); ok && e.Err == nil && e.Offset > s.Offset {
			if left[e.Topic] == nil {
				left[e.Topic] = map[int32]int64{}
			}
			left[e.Topic][e.Partition] = e.Offset
		}
	})
	pending := 0
	for _, ps := range left {
		pending += len(ps)
	}
	out := map[string]time.Time{}
	for pending > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("bench -roles: reading notify.ingest back: %w", ctx.Err())
		}
		var decodeErr error
		fs.EachRecord(func(r *kgo.Record) {
			end, ok := left[r.Topic][r.Partition]
			if !ok || r.Offset >= end {
				return
			}
			if r.Offset == end-1 {
				delete(left[r.Topic], r.Partition)
				pending--
			}
			req, err := schemas.SendRequestCodec.Decode(r.Value)
			if err != nil {
				decodeErr = err
				return
			}
			if !keep(req) {
				return
			}
			for _, rc := range req.Recipients {
				out[processors.TenantNotificationID(req.Tenant, req.EventID, rc.UserID)] = time.UnixMilli(req.AcceptedAt)
			}
		})
		if decodeErr != nil {
			return nil, fmt.Errorf("bench -roles: a request on notify.ingest: %w", decodeErr)
		}
	}
	return out, nil
}
