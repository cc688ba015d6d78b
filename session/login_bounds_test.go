package session

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/pdu"
)

// tcpTargets are loopback TCP listeners whose every accepted connection runs
// a script on a fake target; the test's cleanup closes the listeners and
// the connections and waits for the scripts.
type tcpTargets struct {
	lns     []net.Listener
	accepts atomic.Int32
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
}

func newTCPTargets(t *testing.T, n int) *tcpTargets {
	t.Helper()
	tt := &tcpTargets{}
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		tt.lns = append(tt.lns, ln)
	}
	t.Cleanup(tt.close)
	return tt
}

func (tt *tcpTargets) addr(i int) string { return tt.lns[i].Addr().String() }

// serve runs script(i, f) for each connection listener i accepts.
func (tt *tcpTargets) serve(t *testing.T, script func(i int, f *faketarget.Target) error) {
	for i, ln := range tt.lns {
		tt.wg.Add(1)
		go func() {
			defer tt.wg.Done()
			for {
				nc, err := ln.Accept()
				if err != nil {
					return
				}
				tt.accepts.Add(1)
				tt.mu.Lock()
				tt.conns = append(tt.conns, nc)
				tt.mu.Unlock()
				f := faketarget.New(t, nc, fakeTiming)
				tt.wg.Add(1)
				go func() {
					defer tt.wg.Done()
					defer f.Close()
					script(i, f)
				}()
			}
		}()
	}
}

func (tt *tcpTargets) close() {
	for _, ln := range tt.lns {
		ln.Close()
	}
	tt.mu.Lock()
	for _, nc := range tt.conns {
		nc.Close()
	}
	tt.mu.Unlock()
	tt.wg.Wait()
}

// loginTimed logs in with cfg and returns Login's error and how long it took.
func loginTimed(t *testing.T, cfg Config) (time.Duration, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	start := time.Now()
	s, err := Login(ctx, cfg)
	d := time.Since(start)
	if s != nil {
		s.Close()
	}
	return d, err
}

// wantTimedOut fails t unless err is a login that timed out at its
// LoginTimeout: not before it, and well before the old per-hop bound.
func wantTimedOut(t *testing.T, d time.Duration, err error, timeout, most time.Duration) {
	t.Helper()
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("error %v, want a login that timed out (context.DeadlineExceeded)", err)
	}
	if d < timeout-10*time.Millisecond || d > most {
		t.Fatalf("login ended after %v; want LoginTimeout %v (less than %v)", d, timeout, most)
	}
}

// TestLoginTimeoutCoversRedirects: two targets that redirect to each other,
// each after a long pause, each pause within LoginTimeout. One LoginTimeout
// bounds the whole login: it ends at 1 s, not after 5 hops of 0.8 s (the
// default MaxRedirects 4 plus the first).
func TestLoginTimeoutCoversRedirects(t *testing.T) {
	const stall = 800 * time.Millisecond
	tt := newTCPTargets(t, 2)
	done := make(chan struct{})
	defer close(done)
	tt.serve(t, func(i int, f *faketarget.Target) error {
		req, _, err := f.ReadLogin()
		if err != nil {
			return err
		}
		select {
		case <-time.After(stall): // a slow target, as hostile as it may be
		case <-done:
			return nil
		}
		return f.AnswerLogin(req, pdu.LoginResponse{StatusClass: 1, StatusDetail: 1},
			pdu.AppendText(nil, pdu.KV{Key: "TargetAddress", Value: tt.addr(1-i) + ",1"}))
	})
	cfg := testConfig()
	cfg.Portal = tt.addr(0)
	cfg.LoginTimeout = time.Second
	d, err := loginTimed(t, cfg)
	wantTimedOut(t, d, err, cfg.LoginTimeout, 3*time.Second)
	if !strings.Contains(err.Error(), "over 1 redirect") || !strings.Contains(err.Error(), tt.addr(1)) {
		t.Errorf("error %q does not say it timed out at %s after a redirect", err, tt.addr(1))
	}
	if n := tt.accepts.Load(); n != 2 {
		t.Errorf("targets accepted %d connections, want 2 (the first and one redirect)", n)
	}
}

// TestLoginTimeoutSilentTarget: a target that accepts the connection and
// never answers ends the login at LoginTimeout.
func TestLoginTimeoutSilentTarget(t *testing.T) {
	tt := newTCPTargets(t, 1)
	tt.serve(t, func(i int, f *faketarget.Target) error {
		f.ReadLogin()
		_, _, err := f.ReadLogin() // until the initiator gives up
		return err
	})
	cfg := testConfig()
	cfg.Portal = tt.addr(0)
	cfg.LoginTimeout = 300 * time.Millisecond
	d, err := loginTimed(t, cfg)
	wantTimedOut(t, d, err, cfg.LoginTimeout, 2*time.Second)
}

// TestLoginTimeoutDribblingTarget: a target that answers one byte at a
// time, each well within any read's patience, ends the login at
// LoginTimeout all the same.
func TestLoginTimeoutDribblingTarget(t *testing.T) {
	tt := newTCPTargets(t, 1)
	done := make(chan struct{})
	defer close(done)
	tt.serve(t, func(i int, f *faketarget.Target) error {
		req, _, err := f.ReadLogin()
		if err != nil {
			return err
		}
		b := f.Wire(&pdu.LoginResponse{Transit: true, CSG: req.CSG, NSG: pdu.StageOperational, ISID: req.ISID, ITT: req.ITT},
			faketarget.Text("AuthMethod=None", "TargetPortalGroupTag=1"))
		tick := time.NewTicker(30 * time.Millisecond)
		defer tick.Stop()
		for _, c := range b { // about 3 s for the whole PDU
			select {
			case <-tick.C:
			case <-done:
				return nil
			}
			if err := f.SendRaw([]byte{c}); err != nil {
				return err
			}
		}
		return nil
	})
	cfg := testConfig()
	cfg.Portal = tt.addr(0)
	cfg.LoginTimeout = 400 * time.Millisecond
	d, err := loginTimed(t, cfg)
	wantTimedOut(t, d, err, cfg.LoginTimeout, 2*time.Second)
}

