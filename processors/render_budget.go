package processors

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"sync"
	texttemplate "text/template"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/notifyd/notifyd/config"
)

// RenderLimits bound one channel's render (all its fields together).
type RenderLimits struct {
	Timeout       time.Duration            // wall time of the render
	MaxIterations int                      // range iterations, nested loops counted in full
	MaxBytes      func(channel string) int // rendered size budget of the channel; for "sms" it counts characters (runes), otherwise bytes
}

// LimitsFromConfig is the render budget of the configuration.
func LimitsFromConfig(r config.Render) RenderLimits {
	return RenderLimits{Timeout: r.Timeout, MaxIterations: r.MaxIterations, MaxBytes: r.Budget}
}

// Budgets a render can exceed (BudgetError.Budget).
const (
	BudgetOutput     = "output"
	BudgetIterations = "iterations"
	BudgetTime       = "time"
)

// BudgetError is a render stopped because it exceeded one of its RenderLimits.
type BudgetError struct {
	Template, Channel string
	Budget            string // BudgetOutput, BudgetIterations or BudgetTime
	// Limit is the bound exceeded: bytes (characters for sms), iterations, or
	// a time.Duration in nanoseconds.
	Limit int64
}

func (e *BudgetError) Error() string {
	return fmt.Sprintf("render %s/%s: %s", e.Template, e.Channel, e.what())
}

func (e *BudgetError) what() string {
	switch e.Budget {
	case BudgetOutput:
		unit := "bytes"
		if countsRunes(e.Channel) {
			unit = "characters"
		}
		return fmt.Sprintf("output exceeds %d %s", e.Limit, unit)
	case BudgetIterations:
		return fmt.Sprintf("range iterations exceed %d", e.Limit)
	case BudgetTime:
		return fmt.Sprintf("render time exceeds %v", time.Duration(e.Limit))
	}
	return fmt.Sprintf("%s budget of %d exceeded", e.Budget, e.Limit)
}

func countsRunes(channel string) bool { return channel == "sms" }

// renderBudget is the state of one Render call: it is the writer every field
// executes into, and what the hidden template functions (tickFunc, the
// budgeted string builders) consult to stop execution by returning an error.
// One execution runs on one goroutine, so it needs no lock.
type renderBudget struct {
	ctx               context.Context
	template, channel string
	lim               RenderLimits
	deadline          time.Time // zero: no time limit
	maxOut            int       // bytes, or runes for sms; 0: no limit
	runes             bool
	used              int // output so far, all fields together
	iterations        int
	calls             int
	err               error // why execution was stopped, reported instead of text/template's wrapping of it
	out               *bytes.Buffer
}

// Budgets are pooled: the deliver group renders thousands a second, and a
// budget's buffer is grown to the size of a channel's content.
var budgetPool = sync.Pool{New: func() any { return &renderBudget{out: new(bytes.Buffer)} }}

// startBudget is the budget of one render over data, registered (see
// budgets) until finish. root is the data to execute with: data itself, or
// a copy of it when data is already in a render elsewhere.
func startBudget(ctx context.Context, tmpl, channel string, lim RenderLimits, data map[string]any) (b *renderBudget, root map[string]any) {
	b = budgetPool.Get().(*renderBudget)
	out := b.out
	out.Reset()
	*b = renderBudget{ctx: ctx, template: tmpl, channel: channel, lim: lim, runes: countsRunes(channel), out: out}
	if ctx.Done() == nil {
		b.ctx = nil // never cancelled; spare the check
	}
	if lim.Timeout > 0 {
		b.deadline = time.Now().Add(lim.Timeout)
	}
	if lim.MaxBytes != nil {
		b.maxOut = max(lim.MaxBytes(channel), 0)
	}
	return b, b.register(data)
}

// finish unregisters b and returns it to the pool; b is not used after.
func (b *renderBudget) finish(root map[string]any) {
	budgets.CompareAndDelete(mapKey(root), b)
	if b.out.Cap() > 64<<10 {
		b.out = new(bytes.Buffer) // keep the pool small
	}
	b.ctx, b.lim.MaxBytes, b.err = nil, nil, nil
	budgetPool.Put(b)
}

func (b *renderBudget) exceeded(budget string, limit int64) error {
	return b.stop(&BudgetError{Template: b.template, Channel: b.channel, Budget: budget, Limit: limit})
}

func (b *renderBudget) stop(err error) error {
	if b.err == nil {
		b.err = err
	}
	return b.err
}

func (b *renderBudget) size(p []byte) int {
	if b.runes {
		return utf8.RuneCount(p)
	}
	return len(p)
}

// Write keeps a field's output, failing (which aborts execution) as soon as
// the channel's output is over budget.
func (b *renderBudget) Write(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.maxOut > 0 {
		if b.used += b.size(p); b.used > b.maxOut {
			return 0, b.exceeded(BudgetOutput, int64(b.maxOut))
		}
	}
	return b.out.Write(p)
}

