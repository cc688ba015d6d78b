package session

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/internal/testutil"
	"github.com/goiscsi/iscsi/pdu"
)

// TestPeers runs the session against every real target installed here, one
// row of the matrix per peer, every row through the same test bodies:
// discovery, login, CHAP (one-way, MD5 only, mutual, wrong secrets),
// digests, I/O of every size and the four InitialR2T/ImmediateData offers,
// 32 concurrent commands, keepalive, task management, canceled commands,
// multiple connections per session, and logout, with the peer's own view
// checked afterwards where it has one. Every connection is recorded and
// decoded by tshark. What a peer does differently is a field of its row.
//
//	go test -race -count=1 -run 'TestPeers/istgt/IO' ./session/
//
// LIO, which needs a VM, has its rows in package interop. Without a peer's
// binaries its row skips, or fails under CI=true (peers.Require).
func TestPeers(t *testing.T) {
	for _, p := range []peer{tgtdPeer(), istgtPeer()} {
		t.Run(p.name, func(t *testing.T) { p.run(t) })
	}
}

// peer is one row of TestPeers.
type peer struct {
	name string
	// start starts the peer for the row, its daemons stopped by t's
	// cleanup.
	start func(t *testing.T) *peerTarget
}

// peerTarget is a started peer: where its targets are and what it does
// differently from RFC 7143's defaults.
type peerTarget struct {
	addr string
	port int
	// iqn is a target without authentication, lun a 64 MiB disk of it in
	// 512-byte blocks.
	iqn string
	lun int
	// listed are the targets SendTargets must name at addr.
	listed []string
	// chap returns a target requiring one-way CHAP (mutual false) or
	// mutual CHAP, at addr, port, and the credentials it takes.
	chap func(t *testing.T, mutual bool) (iqn, addr string, port int, creds CHAP)
	// forcesInitialR2T: InitialR2T is Yes whatever we offer (tgtd forces
	// it; istgt 0.4 refuses "InitialR2T No" in its configuration).
	forcesInitialR2T bool
	// rejectsAuthNone: a CHAP target answers AuthMethod=None with
	// AuthMethod=Reject (istgt), a *NegotiationError on AuthMethod, rather
	// than with status 0x0201 (tgtd).
	rejectsAuthNone bool
	// maxConnections is the MaxConnections the peer allows: tgtd 1.
	maxConnections int
	// logoutQuiet is how long to leave the connection quiet before a
	// Logout Request (see istgtLogout).
	logoutQuiet time.Duration
	// sessions, when set, returns the initiators of the peer's own
	// sessions on target iqn: the peer's view, checked after logout.
	sessions func(iqn string) ([]string, error)
	// ownParams, when set, returns the peer's own settings, for the log.
	ownParams func() (map[string]string, error)
}

// tgtd targets of the tgtd row.
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

// tgtdPeer is tgtd: one daemon, a target per authentication (none, CHAP,
// mutual CHAP); it forces InitialR2T=Yes and MaxConnections=1, and offers
// digests only where its settings list them.
func tgtdPeer() peer {
	return peer{name: "tgtd", start: func(t *testing.T) *peerTarget {
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
		tids := map[string]int{}
		for tid := tgtdNoAuth; tid <= tgtdMutual; tid++ {
			tids[tgtdIQN(tid)] = tid
		}
		return &peerTarget{addr: tg.Addr, port: tg.Port, iqn: tgtdIQN(tgtdNoAuth), lun: 1,
			listed: []string{tgtdIQN(tgtdNoAuth), tgtdIQN(tgtdCHAP), tgtdIQN(tgtdMutual)},
			chap: func(t *testing.T, mutual bool) (string, string, int, CHAP) {
				if mutual {
					return tgtdIQN(tgtdMutual), tg.Addr, tg.Port, CHAP{User: tgtdUser, Secret: tgtdSecret, TargetUser: tgtdTargetUser, TargetSecret: tgtdTargetSecret}
				}
				return tgtdIQN(tgtdCHAP), tg.Addr, tg.Port, CHAP{User: tgtdUser, Secret: tgtdSecret}
			},
			forcesInitialR2T: true, maxConnections: 1,
			sessions: func(iqn string) ([]string, error) {
				n, err := tg.Sessions(tids[iqn])
				var names []string
				for _, x := range n {
					names = append(names, x.Initiator)
				}
				return names, err
			},
			ownParams: func() (map[string]string, error) { return tg.Params(tgtdNoAuth) },
		}
	}}
}

