package session

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/pdu"
)

// tgtd targets of TestTgtd.
const (
	tgtdNoAuth = iota + 1
	tgtdCHAP
	tgtdMutual
)

const (
	tgtdUser         = "goiscsi-user"
	tgtdSecret       = "initiator-secret-1"
	tgtdTargetUser   = "goiscsi-target"
	tgtdTargetSecret = "target-secret-22"
)

func tgtdIQN(tid int) string { return fmt.Sprintf("iqn.2026-01.org.goiscsi:tgtd-%d", tid) }

// TestTgtd runs the session against tgtd: discovery, logins with and without
// CHAP, digests, I/O of every size and parameter combination, concurrent
// commands, keepalive, task management, and logout with tgtd's own view
// checked afterwards. Every connection is recorded and decoded by tshark.
func TestTgtd(t *testing.T) {
	tg := peers.StartTgtd(t)
	for tid := tgtdNoAuth; tid <= tgtdMutual; tid++ {
		if _, err := tg.AddDiskTarget(tid, tgtdIQN(tid), 64<<20); err != nil {
			t.Fatal(err)
		}
	}
	// tgtd allows only what its own settings list: offer digests.
	for _, k := range []string{"HeaderDigest", "DataDigest"} {
		if err := tg.SetParam(tgtdNoAuth, k, "CRC32C,None"); err != nil {
			t.Fatal(err)
		}
	}
	if err := tg.AddAccount(tgtdUser, tgtdSecret); err != nil {
		t.Fatal(err)
	}
	if err := tg.AddAccount(tgtdTargetUser, tgtdTargetSecret); err != nil {
		t.Fatal(err)
	}
	for _, tid := range []int{tgtdCHAP, tgtdMutual} {
		if err := tg.BindAccount(tid, tgtdUser, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := tg.BindAccount(tgtdMutual, tgtdTargetUser, true); err != nil {
		t.Fatal(err)
	}

	// config returns a Config for target tid, recording into rec.
	config := func(tid int, rec *recorder) Config {
		return Config{InitiatorName: initiatorIQN, TargetName: tgtdIQN(tid), Portal: tg.Addr, WrapConn: rec.wrap}
	}
	// noSessions checks tgtd's own view: no I_T nexus left on tid.
	noSessions := func(t *testing.T, tid int) {
		t.Helper()
		eventually(t, "tgtd still has sessions after logout", func() (bool, string) {
			n, err := tg.Sessions(tid)
			if err != nil {
				return false, err.Error()
			}
			return len(n) == 0, fmt.Sprintf("%+v", n)
		})
	}

	t.Run("Discovery", func(t *testing.T) {
		ctx := interopCtx(t)
		rec := newRecorder(t, tg.Port)
		cfg := config(0, rec)
		targets, err := Discover(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		found := map[string][]string{}
		for _, dt := range targets {
			found[dt.Name] = dt.Addresses()
		}
		for tid := tgtdNoAuth; tid <= tgtdMutual; tid++ {
			if !slices.Contains(found[tgtdIQN(tid)], tg.Addr) {
				t.Errorf("SendTargets: %s at %v, want %s (all: %+v)", tgtdIQN(tid), found[tgtdIQN(tid)], tg.Addr, targets)
			}
		}
		// The portal it reports is reachable: log in through it.
		cfg = config(tgtdNoAuth, rec)
		cfg.Portal = found[tgtdIQN(tgtdNoAuth)][0]
		s := mustLogin(t, ctx, cfg)
		mustLogout(t, ctx, s)
		rec.check()
		noSessions(t, tgtdNoAuth)
	})

	t.Run("NoAuth", func(t *testing.T) {
		ctx := interopCtx(t)
		rec := newRecorder(t, tg.Port)
		s := mustLogin(t, ctx, config(tgtdNoAuth, rec))
		logParams(t, "tgtd", s.Params())
		if s.TSIH() == 0 {
			t.Error("TSIH 0")
		}
		n, err := tg.Sessions(tgtdNoAuth)
		if err != nil || len(n) != 1 || n[0].Initiator != initiatorIQN {
			t.Fatalf("tgtd sessions while logged in: %+v %v", n, err)
		}
		inq, err := s.Inquiry(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("INQUIRY: %+v", inq)
		if inq.PeripheralType != 0 {
			t.Errorf("peripheral type %d, want a disk", inq.PeripheralType)
		}
		capy, err := s.ReadCapacity(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		if capy.BlockSize != 512 || capy.Bytes() != 64<<20 {
			t.Errorf("READ CAPACITY(16): %+v", capy)
		}
		luns, err := s.ReportLUNs(ctx)
		if err != nil || !slices.Contains(luns, 1) {
			t.Errorf("REPORT LUNS: %v %v", luns, err)
		}
		if err := s.TestUnitReady(ctx, 1); err != nil {
			t.Errorf("TEST UNIT READY: %v", err)
		}
		mustLogout(t, ctx, s)
		ops := rec.opcodes()
		if ops[pdu.OpLogoutRequest] != 1 || ops[pdu.OpLogoutResponse] != 1 {
			t.Errorf("capture: %d Logout Requests, %d Responses", ops[pdu.OpLogoutRequest], ops[pdu.OpLogoutResponse])
		}
		rec.check()
		noSessions(t, tgtdNoAuth)
	})

	for _, tc := range []struct {
		name string
		tid  int
		chap CHAP
	}{
		{"CHAP", tgtdCHAP, CHAP{User: tgtdUser, Secret: tgtdSecret}},
		{"CHAPMD5Only", tgtdCHAP, CHAP{User: tgtdUser, Secret: tgtdSecret, Algorithms: []int{CHAPMD5}}},
		{"MutualCHAP", tgtdMutual, CHAP{User: tgtdUser, Secret: tgtdSecret, TargetUser: tgtdTargetUser, TargetSecret: tgtdTargetSecret}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := interopCtx(t)
			rec := newRecorder(t, tg.Port)
			cfg := config(tc.tid, rec)
			cfg.CHAP = &tc.chap
			s := mustLogin(t, ctx, cfg)
			if s.chapAvoid == CHAPSHA256 {
				t.Logf("tgtd took CHAP_A=7 for SHA-1: logged in on the second try without it")
			}
			if _, err := s.ReadCapacity(ctx, 1); err != nil {
				t.Fatal(err)
			}
			mustLogout(t, ctx, s)
			rec.check()
			noSessions(t, tc.tid)
		})
	}

	t.Run("WrongSecret", func(t *testing.T) {
		ctx := interopCtx(t)
		for _, tc := range []struct {
			name string
			tid  int
			chap CHAP
		}{
			{"initiator secret", tgtdCHAP, CHAP{User: tgtdUser, Secret: "not-the-secret"}},
			{"unknown user", tgtdCHAP, CHAP{User: "mallory", Secret: tgtdSecret}},
			{"no CHAP", tgtdCHAP, CHAP{}},
		} {
			rec := newRecorder(t, tg.Port)
			cfg := config(tc.tid, rec)
			if tc.chap.User != "" {
				cfg.CHAP = &tc.chap
			}
			s, err := Login(ctx, cfg)
			if err == nil {
				s.Close()
				t.Fatalf("%s: login succeeded", tc.name)
			}
			var le *LoginError
			if !errors.As(err, &le) || le.Status != pdu.LoginAuthFailed || !strings.Contains(err.Error(), "authentication failure (0x0201)") {
				t.Errorf("%s: %v (%T), want a LoginError 0x0201", tc.name, err, err)
			}
			rec.check()
		}
		// Mutual CHAP where tgtd answers with another secret than ours.
		rec := newRecorder(t, tg.Port)
		cfg := config(tgtdMutual, rec)
		cfg.CHAP = &CHAP{User: tgtdUser, Secret: tgtdSecret, TargetUser: tgtdTargetUser, TargetSecret: "some-other-secret"}
		_, err := Login(ctx, cfg)
		var ne *NegotiationError
		if !errors.As(err, &ne) || ne.Key != "CHAP_R" {
			t.Errorf("mutual CHAP with a wrong target secret: %v", err)
		}
		rec.check()
		noSessions(t, tgtdCHAP)
		noSessions(t, tgtdMutual)
	})

	t.Run("Digests", func(t *testing.T) {
		ctx := interopCtx(t)
		rec := newRecorder(t, tg.Port)
		cfg := config(tgtdNoAuth, rec)
		p := DefaultParams()
		p.HeaderDigest, p.DataDigest = true, true
		cfg.Params = &p
		s := mustLogin(t, ctx, cfg)
		logParams(t, "tgtd with digests", s.Params())
		if !s.Params().HeaderDigest || !s.Params().DataDigest {
			t.Fatalf("digests not negotiated: %+v", s.Params())
		}
		verifyIO(t, ctx, s, 1, 0, 512, []int{512, 64<<10 + 512, 1<<20 + 512})
		mustLogout(t, ctx, s)
		rec.check()
		noSessions(t, tgtdNoAuth)
	})

	t.Run("IO", func(t *testing.T) {
		for _, combo := range []struct{ immediate, initialR2T bool }{{true, false}, {true, true}, {false, false}, {false, true}} {
			t.Run(fmt.Sprintf("ImmediateData=%v,InitialR2T=%v", combo.immediate, combo.initialR2T), func(t *testing.T) {
				ctx := interopCtx(t)
				rec := newRecorder(t, tg.Port)
				cfg := config(tgtdNoAuth, rec)
				p := DefaultParams()
				p.ImmediateData, p.InitialR2T = combo.immediate, combo.initialR2T
				cfg.Params = &p
				s := mustLogin(t, ctx, cfg)
				got := s.Params()
				logParams(t, "tgtd", got)
				if got.ImmediateData != combo.immediate || !got.InitialR2T {
					// tgtd forces InitialR2T=Yes.
					t.Errorf("ImmediateData=%v InitialR2T=%v", got.ImmediateData, got.InitialR2T)
				}
				verifyIO(t, ctx, s, 1, 8, 512, ioSizes)
				mustLogout(t, ctx, s)
				rec.check()
				noSessions(t, tgtdNoAuth)
			})
		}
	})

	t.Run("Concurrent32", func(t *testing.T) {
		ctx := interopCtx(t)
		rec := newRecorder(t, tg.Port)
		s := mustLogin(t, ctx, config(tgtdNoAuth, rec))
		concurrentIO(t, ctx, s, 1, 512, 32, 64<<10)
		mustLogout(t, ctx, s)
		rec.check()
		noSessions(t, tgtdNoAuth)
	})

	t.Run("NOP", func(t *testing.T) {
		ctx := interopCtx(t)
		rec := newRecorder(t, tg.Port)
		cfg := config(tgtdNoAuth, rec)
		cfg.NOPInterval, cfg.NOPTimeout = 50*time.Millisecond, 2*time.Second
		s := mustLogin(t, ctx, cfg)
		c := s.Conns()[0]
		// Idle long enough for several keepalive NOP-Outs; the point of
		// the test is the passing of time.
		time.Sleep(600 * time.Millisecond)
		if c.Err() != nil || !c.Active() {
			t.Fatalf("connection after idling: %v", c.Err())
		}
		verifyIO(t, ctx, s, 1, 0, 512, []int{4096})
		mustLogout(t, ctx, s)
		ops := rec.opcodes()
		t.Logf("capture: %d NOP-Out, %d NOP-In", ops[pdu.OpNOPOut], ops[pdu.OpNOPIn])
		if len(peers.Missing("tshark")) == 0 && (ops[pdu.OpNOPOut] < 3 || ops[pdu.OpNOPIn] < 3) {
			t.Errorf("capture: %d NOP-Out, %d NOP-In; want several", ops[pdu.OpNOPOut], ops[pdu.OpNOPIn])
		}
		rec.check()
		noSessions(t, tgtdNoAuth)
	})

	t.Run("TaskManagement", func(t *testing.T) {
		ctx := interopCtx(t)
		rec := newRecorder(t, tg.Port)
		s := mustLogin(t, ctx, config(tgtdNoAuth, rec))
		verifyIO(t, ctx, s, 1, 0, 512, []int{4096})
		// ABORT TASK for a tag no command has (any more).
		resp, err := s.TaskManagement(ctx, pdu.TMFAbortTask, 1, 0x00123456)
		if err != nil {
			t.Fatalf("ABORT TASK: %v", err)
		}
		t.Logf("tgtd answers ABORT TASK for a finished tag with %s (%d)", resp.String(), resp)
		if resp != pdu.TMFComplete && resp != pdu.TMFNoSuchTask {
			t.Errorf("ABORT TASK response %d", resp)
		}
		resp, err = s.TaskManagement(ctx, pdu.TMFLogicalUnitReset, 1, 0)
		if err != nil || resp != pdu.TMFComplete {
			t.Fatalf("LUN RESET: %d %v", resp, err)
		}
		// A reset makes the next command meet UNIT ATTENTION; the helpers
		// retry it.
		if _, err := s.ReadCapacity(ctx, 1); err != nil {
			t.Fatal(err)
		}
		verifyIO(t, ctx, s, 1, 0, 512, []int{4096})
		mustLogout(t, ctx, s)
		rec.check()
		noSessions(t, tgtdNoAuth)
	})

	// A command canceled while tgtd answers it: Execute returns at once,
	// the session goes on.
	t.Run("Cancel", func(t *testing.T) {
		ctx := interopCtx(t)
		rec := newRecorder(t, tg.Port)
		s := mustLogin(t, ctx, config(tgtdNoAuth, rec))
		for i := 0; i < 20; i++ {
			cctx, cancel := context.WithCancel(ctx)
			buf := make([]byte, 8<<20)
			done := make(chan error, 1)
			go func() { done <- s.Read(cctx, 1, 0, 512, buf) }()
			time.Sleep(time.Duration(i) * 100 * time.Microsecond)
			cancel()
			err := <-done
			clear(buf) // the buffer is ours again once Read returned
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Fatalf("canceled read: %v", err)
			}
		}
		verifyIO(t, ctx, s, 1, 0, 512, []int{64 << 10})
		mustLogout(t, ctx, s)
		t.Logf("capture: %d ABORT TASK requests for 20 canceled reads", rec.opcodes()[pdu.OpTaskMgmtRequest])
		rec.check()
		noSessions(t, tgtdNoAuth)
	})

	t.Run("Params", func(t *testing.T) {
		p, err := tg.Params(tgtdNoAuth)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("tgtd's own parameters for target %d: %v", tgtdNoAuth, p)
	})
}
