package reliability

import (
	"context"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/internal/testutil"
	"github.com/goiscsi/iscsi/session"
)

// wait bounds every wait for something that should happen.
const wait = 10 * time.Second

// quiet is how long a test watches for something that should not happen.
const quiet = 100 * time.Millisecond

// fakeTiming is the fake targets' share of wait and quiet. The fake targets
// (internal/faketarget) are for the rows that need exact bytes on the wire:
// bad digests, raw headers.
var fakeTiming = faketarget.Timing{Wait: wait, Quiet: quiet}

// testConfig is a session Config for the fake target, keepalive off.
func testConfig() session.Config {
	return session.Config{InitiatorName: "iqn.2026-11.org.goiscsi:reliability", TargetName: "iqn.2026-11.org.goiscsi:fake",
		Portal: "fake:3260", NOPInterval: -1, LoginTimeout: wait}
}

// fakeSession logs a session in to a fake target; the test's cleanup closes
// both and waits for their goroutines.
func fakeSession(t testing.TB, cfg session.Config, o faketarget.Login) (*session.Session, *faketarget.Target) {
	t.Helper()
	s, srv := fakeSessionServer(t, cfg, o)
	return s, srv.Targets()[0]
}

func fakeSessionServer(t testing.TB, cfg session.Config, o faketarget.Login) (*session.Session, *faketarget.Server) {
	t.Helper()
	srv := faketarget.NewServer(t, fakeTiming, o)
	s, _ := testutil.FakeLogin(t, srv, fakeTiming, func(ctx context.Context, dial testutil.Dial) (*session.Session, error) {
		cfg.Dial = dial
		return session.Login(ctx, cfg)
	}, func(s *session.Session) { s.Close() })
	return s, srv
}

// fakeLoginErr logs in to fake targets that run script, one per connection
// dialed, and returns Login's error; a session, if any, is closed.
func fakeLoginErr(t testing.TB, cfg session.Config, script func(f *faketarget.Target) error) error {
	t.Helper()
	_, err := testutil.ScriptedLogin(t, fakeTiming, script, func(ctx context.Context, dial testutil.Dial) error {
		cfg.Dial = dial
		s, err := session.Login(ctx, cfg)
		if s != nil {
			s.Close()
		}
		return err
	})
	return err
}

type execResult struct {
	res *session.Result
	err error
}

// goExecute runs Execute in a goroutine, for the target to answer.
func goExecute(ctx context.Context, s *session.Session, cmd *session.Command) <-chan execResult {
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

// waitEnded waits for the session to have no connection left.
func waitEnded(t testing.TB, s *session.Session) {
	t.Helper()
	testutil.Recv(t, s.Ended(), wait, "session did not end")
}

func readCmd(n int) *session.Command {
	return &session.Command{LUN: 1, CDB: testutil.RW16(0x88, 0, n, 512), Read: make([]byte, n)}
}

func writeCmd(data []byte) *session.Command {
	return &session.Command{LUN: 1, CDB: testutil.RW16(0x8a, 0, len(data), 512), Write: data}
}

// pattern is testutil.Pattern.
var pattern = testutil.Pattern
