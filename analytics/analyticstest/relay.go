// Package analyticstest helps tests that take ClickHouse away and bring it back.
package analyticstest

import (
	"io"
	"net"
	"sync"
)

// Relay is a TCP relay on a loopback port that stays the same while the server
// behind it is stopped and started again on another port (a restarted server
// cannot count on getting its old port back while other tests run).
type Relay struct {
	Addr string

	ln     net.Listener
	mu     sync.Mutex
	target string
	conns  map[net.Conn]struct{}
}

// NewRelay listens on a free loopback port and forwards to target.
func NewRelay(target string) (*Relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &Relay{Addr: ln.Addr().String(), ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go r.accept()
	return r, nil
}

// Retarget points new connections at target and drops the open ones.
func (r *Relay) Retarget(target string) {
	r.mu.Lock()
	r.target = target
	for c := range r.conns {
		_ = c.Close()
	}
	r.mu.Unlock()
}

// Close stops the relay.
func (r *Relay) Close() {
	_ = r.ln.Close()
	r.Retarget("")
}

func (r *Relay) accept() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		go r.serve(c)
	}
}

func (r *Relay) serve(c net.Conn) {
	r.mu.Lock()
	target := r.target
	r.mu.Unlock()
	up, err := net.Dial("tcp", target)
	if err != nil {
		_ = c.Close()
		return
	}
	r.mu.Lock()
	r.conns[c], r.conns[up] = struct{}{}, struct{}{}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.conns, c)
		delete(r.conns, up)
		r.mu.Unlock()
		_ = c.Close()
		_ = up.Close()
	}()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
}
