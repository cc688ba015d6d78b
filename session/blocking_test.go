package session

// Audit 2 of issue 12: every place a goroutine of the session blocks has a
// bound. These tests put an operation in front of a peer that stops
// reading (its writes block: StallConn on a pipe, a zero window on loopback
// TCP), that dribbles a PDU a byte at a time, or that keeps pinging while
// it reads nothing, and check that the operation returns within slack of
// its context, deadline or Close, saying the outcome is unknown. The list
// of blocking points is in docs/RELIABILITY.md ("Every blocking point and
// what ends it").

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/pdu"
)

// outcomeUnknown reports an error that says the command may or may not
// have happened on the target.
func outcomeUnknown(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrConnReset) {
		return true
	}
	m := err.Error()
	return strings.Contains(m, "outcome") && strings.Contains(m, "unknown")
}

// opResult is how an operation boundedOp ran ended: its error, and whether
// it reported success.
type opResult struct {
	err error
	ok  bool
}

// boundedOp runs op on s with a context of opTimeout, failing the test if
// it has not returned by opTimeout+wait, and logs how it ended.
func boundedOp(t *testing.T, name string, s *Session, op func(ctx context.Context, s *Session) (error, bool)) (opResult, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	r, took := returnsWithin(t, opTimeout+wait, func() opResult {
		err, ok := op(ctx, s)
		return opResult{err, ok}
	})
	t.Logf("%s: %v after %v", name, r.err, took)
	return r, took
}

// returnsWithin runs f and returns its result and how long it took,
// failing the test if it has not returned after bound (the goroutine is
// then left to the test's cleanup, which closes the session).
func returnsWithin[T any](t *testing.T, bound time.Duration, f func() T) (T, time.Duration) {
	t.Helper()
	ch := make(chan T, 1)
	start := time.Now()
	go func() { ch <- f() }()
	select {
	case v := <-ch:
		return v, time.Since(start)
	case <-time.After(bound):
		t.Fatalf("still blocked after %v", bound)
	}
	panic("unreachable")
}

// stalledSession logs in to a fake target on a pipe whose initiator end is
// a StallConn, for the test to stop the initiator's writes.
func stalledSession(t *testing.T, cfg Config) (*Session, *faketarget.Target, *faketarget.StallConn) {
	t.Helper()
	var sc *faketarget.StallConn
	cfg.WrapConn = func(c net.Conn) net.Conn {
		sc = faketarget.NewStallConn(c)
		return sc
	}
	s, f := fakeSession(t, cfg, faketarget.Login{})
	return s, f, sc
}

// blockedOn waits for a write to block on sc.
func blockedOn(t *testing.T, sc *faketarget.StallConn) {
	t.Helper()
	select {
	case <-sc.Blocked():
	case <-time.After(wait):
		t.Fatalf("no write blocked in %v", wait)
	}
}

// An operation whose write blocks (the target stopped reading) returns at
// its context's deadline or the logout's Timeout, not when the peer reads
// again (never).
func TestBlockStalledWrite(t *testing.T) {
	type op struct {
		name string
		// run runs the operation with a context ending after opTimeout;
		// it returns the error and whether it reported success.
		run func(ctx context.Context, s *Session) (error, bool)
		// unknown: the error must say the outcome is unknown.
		unknown bool
	}
	ops := []op{
		{"Execute write", func(ctx context.Context, s *Session) (error, bool) {
			_, err := s.Execute(ctx, writeCmd(pattern(64<<10, 5)))
			return err, err == nil
		}, true},
		{"Execute read", func(ctx context.Context, s *Session) (error, bool) {
			_, err := s.Execute(ctx, readCmd(512))
			return err, err == nil
		}, true},
		{"SendTargets", func(ctx context.Context, s *Session) (error, bool) {
			_, err := s.SendTargets(ctx, "All")
			return err, err == nil
		}, false},
		{"TaskManagement", func(ctx context.Context, s *Session) (error, bool) {
			_, err := s.TaskManagement(ctx, pdu.TMFLogicalUnitReset, 1, 0)
			return err, err == nil
		}, false},
		{"Logout Timeout", func(_ context.Context, s *Session) (error, bool) {
			res, err := s.Logout(context.Background(), LogoutOptions{Timeout: opTimeout})
			return err, res.OK()
		}, false},
		{"Logout context", func(ctx context.Context, s *Session) (error, bool) {
			// What logout.Operation.Cancel does: the context ends.
			res, err := s.Logout(ctx, LogoutOptions{Timeout: time.Minute})
			return err, res.OK()
		}, false},
	}
	for _, o := range ops {
		t.Run(o.name, func(t *testing.T) {
			t.Parallel()
			s, _, sc := stalledSession(t, testConfig())
			sc.Stall()
			r, took := boundedOp(t, o.name, s, o.run)
			if took > opTimeout+slack {
				t.Errorf("returned after %v: the blocked write held it past its deadline", took)
			}
			if r.ok || r.err == nil {
				t.Errorf("success reported with the request never sent: %v", r.err)
			}
			if o.unknown && !outcomeUnknown(r.err) {
				t.Errorf("error %q does not say the outcome is unknown", r.err)
			}
		})
	}

	// A write queued behind one that blocks (flushLocked's wait for the
	// flusher) returns at its own deadline too.
	t.Run("write behind a blocked write", func(t *testing.T) {
		t.Parallel()
		s, _, sc := stalledSession(t, testConfig())
		sc.Stall()
		first := goExecute(context.Background(), s, writeCmd(pattern(4096, 6)))
		blockedOn(t, sc)
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		err, took := returnsWithin(t, opTimeout+wait, func() error {
			_, err := s.Execute(ctx, writeCmd(pattern(4096, 7)))
			return err
		})
		if took > opTimeout+slack || !outcomeUnknown(err) && !errors.Is(err, ErrNotSent) {
			t.Errorf("second write: %v after %v", err, took)
		}
		s.Close()
		if r := waitExec(t, first); !outcomeUnknown(r.err) {
			t.Errorf("first write after Close: %v", r.err)
		}
	})

	// Close ends a blocked write at once (the control: it closes the
	// socket).
	t.Run("Close", func(t *testing.T) {
		t.Parallel()
		s, _, sc := stalledSession(t, testConfig())
		sc.Stall()
		ch := goExecute(context.Background(), s, writeCmd(pattern(4096, 8)))
		blockedOn(t, sc)
		_, took := returnsWithin(t, wait, func() error { return s.Close() })
		if took > slack {
			t.Errorf("Close took %v", took)
		}
		if r := waitExec(t, ch); !outcomeUnknown(r.err) {
			t.Errorf("write after Close: %v", r.err)
		}
	})
}

