package testutil

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/faketarget"
)

// Dial is a session Config.Dial.
type Dial = func(ctx context.Context, network, addr string) (net.Conn, error)

// Server is a faketarget.Server or TCPServer: it dials connections whose
// far end serves a login, and hands over each target once its login is
// over.
type Server interface {
	Dial(ctx context.Context, network, addr string) (net.Conn, error)
	Next() *faketarget.Target
}

// FakeLogin logs in, with login, through srv, and returns what login
// returned and the target of its first connection. login sets dial as the
// Config's Dial; a login error fails the test. The test's cleanup closes
// the session (close) before the server, which NewServer registered first.
func FakeLogin[S any](t testing.TB, srv Server, tm faketarget.Timing,
	login func(ctx context.Context, dial Dial) (S, error), close func(S)) (S, *faketarget.Target) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait(tm))
	defer cancel()
	s, err := login(ctx, srv.Dial)
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	f := srv.Next()
	t.Cleanup(func() { close(s) }) // runs before srv.Close
	return s, f
}

// ScriptedLogin runs login against fake targets that run script, one per
// connection dialed, and returns login's error and how many connections
// were dialed. login sets dial as the Config's Dial and closes the
// session, if any, before it returns.
func ScriptedLogin(t testing.TB, tm faketarget.Timing, script func(f *faketarget.Target) error,
	login func(ctx context.Context, dial Dial) error) (dials int, err error) {
	t.Helper()
	sc := faketarget.NewScripted(t, tm, script)
	ctx, cancel := context.WithTimeout(context.Background(), wait(tm))
	defer cancel()
	err = login(ctx, sc.Dial)
	sc.Close()
	return sc.Dials(), err
}

// wait is tm's bound on a wait, its default included.
func wait(tm faketarget.Timing) time.Duration {
	if tm.Wait == 0 {
		return 5 * time.Second
	}
	return tm.Wait
}