// istgtPeer is istgt: a daemon per authentication; it takes several
// connections per session, refuses InitialR2T=No in its configuration, and
// wants a quiet connection before a logout (see istgtLogout). Its own
// session list is not read.
func istgtPeer() peer {
	return peer{name: "istgt", start: func(t *testing.T) *peerTarget {
		ig := peers.StartIstgt(t, peers.IstgtOptions{})
		t.Cleanup(func() {
			// istgt logs what it disliked; show it.
			var errs []string
			for _, l := range strings.Split(ig.LogTail(2000), "\n") {
				if strings.Contains(l, "ERROR") {
					errs = append(errs, l)
				}
			}
			t.Logf("istgt logged %d error lines: %s", len(errs), strings.Join(errs, "\n"))
		})
		return &peerTarget{addr: ig.Addr, port: ig.Port, iqn: ig.IQN, lun: 0, listed: []string{ig.IQN},
			chap: func(t *testing.T, mutual bool) (string, string, int, CHAP) {
				opts := peers.IstgtOptions{CHAPUser: "goiscsi", CHAPSecret: "istgt-secret-1"}
				creds := CHAP{User: "goiscsi", Secret: "istgt-secret-1"}
				if mutual {
					opts.MutualUser, opts.MutualSecret = "istgt", "istgt-target-22"
					creds.TargetUser, creds.TargetSecret = "istgt", "istgt-target-22"
				}
				ig := peers.StartIstgt(t, opts)
				return ig.IQN, ig.Addr, ig.Port, creds
			},
			forcesInitialR2T: true, rejectsAuthNone: true, maxConnections: 4, logoutQuiet: 50 * time.Millisecond,
		}
	}}
}

// run runs every test body against the peer.
func (p peer) run(t *testing.T) {
	pt := p.start(t)
	for _, b := range []struct {
		name string
		body func(t *testing.T, pt *peerTarget)
	}{
		{"Discovery", testPeerDiscovery},
		{"Login", testPeerLogin},
		{"CHAP", testPeerCHAP},
		{"WrongSecret", testPeerWrongSecret},
		{"Digests", testPeerDigests},
		{"IO", testPeerIO},
		{"Concurrent32", testPeerConcurrent},
		{"NOP", testPeerNOP},
		{"TaskManagement", testPeerTaskManagement},
		{"Cancel", testPeerCancel},
		{"MCS", testPeerMCS},
		{"MCSLogoutPerConnection", testPeerMCSLogoutPerConnection},
		{"QuickLogout", testPeerQuickLogout},
	} {
		t.Run(b.name, func(t *testing.T) { b.body(t, pt) })
	}
	if pt.ownParams != nil {
		own, err := pt.ownParams()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s's own parameters: %v", p.name, own)
	}
}

// config is a Config for the target without authentication, recorded into
// rec.
func (pt *peerTarget) config(rec *testutil.Recorder) Config {
	return Config{InitiatorName: initiatorIQN, TargetName: pt.iqn, Portal: pt.addr, WrapConn: rec.Wrap}
}

// logout logs s out once the connection has been quiet for the peer's
// logoutQuiet, and checks the session ended.
func (pt *peerTarget) logout(t testing.TB, ctx context.Context, s *Session) {
	t.Helper()
	// istgt 0.4 races with itself on a Logout Request that comes within a
	// millisecond or so of its last response: about one time in twenty it
	// closes the connection without a Logout Response (and logs "worker:
	// ***ERROR*** conn->state = 2"), immediate request or not; none in 30
	// tries with 20 ms of quiet before. The wait is for that quiet, so
	// that the logout exchange itself is what the test checks.
	time.Sleep(pt.logoutQuiet)
	mustLogout(t, ctx, s)
}

// noSessions checks the peer's own view, where it has one: no session of
// ours left on iqn.
func (pt *peerTarget) noSessions(t *testing.T, iqn string) {
	t.Helper()
	if pt.sessions == nil {
		return
	}
	testutil.Eventually(t, 10*time.Second, "the peer still has sessions after logout", func() (bool, string) {
		n, err := pt.sessions(iqn)
		if err != nil {
			return false, err.Error()
		}
		return len(n) == 0, fmt.Sprintf("%+v", n)
	})
}

