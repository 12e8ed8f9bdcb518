package topology

import (
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// FaultEnv names the crash points a test process is to die at:
// NOTIFYD_FAULTS="dedup.after-entry=0.01,sink.after-finish=0.002" kills the
// process (SIGKILL, as an operator's kill -9) at each named point with the
// given probability. Crash tests use it to hit the windows between two side
// effects exactly; it is never set in production.
const FaultEnv = "NOTIFYD_FAULTS"

// faultSettle is how long a fault waits before the kill, so that the side
// effects issued before the point reach the broker and the crash falls between
// them and the ones after it.
const faultSettle = 150 * time.Millisecond

var (
	faultOnce sync.Once
	faults    map[string]float64
)

// Fault may kill the process at the named point (see FaultEnv).
func Fault(point string) {
	faultOnce.Do(func() {
		faults = map[string]float64{}
		for _, item := range strings.Split(os.Getenv(FaultEnv), ",") {
			name, p, ok := strings.Cut(strings.TrimSpace(item), "=")
			if f, err := strconv.ParseFloat(p, 64); ok && err == nil {
				faults[name] = f
			}
		}
	})
	p := faults[point]
	if p <= 0 || rand.Float64() >= p {
		return
	}
	os.Stderr.WriteString("notifyd: fault " + point + ": killing the process\n")
	time.Sleep(faultSettle)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}
