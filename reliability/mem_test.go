package reliability

import (
	"context"
	"testing"

	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/session"
)

// memIQN is the in-memory target's name in these tests.
const memIQN = "iqn.2026-11.org.goiscsi:reliability-mem"

const initiatorIQN = "iqn.2026-11.org.goiscsi:reliability"

// isid returns a distinct ISID for session i, so hooks can pick sessions.
func isid(i int) [6]byte { return [6]byte{0x80, 0, 0, 0, byte(i >> 8), byte(i)} }

// memEnv is an in-memory target on loopback TCP and an initiator logged in
// to it, both closed by the test's cleanup.
type memEnv struct {
	tg *iscsitest.Target
	in *initiator.Initiator
}

// newMem starts an in-memory target with hook (tcfg may change its
// configuration) and an initiator (icfg, keepalive off unless set).
func newMem(t testing.TB, hook iscsitest.Hook, tcfg func(*iscsitest.Config), icfg initiator.Config) *memEnv {
	t.Helper()
	cfg := iscsitest.Config{Name: memIQN, LUNs: []int64{64 << 20}, Hook: hook}
	if tcfg != nil {
		tcfg(&cfg)
	}
	tg := iscsitest.NewTarget(cfg)
	t.Cleanup(tg.Close)
	icfg.Name = initiatorIQN
	if icfg.NOPInterval == 0 {
		icfg.NOPInterval = -1
	}
	in, err := initiator.New(icfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() }) // before tg.Close
	return &memEnv{tg: tg, in: in}
}

// login logs in n sessions of conns connections each.
func (e *memEnv) login(t testing.TB, n, conns int) []*session.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	var out []*session.Session
	for i := 0; i < n; i++ {
		s, err := e.in.Login(ctx, e.tg.Addr(), memIQN, initiator.LoginOptions{Connections: conns, ISID: isid(i)})
		if err != nil {
			t.Fatalf("login %d: %v", i, err)
		}
		out = append(out, s)
	}
	return out
}

// logout logs out of the target and waits for the result.
func (e *memEnv) logout(t testing.TB, opts logout.Options) logout.Result {
	t.Helper()
	op, err := e.in.LogoutFromTargetWith(memIQN, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*wait)
	defer cancel()
	r, err := op.Wait(ctx)
	if err != nil {
		t.Fatalf("logout not done in %v: %v", 2*wait, err)
	}
	return r
}

// targetSession returns the target's view of the session with ISID id.
func (e *memEnv) targetSession(t testing.TB, id [6]byte) iscsitest.SessionInfo {
	t.Helper()
	for _, s := range e.tg.Sessions() {
		if s.ISID == id {
			return s
		}
	}
	t.Fatalf("the target has no session %x", id)
	panic("unreachable")
}

// observe is a Hook that reports every PDU m matches on ch (without
// blocking the target) and lets it through.
func observe(m iscsitest.Match, ch chan<- *iscsitest.Event) iscsitest.Hook {
	return func(ev *iscsitest.Event) iscsitest.Action {
		if m(ev) {
			select {
			case ch <- ev:
			default:
			}
		}
		return iscsitest.Continue
	}
}
