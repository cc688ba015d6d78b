package agent

import (
	"context"
	"net"
	"sort"
	"sync"

	"github.com/goiscsi/iscsi/agent/api"
)

// connSet is the TCP connections dialed for one session, for their byte
// counts. The session gets the *net.TCPConn itself, unwrapped, so its I/O
// path is the one it has without the agent (a wrapped connection would also
// lose the session's direct reads); the counts come from the kernel when
// asked for.
type connSet struct {
	mu    sync.Mutex
	conns []*net.TCPConn
}

type connSetKey struct{}

// withConnSet returns ctx carrying set: the connections the initiator
// dials under ctx (a login and its redirects and added connections) go
// into it.
func withConnSet(ctx context.Context, set *connSet) context.Context {
	return context.WithValue(ctx, connSetKey{}, set)
}

// dialTracked dials like the session does, and records the connection in
// the ctx's connSet.
func dialTracked(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if set, ok := ctx.Value(connSetKey{}).(*connSet); ok {
		if tc, ok := nc.(*net.TCPConn); ok {
			set.mu.Lock()
			set.conns = append(set.conns, tc)
			set.mu.Unlock()
		}
	}
	return nc, nil
}

// counters adds up the byte counts of the set's connections still open; a
// closed one is forgotten (its counts go with it).
func (s *connSet) counters() api.Counters {
	c := api.Counters{Measured: tcpInfoSupported}
	if s == nil || !tcpInfoSupported {
		return c
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	keep := s.conns[:0]
	for _, tc := range s.conns {
		sent, recv, ok := tcpBytes(tc)
		if !ok {
			continue
		}
		c.BytesSent += sent
		c.BytesReceived += recv
		keep = append(keep, tc)
	}
	clear(s.conns[len(keep):])
	s.conns = keep
	return c
}

func sortedTargets(ts []string) []string {
	sort.Strings(ts)
	return ts
}
