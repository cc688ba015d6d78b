package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/testutil"
	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/pdu"
)

// The in-memory target does what tgtd and istgt will not: InitialR2T=No,
// CHAP with SHA-1, SHA-256 and SHA3-256, MC/S with its own view of the
// connections, and faults on demand.

func newTestTarget(t testing.TB, cfg iscsitest.Config) *iscsitest.Target {
	tg := iscsitest.NewTarget(cfg)
	t.Cleanup(tg.Close)
	return tg
}

func testTargetConfig(tg *iscsitest.Target, rec *testutil.Recorder) Config {
	cfg := Config{InitiatorName: initiatorIQN, TargetName: iscsitest.DefaultName, Portal: tg.Addr()}
	if rec != nil {
		cfg.WrapConn = rec.Wrap
	}
	return cfg
}

func targetPort(tg *iscsitest.Target) int {
	_, p, _ := net.SplitHostPort(tg.Addr())
	n, _ := strconv.Atoi(p)
	return n
}

func TestInMemoryIO(t *testing.T) {
	for _, combo := range []struct{ immediate, initialR2T bool }{{true, false}, {true, true}, {false, false}, {false, true}} {
		t.Run(fmt.Sprintf("ImmediateData=%v,InitialR2T=%v", combo.immediate, combo.initialR2T), func(t *testing.T) {
			tg := newTestTarget(t, iscsitest.Config{InitialR2T: false, ImmediateData: true, UnitAttentionOnLogin: true,
				SeparateReadStatus: combo.immediate})
			rec := testutil.NewRecorder(t, targetPort(tg))
			ctx := interopCtx(t)
			cfg := testTargetConfig(tg, rec)
			p := DefaultParams()
			p.ImmediateData, p.InitialR2T = combo.immediate, combo.initialR2T
			cfg.Params = &p
			s := mustLogin(t, ctx, cfg)
			got := s.Params()
			logParams(t, "iscsitest", got)
			if got.ImmediateData != combo.immediate || got.InitialR2T != combo.initialR2T {
				t.Fatalf("ImmediateData=%v InitialR2T=%v", got.ImmediateData, got.InitialR2T)
			}
			verifyIO(t, ctx, s, 0, 8, 512, ioSizes)
			data := randomData(t, 1<<20)
			if err := s.Write(ctx, 0, 4096, 512, data); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(tg.LUNData(0)[4096*512:4096*512+len(data)], data) {
				t.Error("the target's LUN does not hold what was written")
			}
			testutil.ConcurrentIO(t, ctx, s, 0, 512, 32, 64<<10, mrand.Uint64())
			mustLogout(t, ctx, s)
			rec.Check()
			st := tg.Stats()
			if !combo.initialR2T && st.Received[pdu.OpSCSIDataOut] == 0 {
				t.Error("no Data-Out at all")
			}
			t.Logf("target stats: logins %d, received %v", st.Logins, st.Received)
		})
	}
}

func TestInMemoryMCS(t *testing.T) {
	for _, n := range []int{2, 4} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			// InitialR2T=Yes: iscsitest rejects the unsolicited Data-Out of
			// a command it holds back for CmdSN order on another
			// connection (reported to its owner).
			tg := newTestTarget(t, iscsitest.Config{MaxConnections: 4, InitialR2T: true, ImmediateData: true})
			rec := testutil.NewRecorder(t, targetPort(tg))
			ctx := interopCtx(t)
			s := mustLogin(t, ctx, testTargetConfig(tg, rec))
			for i := 1; i < n; i++ {
				if _, err := s.AddConnection(ctx); err != nil {
					t.Fatalf("AddConnection: %v", err)
				}
			}
			info := tg.Sessions()
			if len(info) != 1 || len(info[0].CIDs) != n || info[0].TSIH != s.TSIH() {
				t.Fatalf("target sees %+v", info)
			}
			before := map[uint16]uint64{}
			for _, c := range s.Conns() {
				before[c.CID()] = c.commands.Load()
			}
			testutil.ConcurrentIO(t, ctx, s, 0, 512, 64, 64<<10, mrand.Uint64())
			for _, c := range s.Conns() {
				if c.commands.Load() == before[c.CID()] {
					t.Errorf("CID %d carried no command", c.CID())
				}
			}
			if _, err := s.AddConnection(ctx); n == 4 && err == nil {
				t.Error("a fifth connection over MaxConnections=4")
			}
			mustLogout(t, ctx, s)
			info = tg.Sessions()
			if !info[0].LoggedOut || !info[0].Ended {
				t.Errorf("target's view after logout: %+v", info[0])
			}
			rec.Check()
		})
	}
}

