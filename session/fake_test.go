package session

import (
	"context"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/internal/testutil"
)

// wait bounds every wait of these tests for something that should happen.
const wait = 5 * time.Second

// quiet is how long a test waits to see that something does not happen.
const quiet = 100 * time.Millisecond

// fakeTiming is the fake targets' share of wait and quiet.
var fakeTiming = faketarget.Timing{Wait: wait, Quiet: quiet}

// testConfig is a Config for the fake target with keepalive off.
func testConfig() Config {
	return Config{InitiatorName: "iqn.2026-01.test:initiator", TargetName: "iqn.2026-01.test:target",
		Portal: "fake:3260", NOPInterval: -1}
}

// fakeSession logs a session in to a fake target and returns both; the
// test's cleanup closes them and waits for their goroutines.
func fakeSession(t testing.TB, cfg Config, o faketarget.Login) (*Session, *faketarget.Target) {
	t.Helper()
	s, srv := fakeSessionServer(t, cfg, o)
	return s, srv.Targets()[0]
}

// fakeSessionServer is fakeSession for tests that add connections.
func fakeSessionServer(t testing.TB, cfg Config, o faketarget.Login) (*Session, *faketarget.Server) {
	t.Helper()
	if cfg.Portal == "" {
		cfg.Portal = "fake:3260"
	}
	srv := faketarget.NewServer(t, fakeTiming, o)
	s, _ := fakeLogin(t, srv, cfg)
	return s, srv
}

// fakeLogin logs a session in through srv, a fake target server over
// net.Pipe or TCP, and returns it with the target of its connection; the
// test's cleanup closes the session.
func fakeLogin(t testing.TB, srv testutil.Server, cfg Config) (*Session, *faketarget.Target) {
	t.Helper()
	return testutil.FakeLogin(t, srv, fakeTiming, func(ctx context.Context, dial testutil.Dial) (*Session, error) {
		cfg.Dial = dial
		return Login(ctx, cfg)
	}, func(s *Session) { s.Close() })
}

// fakeLoginErr logs in to fake targets that run script, one per connection
// dialed, and returns Login's error (the session, if any, is closed).
func fakeLoginErr(t testing.TB, cfg Config, script func(f *faketarget.Target) error) error {
	t.Helper()
	var dials int
	return fakeLoginErrN(t, cfg, &dials, script)
}

// fakeLoginErrN is fakeLoginErr counting the connections dialed in dials.
func fakeLoginErrN(t testing.TB, cfg Config, dials *int, script func(f *faketarget.Target) error) error {
	t.Helper()
	n, err := testutil.ScriptedLogin(t, fakeTiming, script, func(ctx context.Context, dial testutil.Dial) error {
		cfg.Dial = dial
		s, err := Login(ctx, cfg)
		if s != nil {
			s.Close()
		}
		return err
	})
	*dials = n
	return err
}

type execResult struct {
	res *Result
	err error
}

// goExecute runs Execute in a goroutine, for the fake target to answer.
func goExecute(ctx context.Context, s *Session, cmd *Command) <-chan execResult {
	return testutil.Go(func() execResult {
		res, err := s.Execute(ctx, cmd)
		return execResult{res, err}
	})
}

// waitExec waits for the result goExecute sends.
func waitExec(t testing.TB, ch <-chan execResult) execResult {
	t.Helper()
	return testutil.Recv(t, ch, wait, "Execute did not return")
}

func readCmd(n int) *Command {
	return &Command{LUN: 1, CDB: rw16(0x88, 0, n, 512), Read: make([]byte, n)}
}

func writeCmd(data []byte) *Command {
	return &Command{LUN: 1, CDB: rw16(0x8a, 0, len(data), 512), Write: data}
}

// pattern is testutil.Pattern.
var pattern = testutil.Pattern