// recount replaces what a field's parts counted against the output budget
// since usedBefore by the size of the field as it is finally sent (a webhook
// body: its parts, JSON-escaped, in the author's document).
func (b *renderBudget) recount(usedBefore int, field []byte) error {
	if b.err != nil {
		return b.err
	}
	b.used = usedBefore + b.size(field)
	if b.maxOut > 0 && b.used > b.maxOut {
		return b.exceeded(BudgetOutput, int64(b.maxOut))
	}
	return nil
}

// checkClock stops the render when its time is up or its caller went away.
func (b *renderBudget) checkClock() error {
	if b.err != nil {
		return b.err
	}
	if b.ctx != nil {
		if err := b.ctx.Err(); err != nil {
			return b.stop(err)
		}
	}
	if !b.deadline.IsZero() && time.Now().After(b.deadline) {
		return b.exceeded(BudgetTime, int64(b.lim.Timeout))
	}
	return nil
}

// clockEvery is how many ticks pass between looks at the clock: reading it
// costs about as much as a tick.
const clockEvery = 64

func (b *renderBudget) tick() error {
	b.iterations++
	if b.lim.MaxIterations > 0 && b.iterations > b.lim.MaxIterations {
		return b.exceeded(BudgetIterations, int64(b.lim.MaxIterations))
	}
	if b.iterations%clockEvery == 0 {
		return b.checkClock()
	}
	return nil
}

// value bounds a string a template computes (print, printf, js, …): without
// it a handful of {{$x = print $x $x}} double a value into gigabytes without
// a loop or a byte of output. Nothing longer than the channel's whole output
// can be of use.
func (b *renderBudget) value(s string) (string, error) {
	if b.calls++; b.calls%clockEvery == 0 {
		if err := b.checkClock(); err != nil {
			return "", err
		}
	}
	if b.maxOut > 0 && len(s) > b.maxOut && (!b.runes || utf8.RuneCountInString(s) > b.maxOut) {
		return "", b.exceeded(BudgetOutput, int64(b.maxOut))
	}
	return s, nil
}

// Executions in flight, by the identity of their root data map ($). The
// hidden functions receive $ and find their budget here; $ is the root for
// the whole execution because sub-templates and assignments to $ are refused
// (inspectTree).
var budgets sync.Map // unsafe.Pointer → *renderBudget

// register makes b the budget of executions over data. A map that is already
// in a render elsewhere (the same data rendered concurrently) is
// shallow-copied, so each execution has its own identity.
func (b *renderBudget) register(data map[string]any) (root map[string]any) {
	if data == nil {
		data = map[string]any{}
	}
	for {
		if _, loaded := budgets.LoadOrStore(mapKey(data), b); !loaded {
			return data
		}
		data = maps.Clone(data)
	}
}

func mapKey(m map[string]any) unsafe.Pointer { return reflect.ValueOf(m).UnsafePointer() }

var errNoBudget = errors.New("template executed without a render budget")

// budgetOf finds the budget of the execution whose root is root. None fails
// closed: the execution stops.
func budgetOf(root map[string]any) (*renderBudget, error) {
	if root != nil {
		if b, ok := budgets.Load(mapKey(root)); ok {
			return b.(*renderBudget), nil
		}
	}
	return nil, errNoBudget
}

// The hidden functions the rewritten tree calls, each with $ first. Their
// names cannot collide with data fields (funcs are called without a dot);
// validation refuses templates that call them (they are not defined there).
const (
	tickFunc   = "_notifyd_tick"
	budgetedFn = "_notifyd_" // prefix of the budgeted builtins
)

// budgetedBuiltins are the builtins that build strings, by name.
var budgetedBuiltins = map[string]func(args ...any) string{
	"print":    fmt.Sprint,
	"println":  fmt.Sprintln,
	"html":     texttemplate.HTMLEscaper,
	"js":       texttemplate.JSEscaper,
	"urlquery": texttemplate.URLQueryEscaper,
}

var budgetFuncs = func() map[string]any {
	fm := map[string]any{
		// Its result is zero-sized: text/template's reflect call allocates none.
		tickFunc: func(root map[string]any) (struct{}, error) {
			b, err := budgetOf(root)
			if err != nil {
				return struct{}{}, err
			}
			return struct{}{}, b.tick()
		},
		budgetedFn + "printf": func(root map[string]any, format string, args ...any) (string, error) {
			b, err := budgetOf(root)
			if err != nil {
				return "", err
			}
			return b.value(fmt.Sprintf(format, args...))
		},
	}
	for name, f := range budgetedBuiltins {
		fm[budgetedFn+name] = func(root map[string]any, args ...any) (string, error) {
			b, err := budgetOf(root)
			if err != nil {
				return "", err
			}
			return b.value(f(args...))
		}
	}
	return fm
}()