func TestInMemoryCHAP(t *testing.T) {
	algs := map[int]string{CHAPMD5: "MD5", CHAPSHA1: "SHA-1", CHAPSHA256: "SHA-256", CHAPSHA3256: "SHA3-256"}
	for alg, name := range algs {
		for _, mutual := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s,mutual=%v", name, mutual), func(t *testing.T) {
				tc := &iscsitest.CHAP{User: "alice", Secret: "alice-secret-1"}
				ours := &CHAP{User: "alice", Secret: "alice-secret-1"}
				if mutual {
					tc.MutualUser, tc.MutualSecret = "target", "target-secret-2"
					ours.TargetUser, ours.TargetSecret = "target", "target-secret-2"
				}
				tg := newTestTarget(t, iscsitest.Config{CHAP: tc, CHAPAlgorithms: []int{alg}})
				rec := testutil.NewRecorder(t, targetPort(tg))
				ctx := interopCtx(t)
				cfg := testTargetConfig(tg, rec)
				cfg.CHAP = ours // the default offer: 8,7,6,5
				s := mustLogin(t, ctx, cfg)
				verifyIO(t, ctx, s, 0, 0, 512, []int{4096})
				mustLogout(t, ctx, s)

				bad := *ours
				bad.Secret = "wrong-secret-here"
				cfg.CHAP = &bad
				_, err := Login(ctx, cfg)
				var le *LoginError
				if !errors.As(err, &le) || le.Status != pdu.LoginAuthFailed {
					t.Errorf("wrong secret: %v", err)
				}
				if mutual {
					bad = *ours
					bad.TargetSecret = "not-the-target-secret"
					cfg.CHAP = &bad
					_, err := Login(ctx, cfg)
					var ne *NegotiationError
					if !errors.As(err, &ne) || ne.Key != "CHAP_R" {
						t.Errorf("wrong target secret: %v", err)
					}
				}
				rec.Check()
			})
		}
	}
}

