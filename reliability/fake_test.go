package reliability

import (
	"context"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/faketarget"
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
	cfg.Dial = srv.Dial
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	s, err := session.Login(ctx, cfg)
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	srv.Next()
	t.Cleanup(func() { s.Close() }) // before srv.Close
	return s, srv
}

// fakeLoginErr logs in to fake targets that run script, one per connection
// dialed, and returns Login's error; a session, if any, is closed.
func fakeLoginErr(t testing.TB, cfg session.Config, script func(f *faketarget.Target) error) error {
	t.Helper()
	sc := faketarget.NewScripted(t, fakeTiming, script)
	cfg.Dial = sc.Dial
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	s, err := session.Login(ctx, cfg)
	if s != nil {
		s.Close()
	}
	sc.Close()
	return err
}

type execResult struct {
	res *session.Result
	err error
}

// goExecute runs Execute in a goroutine, for the target to answer.
func goExecute(ctx context.Context, s *session.Session, cmd *session.Command) <-chan execResult {
	ch := make(chan execResult, 1)
	go func() {
		res, err := s.Execute(ctx, cmd)
		ch <- execResult{res, err}
	}()
	return ch
}

func waitExec(t testing.TB, ch <-chan execResult) execResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(wait):
		t.Fatalf("Execute did not return in %v", wait)
	}
	panic("unreachable")
}

// waitEnded waits for the session to have no connection left.
func waitEnded(t testing.TB, s *session.Session) {
	t.Helper()
	select {
	case <-s.Ended():
	case <-time.After(wait):
		t.Fatalf("session did not end in %v", wait)
	}
}

func rw16(op byte, lba uint64, n int) []byte {
	cdb := make([]byte, 16)
	cdb[0] = op
	for i := 0; i < 8; i++ {
		cdb[2+i] = byte(lba >> (56 - 8*i))
	}
	blocks := uint32(n / 512)
	cdb[10], cdb[11], cdb[12], cdb[13] = byte(blocks>>24), byte(blocks>>16), byte(blocks>>8), byte(blocks)
	return cdb
}

func readCmd(n int) *session.Command {
	return &session.Command{LUN: 1, CDB: rw16(0x88, 0, n), Read: make([]byte, n)}
}

func writeCmd(data []byte) *session.Command {
	return &session.Command{LUN: 1, CDB: rw16(0x8a, 0, len(data)), Write: data}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>9)
	}
	return b
}