// ioCase logs in to the target without authentication with edit applied to
// its Config, runs body, logs out, runs after (when set) on the complete
// captures, and checks the captures and the peer's view.
func (pt *peerTarget) ioCase(t *testing.T, edit func(*Config), body func(ctx context.Context, s *Session), after func(rec *testutil.Recorder)) {
	ctx := interopCtx(t)
	rec := testutil.NewRecorder(t, pt.port)
	cfg := pt.config(rec)
	if edit != nil {
		edit(&cfg)
	}
	s := mustLogin(t, ctx, cfg)
	body(ctx, s)
	pt.logout(t, ctx, s)
	if after != nil {
		after(rec)
	}
	rec.Check()
	pt.noSessions(t, pt.iqn)
}

func testPeerDiscovery(t *testing.T, pt *peerTarget) {
	ctx := interopCtx(t)
	rec := testutil.NewRecorder(t, pt.port)
	cfg := pt.config(rec)
	cfg.TargetName = ""
	targets, err := Discover(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	found := map[string][]string{}
	for _, dt := range targets {
		found[dt.Name] = dt.Addresses()
	}
	for _, iqn := range pt.listed {
		if !slices.Contains(found[iqn], pt.addr) {
			t.Errorf("SendTargets: %s at %v, want %s (all: %+v)", iqn, found[iqn], pt.addr, targets)
		}
	}
	// The portal it reports is reachable: log in through it.
	cfg = pt.config(rec)
	cfg.Portal = found[pt.iqn][0]
	s := mustLogin(t, ctx, cfg)
	pt.logout(t, ctx, s)
	rec.Check()
	pt.noSessions(t, pt.iqn)
}

func testPeerLogin(t *testing.T, pt *peerTarget) {
	ctx := interopCtx(t)
	rec := testutil.NewRecorder(t, pt.port)
	s := mustLogin(t, ctx, pt.config(rec))
	logParams(t, t.Name(), s.Params())
	if s.TSIH() == 0 {
		t.Error("TSIH 0")
	}
	if pt.sessions != nil {
		n, err := pt.sessions(pt.iqn)
		if err != nil || len(n) != 1 || n[0] != initiatorIQN {
			t.Fatalf("the peer's sessions while logged in: %+v %v", n, err)
		}
	}
	inq, err := s.Inquiry(ctx, pt.lun)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("INQUIRY: %+v", inq)
	if inq.PeripheralType != 0 {
		t.Errorf("peripheral type %d, want a disk", inq.PeripheralType)
	}
	capy, err := s.ReadCapacity(ctx, pt.lun)
	if err != nil {
		t.Fatal(err)
	}
	if capy.BlockSize != 512 || capy.Bytes() != 64<<20 {
		t.Errorf("READ CAPACITY(16): %+v", capy)
	}
	luns, err := s.ReportLUNs(ctx)
	if err != nil || !slices.Contains(luns, pt.lun) {
		t.Errorf("REPORT LUNS: %v %v", luns, err)
	}
	if err := s.TestUnitReady(ctx, pt.lun); err != nil {
		t.Errorf("TEST UNIT READY: %v", err)
	}
	pt.logout(t, ctx, s)
	ops := rec.Opcodes()
	if ops[pdu.OpLogoutRequest] != 1 || ops[pdu.OpLogoutResponse] != 1 {
		t.Errorf("capture: %d Logout Requests, %d Responses", ops[pdu.OpLogoutRequest], ops[pdu.OpLogoutResponse])
	}
	rec.Check()
	pt.noSessions(t, pt.iqn)
}

func testPeerCHAP(t *testing.T, pt *peerTarget) {
	for _, tc := range []struct {
		name   string
		mutual bool
		algs   []int
	}{
		{"OneWay", false, nil},
		{"OneWayMD5Only", false, []int{CHAPMD5}},
		{"Mutual", true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := interopCtx(t)
			iqn, addr, port, creds := pt.chap(t, tc.mutual)
			creds.Algorithms = tc.algs
			rec := testutil.NewRecorder(t, port)
			cfg := Config{InitiatorName: initiatorIQN, TargetName: iqn, Portal: addr, WrapConn: rec.Wrap, CHAP: &creds}
			s := mustLogin(t, ctx, cfg)
			if s.chapAvoid == CHAPSHA256 {
				t.Logf("the peer took CHAP_A=7 for SHA-1: logged in on the second try without it")
			}
			if _, err := s.ReadCapacity(ctx, pt.lun); err != nil {
				t.Fatal(err)
			}
			verifyIO(t, ctx, s, pt.lun, 0, 512, []int{4096})
			pt.logout(t, ctx, s)
			rec.Check()
			pt.noSessions(t, iqn)
		})
	}
}

