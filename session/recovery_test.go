package session

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/testutil"
	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/pdu"
)

// gate is a dialer whose target can be made unreachable: while down, every
// dial fails at once (a refused connection), and each attempt is signaled.
type gate struct {
	down  atomic.Bool
	dials chan struct{}
}

func newGate() *gate { return &gate{dials: make(chan struct{}, 1)} }

func (g *gate) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if g.down.Load() {
		select {
		case g.dials <- struct{}{}:
		default:
		}
		return nil, fmt.Errorf("dial %s: the test's gate is down (connection refused)", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// recoveryConfig is a session to tg that recovers, with Time2Wait 0, its
// state changes sent to events.
func recoveryConfig(tg *iscsitest.Target, g *gate, rc RecoveryConfig, events chan StateEvent) Config {
	cfg := testTargetConfig(tg, nil)
	p := DefaultParams()
	p.DefaultTime2Wait = 0
	cfg.Params = &p
	cfg.Recovery = &rc
	cfg.Dial = g.dial
	cfg.LoginTimeout = 5 * time.Second
	cfg.OnState = func(s *Session, ev StateEvent) {
		select {
		case events <- ev:
		default:
			panic("recovery test: state events not read")
		}
	}
	return cfg
}

// waitState reads events until one moves the session to want.
func waitState(t *testing.T, events chan StateEvent, want SessionState) StateEvent {
	t.Helper()
	timeout := time.NewTimer(15 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case ev := <-events:
			t.Logf("state %s -> %s (tsih %d, attempts %d, last error %v)", ev.From, ev.To, ev.TSIH, ev.Recovery.Attempts, ev.Recovery.LastErr)
			if ev.To == want {
				return ev
			}
		case <-timeout.C:
			t.Fatalf("the session never became %s", want)
		}
	}
}

// resetAll makes the target reset (RST) every connection of s.
func resetAll(t *testing.T, tg *iscsitest.Target, s *Session) {
	t.Helper()
	tsih := s.TSIH()
	n := 0
	for _, c := range s.Conns() {
		if tc := tg.Conn(tsih, c.CID()); tc != nil {
			tc.Reset()
			n++
		}
	}
	if n == 0 {
		t.Fatalf("the target has no connection of session %d", tsih)
	}
}

// downSession logs in a session with rc to a new in-memory target, takes
// the target away (the gate refuses dials, the connections reset) and
// returns once the session recovers; the test's end closes it.
func downSession(t *testing.T, ctx context.Context, rc RecoveryConfig) (*iscsitest.Target, *Session, *gate, chan StateEvent) {
	t.Helper()
	tg := newTestTarget(t, iscsitest.Config{})
	g := newGate()
	events := make(chan StateEvent, 64)
	s := mustLogin(t, ctx, recoveryConfig(tg, g, rc, events))
	t.Cleanup(func() { s.Close() })
	g.down.Store(true)
	resetAll(t, tg, s)
	waitState(t, events, SessionRecovering)
	return tg, s, g, events
}

// waitConns waits until s has n connections up.
func waitConns(t *testing.T, s *Session, n int) {
	t.Helper()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		s.mu.Lock()
		got, ch := len(s.conns), s.rec.changed
		s.mu.Unlock()
		if got == n {
			return
		}
		select {
		case <-ch:
		case <-timeout.C:
			t.Fatalf("session has %d connections, want %d", got, n)
		}
	}
}