// A target on loopback TCP that stops reading: the socket buffers fill and
// the write blocks in the kernel (zero window). The write returns at its
// context's deadline; a logout and a read queued behind it return at
// theirs.
func TestBlockZeroWindowTCP(t *testing.T) {
	big := func() Config {
		cfg := testConfig()
		p := DefaultParams()
		// All of the write goes unsolicited, with the command.
		p.FirstBurstLength, p.MaxBurstLength = 1<<24-1, 1<<24-1
		cfg.Params = &p
		return cfg
	}
	const size = 8 << 20
	session := func(t *testing.T) (*Session, *faketarget.Target) {
		srv := faketarget.NewTCPServer(t, fakeTiming, faketarget.Login{})
		srv.Buffer = 64 << 10
		s, f := fakeLogin(t, srv, big())
		f.StopReading()
		return s, f
	}

	t.Run("Execute write", func(t *testing.T) {
		s, _ := session(t)
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		err, took := returnsWithin(t, opTimeout+wait, func() error {
			_, err := s.Execute(ctx, writeCmd(make([]byte, size)))
			return err
		})
		t.Logf("write of %d bytes to a zero window: %v after %v", size, err, took)
		if took > opTimeout+slack {
			t.Errorf("returned after %v: the blocked write held it past its deadline", took)
		}
		if !outcomeUnknown(err) {
			t.Errorf("error %v does not say the outcome is unknown", err)
		}
	})

	// Behind a write blocked in the kernel (no deadline of its own): a
	// logout and a read still end at theirs.
	behind := []struct {
		name string
		run  func(ctx context.Context, s *Session) (error, bool)
	}{
		{"Logout", func(_ context.Context, s *Session) (error, bool) {
			res, err := s.Logout(context.Background(), LogoutOptions{Timeout: opTimeout})
			return err, res.OK()
		}},
		{"Execute read", func(ctx context.Context, s *Session) (error, bool) {
			_, err := s.Execute(ctx, readCmd(512))
			return err, err == nil
		}},
	}
	for _, b := range behind {
		t.Run(b.name+" behind a blocked write", func(t *testing.T) {
			s, _ := session(t)
			bg := goExecute(context.Background(), s, writeCmd(make([]byte, size)))
			// Wait for the big write to have gone to the socket (it holds
			// the writer from then on: 8 MiB do not fit in the buffers).
			// No signal says so; the command counter does, polled.
			c := s.Conns()[0]
			for deadline := time.Now().Add(wait); c.commands.Load() == 0; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the write was not sent in %v", wait)
				}
			}
			r, took := boundedOp(t, b.name, s, b.run)
			if took > opTimeout+slack {
				t.Errorf("returned after %v", took)
			}
			if r.ok || r.err == nil {
				t.Errorf("success reported: %v", r.err)
			}
			s.Close()
			if r := waitExec(t, bg); !outcomeUnknown(r.err) {
				t.Errorf("the blocked write after Close: %v", r.err)
			}
		})
	}
}

// dribble writes b to the target's connection one byte per step until done
// or stop is closed or a write fails.
func dribble(f *faketarget.Target, b []byte, step time.Duration, stop <-chan struct{}) {
	tick := time.NewTicker(step)
	defer tick.Stop()
	for i := range b {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		if f.SendRaw(b[i:i+1]) != nil {
			return
		}
	}
}