// TestLoginTransitChecked: a Login Response with T=1 must move to the
// next stage we asked for (RFC 7143 §11.12.3, §11.13.3): forward, to a stage
// that exists, no further than asked. Anything else is a protocol error on
// NSG, before any key of the response is acted on.
func TestLoginTransitChecked(t *testing.T) {
	for _, c := range []struct {
		name string
		csg  uint8 // the stage the bad response answers
		nsg  uint8
		why  string
	}{
		{"security stage, T=1 to the security stage", pdu.StageSecurity, pdu.StageSecurity, "does not go forward"},
		{"security stage, T=1 to reserved stage 2", pdu.StageSecurity, 2, "reserved"},
		{"security stage, T=1 to full feature, not asked", pdu.StageSecurity, pdu.StageFullFeature, "skipped a stage"},
		{"operational stage, T=1 back to the security stage", pdu.StageOperational, pdu.StageSecurity, "does not go forward"},
		{"operational stage, T=1 to the operational stage", pdu.StageOperational, pdu.StageOperational, "does not go forward"},
		{"operational stage, T=1 to reserved stage 2", pdu.StageOperational, 2, "reserved"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var dials int
			err := fakeLoginErrN(t, testConfig(), &dials, func(f *faketarget.Target) error {
				req, _, err := f.ReadLogin()
				if err != nil {
					return err
				}
				if c.csg == pdu.StageOperational {
					if err := f.AnswerLogin(req, pdu.LoginResponse{Transit: true, NSG: pdu.StageOperational},
						faketarget.Text("AuthMethod=None")); err != nil {
						return err
					}
					if req, _, err = f.ReadLogin(); err != nil {
						return err
					}
				}
				if req.CSG != c.csg {
					return errors.New("initiator is not in the stage the case answers")
				}
				resp := pdu.LoginResponse{Transit: true, CSG: req.CSG, NSG: c.nsg, ISID: req.ISID, ITT: req.ITT, TSIH: 0x1234}
				if err := f.Send(&resp, faketarget.Text("AuthMethod=None")); err != nil {
					return err
				}
				f.ReadLogin() // until the initiator closes
				return nil
			})
			pe := faketarget.AsProtocolError(t, err, pdu.OpLoginResponse, "NSG")
			if pe.Value != uint64(c.nsg) || !strings.Contains(pe.Reason, c.why) {
				t.Fatalf("%v: want NSG %d refused as %q", err, c.nsg, c.why)
			}
			if dials != 1 {
				t.Fatalf("%d connections dialed, want 1", dials)
			}
		})
	}
}

// TestLoginRefusesUnimplementedErrorRecoveryLevel: an ErrorRecoveryLevel
// the package does not implement is refused before anything is dialed,
// never offered; every level up to implementedERL is offered as asked, and
// the target's answer is the session's.
func TestLoginRefusesUnimplementedErrorRecoveryLevel(t *testing.T) {
	for _, c := range []struct {
		erl  int
		want string
	}{
		{-1, "ErrorRecoveryLevel -1 is outside 0-2"},
		{3, "ErrorRecoveryLevel 3 is outside 0-2"},
	} {
		cfg := testConfig()
		p := DefaultParams()
		p.ErrorRecoveryLevel = c.erl
		cfg.Params = &p
		var dials int
		err := fakeLoginErrN(t, cfg, &dials, func(f *faketarget.Target) error {
			return f.ServeLogin(faketarget.Login{})
		})
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ErrorRecoveryLevel %d: %v; want ErrInvalidConfig saying %q", c.erl, err, c.want)
		}
		if dials != 0 {
			t.Errorf("ErrorRecoveryLevel %d: %d connections dialed, want none", c.erl, dials)
		}
	}
	if DefaultParams().ErrorRecoveryLevel != implementedERL {
		t.Errorf("DefaultParams offers ErrorRecoveryLevel %d, want the implemented %d", DefaultParams().ErrorRecoveryLevel, implementedERL)
	}
	for erl := 0; erl <= implementedERL; erl++ {
		cfg := testConfig()
		p := DefaultParams()
		p.ErrorRecoveryLevel = erl
		cfg.Params = &p
		s, f := fakeSession(t, cfg, faketarget.Login{})
		if v, ok := pdu.Lookup(f.LoginKeys(), "ErrorRecoveryLevel"); !ok || v != strconv.Itoa(erl) {
			t.Errorf("offered ErrorRecoveryLevel=%q (%v), want %d", v, ok, erl)
		}
		// The fake target echoes the offer.
		if s.Params().ErrorRecoveryLevel != erl {
			t.Errorf("offer %d: negotiated ErrorRecoveryLevel %d", erl, s.Params().ErrorRecoveryLevel)
		}
	}
	// A target that does less answers less: its answer decides.
	s, _ := fakeSession(t, testConfig(), faketarget.Login{Answers: map[string]string{"ErrorRecoveryLevel": "0"}})
	if s.Params().ErrorRecoveryLevel != 0 {
		t.Errorf("target answered 0: negotiated ErrorRecoveryLevel %d", s.Params().ErrorRecoveryLevel)
	}
}