func testPeerWrongSecret(t *testing.T, pt *peerTarget) {
	ctx := interopCtx(t)
	iqn, addr, port, good := pt.chap(t, false)
	for _, tc := range []struct {
		name string
		chap CHAP
	}{
		{"initiator secret", CHAP{User: good.User, Secret: "not-the-secret"}},
		{"unknown user", CHAP{User: "mallory", Secret: good.Secret}},
		{"no CHAP", CHAP{}},
	} {
		rec := testutil.NewRecorder(t, port)
		cfg := Config{InitiatorName: initiatorIQN, TargetName: iqn, Portal: addr, WrapConn: rec.Wrap}
		if tc.chap.User != "" {
			cfg.CHAP = &tc.chap
		}
		s, err := Login(ctx, cfg)
		if err == nil {
			s.Close()
			t.Fatalf("%s: login succeeded", tc.name)
		}
		var le *LoginError
		var ne *NegotiationError
		switch {
		case tc.chap.User == "" && pt.rejectsAuthNone:
			if !errors.As(err, &ne) || ne.Key != "AuthMethod" {
				t.Errorf("%s: %v (%T), want a NegotiationError on AuthMethod", tc.name, err, err)
			}
		case !errors.As(err, &le) || le.Status != pdu.LoginAuthFailed || !strings.Contains(err.Error(), "authentication failure (0x0201)"):
			t.Errorf("%s: %v (%T), want a LoginError 0x0201", tc.name, err, err)
		}
		rec.Check()
	}
	pt.noSessions(t, iqn)
	// Mutual CHAP where the peer answers with another secret than ours.
	iqn, addr, port, creds := pt.chap(t, true)
	creds.TargetSecret = "some-other-secret"
	rec := testutil.NewRecorder(t, port)
	cfg := Config{InitiatorName: initiatorIQN, TargetName: iqn, Portal: addr, WrapConn: rec.Wrap, CHAP: &creds}
	_, err := Login(ctx, cfg)
	var ne *NegotiationError
	if !errors.As(err, &ne) || ne.Key != "CHAP_R" {
		t.Errorf("mutual CHAP with a wrong target secret: %v", err)
	}
	rec.Check()
	pt.noSessions(t, iqn)
}

func testPeerDigests(t *testing.T, pt *peerTarget) {
	pt.ioCase(t, func(cfg *Config) {
		p := DefaultParams()
		p.HeaderDigest, p.DataDigest = true, true
		cfg.Params = &p
	}, func(ctx context.Context, s *Session) {
		logParams(t, t.Name(), s.Params())
		if !s.Params().HeaderDigest || !s.Params().DataDigest {
			t.Fatalf("digests not negotiated: %+v", s.Params())
		}
		verifyIO(t, ctx, s, pt.lun, 0, 512, []int{512, 64<<10 + 512, 1<<20 + 512})
	}, nil)
}

func testPeerIO(t *testing.T, pt *peerTarget) {
	for _, combo := range []struct{ immediate, initialR2T bool }{{true, false}, {true, true}, {false, false}, {false, true}} {
		t.Run(fmt.Sprintf("ImmediateData=%v,InitialR2T=%v", combo.immediate, combo.initialR2T), func(t *testing.T) {
			pt.ioCase(t, func(cfg *Config) {
				p := DefaultParams()
				p.ImmediateData, p.InitialR2T = combo.immediate, combo.initialR2T
				cfg.Params = &p
			}, func(ctx context.Context, s *Session) {
				got := s.Params()
				logParams(t, t.Name(), got)
				if got.ImmediateData != combo.immediate || got.InitialR2T != (combo.initialR2T || pt.forcesInitialR2T) {
					t.Errorf("ImmediateData=%v InitialR2T=%v", got.ImmediateData, got.InitialR2T)
				}
				verifyIO(t, ctx, s, pt.lun, 8, 512, ioSizes)
			}, nil)
		})
	}
}

func testPeerConcurrent(t *testing.T, pt *peerTarget) {
	pt.ioCase(t, nil, func(ctx context.Context, s *Session) {
		testutil.ConcurrentIO(t, ctx, s, pt.lun, 512, 32, 64<<10, rand.Uint64())
	}, nil)
}