// A Data-In that comes one byte every 100 ms (its 48-byte header, or its
// data after a whole header) would take a minute; a read with a 1 s context
// returns within slack of it, on a pipe (the reader goroutine reads) and on
// TCP (the command reads its own response), with NOPTimeout at its default
// of 15 s.
func TestBlockDribbledDataIn(t *testing.T) {
	for _, tcp := range []bool{false, true} {
		for _, part := range []string{"header", "data"} {
			name := "pipe/" + part
			if tcp {
				name = "tcp/" + part
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				var s *Session
				var f *faketarget.Target
				if tcp {
					s, f, _ = tcpSession(t, testConfig(), faketarget.Login{})
				} else {
					s, f = fakeSession(t, testConfig(), faketarget.Login{})
				}
				stop := make(chan struct{})
				var wg sync.WaitGroup
				t.Cleanup(func() {
					close(stop)
					wg.Wait()
				})
				ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
				defer cancel()
				start := time.Now()
				ch := goExecute(ctx, s, readCmd(512))
				x := f.Expect(pdu.OpSCSICommand)
				b := f.Wire(&pdu.DataIn{Final: true, HasStatus: true, ITT: x.BHS.ITT(), TTT: 0xffffffff, SeqNums: f.Seq(true)}, pattern(512, 9))
				if part == "data" {
					f.SendRaw(b[:pdu.BHSLen])
					b = b[pdu.BHSLen:]
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					dribble(f, b, 100*time.Millisecond, stop)
				}()
				var r execResult
				select {
				case r = <-ch:
				case <-time.After(opTimeout + wait):
					t.Fatalf("Execute still blocked after %v", opTimeout+wait)
				}
				took := time.Since(start)
				t.Logf("read against a dribble of its %s: %v after %v", part, r.err, took)
				if took > opTimeout+slack {
					t.Errorf("returned after %v: the dribble held it past its deadline", took)
				}
				if !outcomeUnknown(r.err) {
					t.Errorf("error %v does not say the outcome is unknown", r.err)
				}
			})
		}
	}
}

// A target that reads nothing but sends a NOP-In ping every 100 ms: the
// keepalive's answer blocks (and with it whatever waits to write), while
// the pings keep the connection looking alive. A logout and a write return
// at their deadlines; with keepalive on, the connection is found dead
// within NOPInterval + NOPTimeout, since nothing it sends gets through.
func TestBlockPingingPeerNeverReads(t *testing.T) {
	setup := func(t *testing.T, cfg Config) *Session {
		s, f, sc := stalledSession(t, cfg)
		sc.Stall()
		stop := make(chan struct{})
		var wg sync.WaitGroup
		t.Cleanup(func() {
			close(stop)
			wg.Wait()
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for ttt := uint32(1); ; ttt++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if f.Send(&pdu.NOPIn{ITT: 0xffffffff, TTT: ttt, SeqNums: f.Seq(false)}, nil) != nil {
					return
				}
			}
		}()
		blockedOn(t, sc) // the answer to the first ping
		return s
	}

	t.Run("Logout", func(t *testing.T) {
		t.Parallel()
		s := setup(t, testConfig())
		type res struct {
			r   LogoutResult
			err error
		}
		r, took := returnsWithin(t, opTimeout+wait, func() res {
			lr, err := s.Logout(context.Background(), LogoutOptions{Timeout: opTimeout})
			return res{lr, err}
		})
		t.Logf("Logout: %+v after %v", r.r, took)
		if took > opTimeout+slack {
			t.Errorf("returned after %v", took)
		}
		if r.r.OK() || r.err == nil {
			t.Errorf("logout reported success: %+v", r.r)
		}
	})

	t.Run("Execute write", func(t *testing.T) {
		t.Parallel()
		s := setup(t, testConfig())
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		err, took := returnsWithin(t, opTimeout+wait, func() error {
			_, err := s.Execute(ctx, writeCmd(pattern(4096, 10)))
			return err
		})
		t.Logf("write: %v after %v", err, took)
		if took > opTimeout+slack {
			t.Errorf("returned after %v", took)
		}
		if !outcomeUnknown(err) && !errors.Is(err, ErrNotSent) {
			t.Errorf("error %v says neither outcome unknown nor not sent", err)
		}
	})

	t.Run("keepalive", func(t *testing.T) {
		t.Parallel()
		cfg := testConfig()
		cfg.NOPInterval, cfg.NOPTimeout = 200*time.Millisecond, 500*time.Millisecond
		s := setup(t, cfg)
		bound := cfg.NOPInterval + cfg.NOPTimeout + slack
		select {
		case <-s.Ended():
		case <-time.After(bound):
			t.Fatalf("connection still up %v after its writes stopped going out", bound)
		}
		if err := s.all[0].Err(); !errors.Is(err, ErrDeadPeer) && !outcomeUnknown(err) {
			t.Errorf("connection ended with %v, want ErrDeadPeer", err)
		}
	})
}
