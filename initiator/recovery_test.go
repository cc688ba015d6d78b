package initiator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/session"
)

// downDialer makes the target unreachable while down is set.
type downDialer struct{ down atomic.Bool }

func (d *downDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if d.down.Load() {
		return nil, fmt.Errorf("dial %s: the test's target is down (connection refused)", addr)
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

// recoverySetup is memSetup with one session, a dialer that can make the
// target unreachable, and the state changes on a channel.
func recoverySetup(t *testing.T, cfg Config) (*iscsitest.Target, *Initiator, *downDialer, chan session.StateEvent) {
	d := &downDialer{}
	events := make(chan session.StateEvent, 64)
	cfg.Dial = d.dial
	cfg.OnState = func(s *session.Session, ev session.StateEvent) {
		select {
		case events <- ev:
		default:
			panic("state events not read")
		}
	}
	tg, in := memSetup(t, 1, 1, nil, cfg)
	return tg, in, d, events
}

func waitStateEvent(t *testing.T, events chan session.StateEvent, want session.SessionState) session.StateEvent {
	t.Helper()
	timeout := time.NewTimer(15 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case ev := <-events:
			if ev.To == want {
				return ev
			}
		case <-timeout.C:
			t.Fatalf("no move to %s", want)
		}
	}
}

func resetSession(t *testing.T, tg *iscsitest.Target, s *session.Session) {
	t.Helper()
	for _, c := range s.Conns() {
		if tc := tg.Conn(s.TSIH(), c.CID()); tc != nil {
			tc.Reset()
		}
	}
}

// Recovery is on by default: a session whose connection the target resets
// stays in the table (recovering), comes back as the same *Session, and
// its move through the states reaches Config.OnState.
func TestRecoveryByDefault(t *testing.T) {
	tg, in, _, events := recoverySetup(t, Config{})
	s := in.Sessions(memTarget)[0]
	old := s.TSIH()
	resetSession(t, tg, s)
	waitStateEvent(t, events, session.SessionRecovering)
	if got := in.Sessions(memTarget); len(got) != 1 || got[0] != s {
		t.Fatalf("table while recovering: %v", got)
	}
	ev := waitStateEvent(t, events, session.SessionUp)
	if ev.TSIH == old || s.State() != session.SessionUp || s.Recovery().Reconnects != 1 {
		t.Fatalf("after recovery: event %+v, state %v, info %+v", ev, s.State(), s.Recovery())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.ReadCapacity(ctx, 0); err != nil {
		t.Fatalf("I/O after recovery: %v", err)
	}
	if r := logoutWait(t, in, logout.Options{}); r.Outcome != logout.Success {
		t.Fatalf("logout after recovery: %v", r.Outcome)
	}
}

// NoRecovery: a lost session stays in the table, lost, until a logout; the
// logout reconnects once and logs it out, so the target drops it.
func TestLostSessionStaysUntilLogout(t *testing.T) {
	tg, in, _, events := recoverySetup(t, Config{RecoveryConfig: RecoveryConfig{NoRecovery: true}})
	s := in.Sessions(memTarget)[0]
	resetSession(t, tg, s)
	waitStateEvent(t, events, session.SessionLost)
	if got := in.Sessions(memTarget); len(got) != 1 || got[0] != s {
		t.Fatalf("table after the loss: %v, want the lost session", got)
	}
	r := logoutWait(t, in, logout.Options{})
	if r.Outcome != logout.Success || !r.Sessions[0].LoggedOut || r.Sessions[0].State != session.SessionLost {
		t.Fatalf("logout of a lost session: %v %+v", r.Outcome, r.Sessions)
	}
	if n := len(in.Sessions(memTarget)); n != 0 {
		t.Fatalf("%d sessions left", n)
	}
	if n := liveAtTarget(tg); n != 0 {
		t.Fatalf("the target still has %d live sessions", n)
	}
}

// LogoutFromTarget while the session recovers and the target is down:
// bounded by the deadline, the session reported not logged out, its
// connection unreachable, with how long the target may keep it; the session
// stays in the table, failed. Once the target is back a second logout
// logs it out.
func TestLogoutRecoveringTargetDown(t *testing.T) {
	tg, in, d, events := recoverySetup(t, Config{})
	s := in.Sessions(memTarget)[0]
	d.down.Store(true)
	resetSession(t, tg, s)
	waitStateEvent(t, events, session.SessionRecovering)
	start := time.Now()
	r := logoutWait(t, in, logout.Options{Deadline: time.Second})
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("logout took %v with a 1 s deadline", took)
	}
	sr := r.Sessions[0]
	if r.Outcome != logout.Failed || sr.LoggedOut || sr.State != session.SessionRecovering || len(sr.Conns) != 1 ||
		sr.Conns[0].State != logout.ConnUnreachable || !errors.Is(sr.Conns[0].Err, session.ErrTargetUnreachable) || sr.RetainUntil.IsZero() {
		t.Fatalf("logout while the target is down: %v %+v", r.Outcome, r.Sessions)
	}
	t.Logf("%s", sr.Conns[0].Detail())
	if got := in.Sessions(memTarget); len(got) != 1 || got[0] != s || s.State() != session.SessionFailed {
		t.Fatalf("table after the failed logout: %v (state %v)", got, s.State())
	}
	d.down.Store(false)
	r = logoutWait(t, in, logout.Options{Deadline: 5 * time.Second})
	if r.Outcome != logout.Success || r.Sessions[0].State != session.SessionFailed {
		t.Fatalf("logout with the target back: %v %+v", r.Outcome, r.Sessions)
	}
	if n := liveAtTarget(tg); n != 0 || len(in.Sessions(memTarget)) != 0 {
		t.Fatalf("after the logout: %d live at the target, %d in the table", n, len(in.Sessions(memTarget)))
	}
}