func testPeerNOP(t *testing.T, pt *peerTarget) {
	pt.ioCase(t, func(cfg *Config) {
		cfg.NOPInterval, cfg.NOPTimeout = 50*time.Millisecond, 2*time.Second
	}, func(ctx context.Context, s *Session) {
		c := s.Conns()[0]
		// Idle long enough for several keepalive NOP-Outs; the point of
		// the test is the passing of time.
		time.Sleep(600 * time.Millisecond)
		if c.Err() != nil || !c.Active() {
			t.Fatalf("connection after idling: %v", c.Err())
		}
		verifyIO(t, ctx, s, pt.lun, 0, 512, []int{4096})
	}, func(rec *testutil.Recorder) {
		ops := rec.Opcodes()
		t.Logf("capture: %d NOP-Out, %d NOP-In", ops[pdu.OpNOPOut], ops[pdu.OpNOPIn])
		if len(peers.Missing("tshark")) == 0 && (ops[pdu.OpNOPOut] < 3 || ops[pdu.OpNOPIn] < 3) {
			t.Errorf("capture: %d NOP-Out, %d NOP-In; want several", ops[pdu.OpNOPOut], ops[pdu.OpNOPIn])
		}
	})
}

func testPeerTaskManagement(t *testing.T, pt *peerTarget) {
	pt.ioCase(t, nil, func(ctx context.Context, s *Session) {
		verifyIO(t, ctx, s, pt.lun, 0, 512, []int{4096})
		// ABORT TASK for a tag no command has (any more).
		resp, err := s.TaskManagement(ctx, pdu.TMFAbortTask, pt.lun, 0x00123456)
		if err != nil {
			t.Fatalf("ABORT TASK: %v", err)
		}
		t.Logf("the peer answers ABORT TASK for a finished tag with %s (%d)", resp.String(), resp)
		if resp != pdu.TMFComplete && resp != pdu.TMFNoSuchTask {
			t.Errorf("ABORT TASK response %d", resp)
		}
		resp, err = s.TaskManagement(ctx, pdu.TMFLogicalUnitReset, pt.lun, 0)
		if err != nil || resp != pdu.TMFComplete {
			t.Fatalf("LUN RESET: %d %v", resp, err)
		}
		// A reset makes the next command meet UNIT ATTENTION; the helpers
		// retry it.
		if _, err := s.ReadCapacity(ctx, pt.lun); err != nil {
			t.Fatal(err)
		}
		verifyIO(t, ctx, s, pt.lun, 0, 512, []int{4096})
	}, nil)
}

// testPeerCancel: a command canceled while the peer answers it: Execute
// returns at once, the session goes on.
func testPeerCancel(t *testing.T, pt *peerTarget) {
	pt.ioCase(t, nil, func(ctx context.Context, s *Session) {
		for i := 0; i < 20; i++ {
			cctx, cancel := context.WithCancel(ctx)
			buf := make([]byte, 8<<20)
			done := make(chan error, 1)
			go func() { done <- s.Read(cctx, pt.lun, 0, 512, buf) }()
			time.Sleep(time.Duration(i) * 100 * time.Microsecond)
			cancel()
			err := <-done
			clear(buf) // the buffer is ours again once Read returned
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Fatalf("canceled read: %v", err)
			}
		}
		verifyIO(t, ctx, s, pt.lun, 0, 512, []int{64 << 10})
	}, func(rec *testutil.Recorder) {
		t.Logf("capture: %d ABORT TASK requests for 20 canceled reads", rec.Opcodes()[pdu.OpTaskMgmtRequest])
	})
}

// mcsOrSkip skips a test of n connections per session on a peer that
// allows fewer.
func (pt *peerTarget) mcsOrSkip(t *testing.T, n int) {
	if pt.maxConnections < n {
		t.Skipf("the peer allows MaxConnections=%d", pt.maxConnections)
	}
}