// Writers keep writing while the target resets every connection of the
// session, five times: each time the session recovers (same ISID, new
// TSIH, both connections back), no write fails, and every write read back
// afterwards, through the session and on the target, is byte for byte what
// was acknowledged last.
func TestRecoveryResumesIO(t *testing.T) {
	tg := newTestTarget(t, iscsitest.Config{UnitAttentionOnLogin: true})
	g := newGate()
	events := make(chan StateEvent, 64)
	ctx := interopCtx(t)
	s := mustLogin(t, ctx, recoveryConfig(tg, g, RecoveryConfig{ReplacementTimeout: 20 * time.Second}, events))
	defer s.Close()
	if _, err := s.AddConnection(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadCapacity(ctx, 0); err != nil { // the login's UNIT ATTENTION
		t.Fatal(err)
	}
	const writers, blocks, slots = 4, 8, 16
	ld := testutil.StartRegionLoad(t, ctx, testutil.RegionLoadConfig{Workers: writers, Blocks: blocks, Slots: slots,
		StopOnError: true, NewIO: func(int) testutil.RegionIO {
			return testutil.RegionIO{Write: func(lba uint64, b []byte) error { return s.Write(ctx, 0, lba, 512, b) }}
		}})
	const rounds = 5
	tsihs := map[uint16]bool{s.TSIH(): true}
	isid := s.ISID()
	for r := 0; r < rounds; r++ {
		ld.WaitOps(t, 1, 20*time.Second)
		resetAll(t, tg, s)
		waitState(t, events, SessionRecovering)
		ev := waitState(t, events, SessionUp)
		if tsihs[ev.TSIH] || ev.TSIH != s.TSIH() || s.ISID() != isid {
			t.Fatalf("round %d: reinstated as TSIH %d (ISID %x), seen before: %v", r, ev.TSIH, s.ISID(), tsihs)
		}
		tsihs[ev.TSIH] = true
		waitConns(t, s, 2)
		// I/O resumes: more writes complete after the reinstatement.
		ld.WaitOps(t, 1, 20*time.Second)
	}
	acked, errs := ld.Stop()
	for _, err := range errs {
		t.Errorf("write failed: %v", err)
	}
	info := s.Recovery()
	if info.Reconnects != rounds || info.State != SessionUp {
		t.Errorf("recovery info %+v: want %d reconnects, up", info, rounds)
	}
	t.Logf("%d writes, %d retried", ld.Ops(), info.Retries)
	lun := tg.LUNData(0)
	for lba, data := range acked {
		got := make([]byte, len(data))
		if err := s.Read(ctx, 0, lba, 512, got); err != nil {
			t.Fatalf("read back LBA %d: %v", lba, err)
		}
		if !bytes.Equal(got, data) || !bytes.Equal(lun[lba*512:lba*512+uint64(len(data))], data) {
			t.Fatalf("writer %d: LBA %d does not hold the acknowledged write", lba/(slots*blocks), lba)
		}
	}
	// The target closed each old session when the new one logged in.
	for _, si := range tg.Sessions() {
		if si.TSIH != s.TSIH() && !si.Ended && !si.Failed {
			t.Errorf("the target still has the old session %d live: %+v", si.TSIH, si)
		}
	}
	mustLogout(t, ctx, s)
}

// The target is unreachable for a while: the session retries with backoff,
// a command submitted meanwhile waits, and completes once the target is
// back; the time from the target's return to the command's completion is
// well under a second with Time2Wait 0.
func TestRecoveryTargetDownThenBack(t *testing.T) {
	ctx := interopCtx(t)
	tg, s, g, _ := downSession(t, ctx, RecoveryConfig{ReplacementTimeout: 20 * time.Second})
	for i := 0; i < 3; i++ { // three failed attempts
		<-g.dials
	}
	done := make(chan error, 1)
	data := make([]byte, 4096)
	rand.Read(data)
	go func() { done <- s.Write(ctx, 0, 100, 512, data) }()
	select {
	case err := <-done:
		t.Fatalf("a write completed while the target was down: %v", err)
	case <-g.dials:
	}
	if info := s.Recovery(); info.State != SessionRecovering || info.Attempts < 3 || info.LastErr == nil || info.NextTry.IsZero() {
		t.Fatalf("recovery info while down: %+v", info)
	}
	back := time.Now()
	g.down.Store(false)
	if err := <-done; err != nil {
		t.Fatalf("write after the target came back: %v", err)
	}
	took := time.Since(back)
	t.Logf("target back to first I/O done: %v", took)
	if took > 2*time.Second {
		t.Errorf("the first I/O took %v after the target came back", took)
	}
	if !bytes.Equal(tg.LUNData(0)[100*512:100*512+4096], data) {
		t.Error("the write is not on the target")
	}
	mustLogout(t, ctx, s)
}

// A target that stays down: at the replacement timeout the session fails,
// Ended closes, and a command fails at once with ErrSessionFailed (never
// sent). A logout then tries one reconnect within its context and says the
// target was unreachable.
func TestRecoveryReplacementTimeout(t *testing.T) {
	ctx := interopCtx(t)
	_, s, _, events := downSession(t, ctx, RecoveryConfig{ReplacementTimeout: 300 * time.Millisecond})
	start := time.Now()
	_, err := s.Execute(ctx, &Command{CDB: []byte{0, 0, 0, 0, 0, 0}}) // TEST UNIT READY
	if !errors.Is(err, ErrSessionFailed) || !errors.Is(err, ErrNotSent) {
		t.Fatalf("command across the replacement timeout: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the command waited %v", d)
	}
	waitState(t, events, SessionFailed)
	select {
	case <-s.Ended():
	default:
		t.Fatal("Ended not closed on a failed session")
	}
	if _, err := s.Execute(ctx, &Command{CDB: []byte{0, 0, 0, 0, 0, 0}}); !errors.Is(err, ErrSessionFailed) {
		t.Fatalf("command on a failed session: %v", err)
	}
	lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	start = time.Now()
	res, err := s.Logout(lctx, LogoutOptions{})
	if !errors.Is(err, ErrTargetUnreachable) || res.OK() {
		t.Fatalf("logout of a failed session with the target down: %+v, %v", res, err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("logout took %v past its 2 s context", d)
	}
}

// With a negative replacement timeout commands do not wait: they fail at
// once while the session recovers, and go through once it has.
func TestRecoveryFailFast(t *testing.T) {
	ctx := interopCtx(t)
	_, s, g, events := downSession(t, ctx, RecoveryConfig{ReplacementTimeout: -1})
	if _, err := s.Execute(ctx, &Command{CDB: []byte{0, 0, 0, 0, 0, 0}}); !errors.Is(err, ErrSessionRecovering) || !errors.Is(err, ErrNotSent) {
		t.Fatalf("command while recovering: %v", err)
	}
	g.down.Store(false)
	waitState(t, events, SessionUp)
	if _, err := s.Execute(ctx, &Command{CDB: []byte{0, 0, 0, 0, 0, 0}}); err != nil {
		t.Fatalf("command after recovery: %v", err)
	}
	mustLogout(t, ctx, s)
}

// The target resets the connection on a write's SCSI Command: the write
// was sent, and is sent again on the reinstated session (the default), or
// fails with its outcome unknown under NoRetryWrites. A command that ends
// with a SCSI status is never retried.
func TestRecoveryWriteInFlight(t *testing.T) {
	for _, noRetry := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoRetryWrites=%v", noRetry), func(t *testing.T) {
			isWrite := func(ev *iscsitest.Event) bool {
				c, ok := ev.PDU.(*pdu.SCSICommand)
				return ok && c.Write
			}
			tg := newTestTarget(t, iscsitest.Config{Hook: iscsitest.Once(iscsitest.When(isWrite, iscsitest.Reset))})
			g := newGate()
			events := make(chan StateEvent, 64)
			ctx := interopCtx(t)
			s := mustLogin(t, ctx, recoveryConfig(tg, g, RecoveryConfig{NoRetryWrites: noRetry}, events))
			defer s.Close()
			data := make([]byte, 4096)
			rand.Read(data)
			err := s.Write(ctx, 0, 8, 512, data)
			waitState(t, events, SessionUp)
			switch {
			case noRetry && !errors.Is(err, ErrOutcomeUnknown):
				t.Fatalf("write in flight at the reset, not retried: %v, want outcome unknown", err)
			case !noRetry && err != nil:
				t.Fatalf("write in flight at the reset: %v, want it retried", err)
			case !noRetry && !bytes.Equal(tg.LUNData(0)[8*512:8*512+4096], data):
				t.Fatal("the retried write is not on the target")
			}
			retries := s.Recovery().Retries
			// Past the end of the LUN: CHECK CONDITION, never retried.
			_, err = s.Execute(ctx, &Command{CDB: []byte{0x28, 0, 0xff, 0xff, 0xff, 0xf0, 0, 0, 1, 0}, Read: make([]byte, 512)})
			var se *SCSIError
			if !errors.As(err, &se) || s.Recovery().Retries != retries {
				t.Fatalf("read past the end: %v (retries %d -> %d)", err, retries, s.Recovery().Retries)
			}
			mustLogout(t, ctx, s)
		})
	}
}

