package session

import (
	"context"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/faketarget"
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
	srv := faketarget.NewServer(t, fakeTiming, o)
	cfg.Dial = srv.Dial
	if cfg.Portal == "" {
		cfg.Portal = "fake:3260"
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	s, err := Login(ctx, cfg)
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	srv.Next()
	t.Cleanup(func() { s.Close() }) // runs before srv.Close
	return s, srv
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
	sc := faketarget.NewScripted(t, fakeTiming, script)
	cfg.Dial = sc.Dial
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	s, err := Login(ctx, cfg)
	if s != nil {
		s.Close()
	}
	sc.Close()
	*dials = sc.Dials()
	return err
}