func testPeerMCS(t *testing.T, pt *peerTarget) {
	for _, n := range []int{2, 4} {
		t.Run(fmt.Sprintf("%dconns", n), func(t *testing.T) {
			pt.mcsOrSkip(t, n)
			pt.ioCase(t, nil, func(ctx context.Context, s *Session) {
				if s.Params().MaxConnections < n {
					t.Fatalf("the peer allows %d connections", s.Params().MaxConnections)
				}
				for i := 1; i < n; i++ {
					c, err := s.AddConnection(ctx)
					if err != nil {
						t.Fatalf("AddConnection %d: %v", i, err)
					}
					if c.CID() != uint16(i) {
						t.Errorf("CID %d, want %d", c.CID(), i)
					}
					logParams(t, fmt.Sprintf("connection %d", i), c.Params())
				}
				if len(s.Conns()) != n {
					t.Fatalf("%d connections", len(s.Conns()))
				}
				before := map[uint16]uint64{}
				for _, c := range s.Conns() {
					before[c.CID()] = c.commands.Load()
				}
				testutil.ConcurrentIO(t, ctx, s, pt.lun, 512, 64, 64<<10, rand.Uint64())
				for _, c := range s.Conns() {
					n := c.commands.Load() - before[c.CID()]
					t.Logf("CID %d carried %d of the %d commands", c.CID(), n, 128)
					if n == 0 {
						t.Errorf("CID %d carried no command", c.CID())
					}
				}
				// Each connection also carries I/O of its own, all sizes.
				for _, c := range s.Conns() {
					verifyConnIO(t, ctx, c, pt.lun, uint64(c.CID())*32768, []int{512, 64<<10 + 512, 1 << 20})
				}
			}, func(rec *testutil.Recorder) {
				ops := rec.Opcodes()
				t.Logf("capture: %d connections, %d Logout Requests, %d Logout Responses", len(rec.Paths()), ops[pdu.OpLogoutRequest], ops[pdu.OpLogoutResponse])
			})
		})
	}
}

// testPeerMCSLogoutPerConnection logs out each connection of a
// 4-connection session with reason 1.
func testPeerMCSLogoutPerConnection(t *testing.T, pt *peerTarget) {
	pt.mcsOrSkip(t, 4)
	ctx := interopCtx(t)
	rec := testutil.NewRecorder(t, pt.port)
	s := mustLogin(t, ctx, pt.config(rec))
	for i := 1; i < 4; i++ {
		if _, err := s.AddConnection(ctx); err != nil {
			t.Fatal(err)
		}
	}
	testutil.ConcurrentIO(t, ctx, s, pt.lun, 512, 16, 64<<10, rand.Uint64())
	time.Sleep(pt.logoutQuiet) // see peerTarget.logout
	var wg sync.WaitGroup
	results := make([]LogoutResult, 4)
	for i, c := range s.Conns() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.Logout(ctx, LogoutOptions{Reason: pdu.LogoutCloseConnection, Timeout: 10e9})
		}()
	}
	wg.Wait()
	for _, r := range results {
		if !r.OK() {
			t.Errorf("CID %d: %+v", r.CID, r)
		}
	}
	if len(s.Conns()) != 0 || !s.LoggedOut() {
		t.Errorf("%d connections left, LoggedOut %v", len(s.Conns()), s.LoggedOut())
	}
	s.Close()
	ops := rec.Opcodes()
	if len(peers.Missing("tshark")) == 0 && (ops[pdu.OpLogoutRequest] != 4 || ops[pdu.OpLogoutResponse] != 4) {
		t.Errorf("capture: %d Logout Requests, %d Responses; want 4 each", ops[pdu.OpLogoutRequest], ops[pdu.OpLogoutResponse])
	}
	rec.Check()
	pt.noSessions(t, pt.iqn)
}

// testPeerQuickLogout logs out right after I/O, which istgt sometimes
// answers by closing the connection (see peerTarget.logout): the session
// must report that as a reset without a response, and end.
func testPeerQuickLogout(t *testing.T, pt *peerTarget) {
	ctx := interopCtx(t)
	const n = 10
	closed := 0
	for i := 0; i < n; i++ {
		s := mustLogin(t, ctx, Config{InitiatorName: initiatorIQN, TargetName: pt.iqn, Portal: pt.addr})
		if _, err := s.ReadCapacity(ctx, pt.lun); err != nil {
			t.Fatal(err)
		}
		res, err := s.Logout(ctx, LogoutOptions{Timeout: 10 * time.Second})
		switch {
		case err == nil && res.OK():
		case errors.Is(err, ErrConnReset) && !res.Responded:
			closed++
		default:
			t.Fatalf("logout %d: %+v %v", i, res, err)
		}
		if len(s.Conns()) != 0 {
			t.Fatalf("logout %d: connection still up", i)
		}
	}
	t.Logf("the peer closed %d of %d connections without a Logout Response", closed, n)
	pt.noSessions(t, pt.iqn)
}