func TestInMemoryAsyncLogout(t *testing.T) {
	tg := newTestTarget(t, iscsitest.Config{MaxConnections: 4})
	ctx := interopCtx(t)
	events := make(chan AsyncEvent, 4)
	cfg := testTargetConfig(tg, nil)
	cfg.OnAsync = func(c *Conn, ev AsyncEvent) bool { events <- ev; return false }

	// One connection: event 1 logs the whole session out (reason 0).
	s := mustLogin(t, ctx, cfg)
	msg := pdu.AsyncMessage{AsyncEvent: pdu.AsyncLogoutRequest, Parameter3: 0}
	for i := 0; i < 2; i++ {
		if err := tg.SendAsync(s.TSIH(), 0, msg, nil); err != nil && i == 0 {
			t.Fatal(err)
		}
	}
	select {
	case <-s.Ended():
	case <-time.After(wait):
		t.Fatal("session did not log out")
	}
	<-events
	if !s.LoggedOut() {
		t.Error("LoggedOut false")
	}
	if st := tg.Stats(); st.LogoutRequests[pdu.LogoutCloseSession] != 1 {
		t.Errorf("Logout Requests %v, want one of reason 0", st.LogoutRequests)
	}

	// Two connections: event 1 on CID 1 logs that connection out (reason 1).
	s = mustLogin(t, ctx, cfg)
	c1, err := s.AddConnection(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tg.SendAsync(s.TSIH(), 1, pdu.AsyncMessage{AsyncEvent: pdu.AsyncLogoutRequest, Parameter3: 2}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c1.Done():
	case <-time.After(wait):
		t.Fatal("connection 1 did not log out")
	}
	<-events
	if st := tg.Stats(); st.Logouts[pdu.LogoutCloseConnection] != 1 {
		t.Errorf("Logouts %v, want one of reason 1", st.Logouts)
	}
	if len(s.Conns()) != 1 || s.LoggedOut() {
		t.Fatalf("%d connections left, LoggedOut %v", len(s.Conns()), s.LoggedOut())
	}
	verifyIO(t, ctx, s, 0, 0, 512, []int{4096})
	mustLogout(t, ctx, s)
}

func TestInMemoryLogoutFaults(t *testing.T) {
	tests := []struct {
		name  string
		hook  iscsitest.Hook
		check func(t *testing.T, r LogoutResult)
	}{
		{"cleanup failed", iscsitest.FailLogout(nil, pdu.LogoutCleanupFailed, 2, 20), func(t *testing.T, r LogoutResult) {
			var le *LogoutResponseError
			if !r.Responded || r.Response != 3 || r.Time2Wait != 2 || r.Time2Retain != 20 || !errors.As(r.Err, &le) {
				t.Errorf("%+v", r)
			}
		}},
		{"no response", iscsitest.NoLogoutResponse(nil), func(t *testing.T, r LogoutResult) {
			if !errors.Is(r.Err, ErrLogoutTimeout) {
				t.Errorf("%+v", r)
			}
		}},
		{"FIN", iscsitest.CloseOnLogout(nil), func(t *testing.T, r LogoutResult) {
			if !errors.Is(r.Err, ErrConnReset) {
				t.Errorf("%+v", r)
			}
		}},
		{"RST", iscsitest.ResetOnLogout(nil), func(t *testing.T, r LogoutResult) {
			if !errors.Is(r.Err, ErrConnReset) {
				t.Errorf("%+v", r)
			}
		}},
		{"reject immediate", iscsitest.Once(iscsitest.RejectLogout(nil, pdu.RejectImmediateCommand)), func(t *testing.T, r LogoutResult) {
			if !r.OK() {
				t.Errorf("%+v", r)
			}
		}},
		{"reject", iscsitest.RejectLogout(nil, pdu.RejectProtocolError), func(t *testing.T, r LogoutResult) {
			var rj *RejectError
			if !errors.As(r.Err, &rj) || rj.Op != pdu.OpLogoutRequest {
				t.Errorf("%+v", r)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tg := newTestTarget(t, iscsitest.Config{Hook: tt.hook})
			ctx := interopCtx(t)
			s := mustLogin(t, ctx, testTargetConfig(tg, nil))
			r := s.Conns()[0].Logout(ctx, LogoutOptions{Reason: pdu.LogoutCloseSession, Timeout: 300 * time.Millisecond})
			tt.check(t, r)
			if len(s.Conns()) != 0 {
				t.Errorf("connection still up after its logout")
			}
		})
	}
}

// The target pings with NOP-In; the session answers and is not dropped.
func TestInMemoryTargetPings(t *testing.T) {
	tg := newTestTarget(t, iscsitest.Config{NopInInterval: 20 * time.Millisecond, NopInTimeout: time.Second})
	ctx := interopCtx(t)
	s := mustLogin(t, ctx, testTargetConfig(tg, nil))
	deadline := time.Now().Add(wait)
	for tg.Stats().Sent[pdu.OpNOPIn] < 5 {
		if time.Now().After(deadline) {
			t.Fatal("target sent no NOP-In")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := tg.Stats(); st.Received[pdu.OpNOPOut] == 0 {
		t.Fatalf("no NOP-Out answer: %+v", st)
	}
	verifyIO(t, ctx, s, 0, 0, 512, []int{4096})
	mustLogout(t, ctx, s)
}

// A target insisting on digests gets them when we offer them, and refuses a
// login that offers only None.
func TestInMemoryRequiredDigests(t *testing.T) {
	tg := newTestTarget(t, iscsitest.Config{HeaderDigests: []string{"CRC32C"}, DataDigests: []string{"CRC32C"}})
	ctx := interopCtx(t)
	cfg := testTargetConfig(tg, nil)
	if _, err := Login(ctx, cfg); err == nil {
		t.Error("login without digests to a target that requires them")
	} else {
		t.Logf("offering None to a target requiring CRC32C: %v", err)
	}
	p := DefaultParams()
	p.HeaderDigest, p.DataDigest = true, true
	cfg.Params = &p
	s := mustLogin(t, ctx, cfg)
	if !s.Params().HeaderDigest || !s.Params().DataDigest {
		t.Fatalf("%+v", s.Params())
	}
	verifyIO(t, ctx, s, 0, 0, 512, []int{512, 64<<10 + 512})
	mustLogout(t, ctx, s)
}

// Over net.Pipe, as the other packages' tests use it.
func TestInMemoryPipe(t *testing.T) {
	tg := newTestTarget(t, iscsitest.Config{})
	ctx := interopCtx(t)
	cfg := testTargetConfig(tg, nil)
	cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) { return tg.Pipe(), nil }
	s := mustLogin(t, ctx, cfg)
	verifyIO(t, ctx, s, 0, 0, 512, []int{512, 1 << 20})
	mustLogout(t, ctx, s)
}

// TestDrainSession: with DrainSession, a reason-1 logout of one connection
// waits for the command running on the session's other connection before
// its request goes out (istgt drops such a command when another connection
// of its session logs out); without it, the request goes out at once.
func TestDrainSession(t *testing.T) {
	for _, drain := range []bool{true, false} {
		t.Run(fmt.Sprintf("DrainSession=%v", drain), func(t *testing.T) {
			arrived := make(chan struct{})
			logoutSeen := make(chan struct{})
			var order []string
			var mu sync.Mutex
			note := func(s string) {
				mu.Lock()
				order = append(order, s)
				mu.Unlock()
			}
			hook := func(ev *iscsitest.Event) iscsitest.Action {
				switch p := ev.PDU.(type) {
				case *pdu.SCSICommand:
					if ev.CID == 1 && p.Read {
						close(arrived)
						// Hold the command until cid 0's Logout Request
						// arrives, or long enough to show it does not.
						select {
						case <-logoutSeen:
						case <-time.After(300 * time.Millisecond):
						}
						note("command answered")
					}
				case *pdu.LogoutRequest:
					if ev.CID == 0 {
						note("logout of cid 0")
						close(logoutSeen)
					}
				}
				return iscsitest.Continue
			}
			tg := newTestTarget(t, iscsitest.Config{Hook: hook})
			ctx := interopCtx(t)
			s := mustLogin(t, ctx, testTargetConfig(tg, nil))
			c1, err := s.AddConnection(ctx)
			if err != nil {
				t.Fatal(err)
			}
			c0 := s.Conns()[0]
			cmdErr := make(chan error, 1)
			go func() {
				buf := make([]byte, 4096)
				_, err := c1.Execute(ctx, &Command{CDB: []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0}, Read: buf})
				cmdErr <- err
			}()
			select {
			case <-arrived:
			case <-ctx.Done():
				t.Fatal("the command did not reach the target")
			}
			r := c0.Logout(ctx, LogoutOptions{Reason: pdu.LogoutCloseConnection, DrainTimeout: 10 * time.Second, DrainSession: drain})
			if !r.OK() {
				t.Fatalf("logout of cid 0: %+v", r)
			}
			if err := <-cmdErr; err != nil {
				t.Fatalf("command on cid 1: %v", err)
			}
			mu.Lock()
			got := fmt.Sprint(order)
			mu.Unlock()
			want := "[command answered logout of cid 0]"
			if !drain {
				want = "[logout of cid 0 command answered]"
			}
			if got != want {
				t.Errorf("order %s, want %s", got, want)
			}
			mustLogout(t, ctx, s)
		})
	}
}

// TestNotSentOnEndedConnection: a command on a connection that has ended
// says it was never sent, and why the connection ended.
func TestNotSentOnEndedConnection(t *testing.T) {
	tg := newTestTarget(t, iscsitest.Config{})
	ctx := interopCtx(t)
	s := mustLogin(t, ctx, testTargetConfig(tg, nil))
	c := s.Conns()[0]
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := c.Execute(ctx, &Command{CDB: []byte{0x00, 0, 0, 0, 0, 0}})
	if !errors.Is(err, ErrNotSent) || !errors.Is(err, ErrClosed) {
		t.Fatalf("Execute on a closed connection: %v; want ErrNotSent and ErrClosed", err)
	}
}