// Logout while the session recovers: the recovery stops; with the target
// down the logout reports it unreachable within its context; with the
// target back, its one reconnect logs the session out at the target.
func TestLogoutWhileRecovering(t *testing.T) {
	for _, back := range []bool{false, true} {
		t.Run(fmt.Sprintf("targetBack=%v", back), func(t *testing.T) {
			tg := newTestTarget(t, iscsitest.Config{})
			g := newGate()
			events := make(chan StateEvent, 64)
			ctx := interopCtx(t)
			s := mustLogin(t, ctx, recoveryConfig(tg, g, RecoveryConfig{}, events))
			defer s.Close()
			isid := s.ISID()
			g.down.Store(true)
			resetAll(t, tg, s)
			waitState(t, events, SessionRecovering)
			<-g.dials
			if back {
				g.down.Store(false)
			}
			lctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			start := time.Now()
			res, err := s.Logout(lctx, LogoutOptions{})
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("logout took %v past its 1 s context", d)
			}
			if !back {
				if !errors.Is(err, ErrTargetUnreachable) || res.OK() || s.LoggedOut() {
					t.Fatalf("logout with the target down: %+v, %v", res, err)
				}
				if st := s.State(); st != SessionClosed {
					t.Fatalf("state after the logout: %v", st)
				}
				return
			}
			if err != nil || !res.OK() || !s.LoggedOut() {
				t.Fatalf("logout with the target back: %+v, %v", res, err)
			}
			live := 0
			for _, si := range tg.Sessions() {
				if si.ISID == isid && !si.Ended {
					live++
				}
			}
			if live != 0 {
				t.Fatalf("the target still has %d sessions of the ISID", live)
			}
		})
	}
}

// Close while recovering stops the recovery at once.
func TestCloseWhileRecovering(t *testing.T) {
	ctx := interopCtx(t)
	_, s, _, events := downSession(t, ctx, RecoveryConfig{})
	start := time.Now()
	s.Close()
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Close took %v", d)
	}
	waitState(t, events, SessionClosed)
	if _, err := s.Execute(ctx, &Command{CDB: []byte{0, 0, 0, 0, 0, 0}}); err == nil || errors.Is(err, ErrSessionFailed) {
		t.Fatalf("command after Close: %v", err)
	}
}

func TestRecoveryBackoff(t *testing.T) {
	rc := RecoveryConfig{MinBackoff: 100 * time.Millisecond, MaxBackoff: 400 * time.Millisecond}
	for n, hi := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond, 9: 400 * time.Millisecond} {
		for i := 0; i < 50; i++ {
			if d := rc.backoff(n); d < hi/2 || d > hi {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", n, d, hi/2, hi)
			}
		}
	}
}
