package initiator

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/session"
)

// heldDialer holds every dial while hold is set, as a target coming back
// does (its listener not yet answering): each held dial is signaled on
// held and goes on once release is closed, or ends with its context.
type heldDialer struct {
	hold    atomic.Bool
	held    chan struct{}
	release chan struct{}
}

func (d *heldDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if d.hold.Load() {
		select {
		case d.held <- struct{}{}:
		default:
		}
		select {
		case <-d.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

// LogoutFromTarget while the target is coming back: the recovery's
// reconnect is under way (its dial not answered yet) when the logout
// starts; the logout stops it, reconnects once itself, and, the target
// answering within the logout's deadline, logs the session out for real:
// success, the session gone from the table and from the target.
func TestLogoutRecoveringTargetComingBack(t *testing.T) {
	d := &heldDialer{held: make(chan struct{}, 8), release: make(chan struct{})}
	events := make(chan session.StateEvent, 64)
	tg, in := memSetup(t, 1, 1, nil, Config{Dial: d.dial, RecoveryConfig: RecoveryConfig{OnState: func(s *session.Session, ev session.StateEvent) {
		select {
		case events <- ev:
		default:
			panic("state events not read")
		}
	}}})
	s := in.Sessions(memTarget)[0]
	d.hold.Store(true)
	resetSession(t, tg, s)
	waitStateEvent(t, events, session.SessionRecovering)
	wait := func(what string) {
		t.Helper()
		select {
		case <-d.held:
		case <-time.After(15 * time.Second):
			t.Fatalf("no %s dial", what)
		}
	}
	wait("recovery's")
	op, err := in.LogoutFromTargetWith(memTarget, logout.Options{Deadline: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	wait("logout's")
	close(d.release)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := op.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("logout took %v with a 5 s deadline", took)
	}
	if r.Outcome != logout.Success || len(r.Sessions) != 1 || !r.Sessions[0].LoggedOut {
		t.Fatalf("logout while the target came back: %v %+v", r.Outcome, r.Sessions)
	}
	if n := liveAtTarget(tg); n != 0 || len(in.Sessions(memTarget)) != 0 {
		t.Fatalf("after the logout: %d live at the target, %d in the table", n, len(in.Sessions(memTarget)))
	}
	if st := s.State(); st != session.SessionLoggedOut {
		t.Fatalf("session state after the logout: %v", st)
	}
}
