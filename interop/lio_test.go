package interop

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/internal/testutil"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

// The VM of TestLIO: three LUNs, no authentication, MC/S allowed, and
// InitialR2T=No, so that what the initiator offers decides InitialR2T (an OR)
// and ImmediateData (an AND): one VM covers the four combinations.
const (
	lioLUNs   = 3
	lioLUNMB  = 16
	lioMaxMCS = 4
)

// ioSizes straddle LIO's FirstBurstLength (64 KiB) and MaxBurstLength
// (256 KiB), and go well past them.
var ioSizes = []int{512, 64 << 10, 64<<10 + 512, 256<<10 + 512, 1 << 20, 4 << 20}

// TestLIO runs every test that needs no authentication against one LIO VM,
// one subtest after the other (the checks of LIO's session list assume that
// nothing else is logged in).
func TestLIO(t *testing.T) {
	t.Parallel()
	l := peers.StartLIO(t, peers.LIOOptions{
		LUNs: lioLUNs, LUNSizeMB: lioLUNMB, MaxConnections: lioMaxMCS,
		Params: map[string]string{"InitialR2T": "No", "ImmediateData": "Yes"},
	})
	if out, err := l.Exec("cd /sys/kernel/config/target/iscsi/*/tpgt_1/param && grep . *"); err == nil {
		t.Logf("LIO tpgt_1/param:\n%s", out)
	}
	t.Run("MultiLUN", func(t *testing.T) { testMultiLUN(t, l) })
	t.Run("Discovery", func(t *testing.T) { testDiscovery(t, l) })
	t.Run("Digests", func(t *testing.T) { testDigests(t, l) })
	t.Run("IO", func(t *testing.T) { testIO(t, l) })
	t.Run("InFlight32", func(t *testing.T) { testInFlight(t, l) })
	t.Run("MCS", func(t *testing.T) { testMCS(t, l) })
	t.Run("Logout", func(t *testing.T) { testLogout(t, l) })
	// Nothing left, not even a session kept for DefaultTime2Retain.
	start := time.Now()
	waitLIOSessionsFor(t, l, "", 0, 30*time.Second)
	t.Logf("LIO's session list empty %v after the last test", time.Since(start).Round(100*time.Millisecond))
}

// login opens a session with the given offer (nil: the defaults) and logs it
// out when the test ends.
func login(t *testing.T, l *peers.LIO, params *session.Params) *session.Session {
	t.Helper()
	ctx := testCtx(t)
	s, err := session.Login(ctx, session.Config{InitiatorName: initiatorName(t), TargetName: l.IQN, Portal: l.Addr, Params: params})
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := s.Logout(ctx, session.LogoutOptions{}); err != nil && !errors.Is(err, session.ErrClosed) {
			t.Errorf("logout: %v", err)
		}
		waitLIOSessions(t, l, initiatorName(t), 0)
	})
	return s
}

// testMultiLUN: with several LUNs, a new I_T nexus meets UNIT ATTENTION
// 3F/0E (REPORTED LUNS DATA HAS CHANGED) on its first command; the helpers
// retry it.
func testMultiLUN(t *testing.T, l *peers.LIO) {
	t.Run("RawUnitAttention", func(t *testing.T) {
		s := login(t, l, nil)
		ctx := testCtx(t)
		// The raw command, without the helpers' retry: LIO reports the
		// unit attention. Which LUNs have one depends on the order LIO
		// mapped them into the new dynamic ACL.
		ua := 0
		for lun := 0; lun < lioLUNs; lun++ {
			for try := 0; ; try++ {
				_, err := s.Execute(ctx, &session.Command{LUN: lun, CDB: make([]byte, 6)}) // TEST UNIT READY
				if err == nil {
					break
				}
				var se *session.SCSIError
				asc, ascq, ok := uint8(0), uint8(0), false
				if errors.As(err, &se) {
					asc, ascq, ok = se.ASC()
				}
				if !session.IsUnitAttention(err) || !ok || try > 4 {
					t.Fatalf("TEST UNIT READY on LUN %d: %v", lun, err)
				}
				t.Logf("LUN %d, command %d: UNIT ATTENTION %02x/%02x", lun, try+1, asc, ascq)
				if asc != 0x3f || ascq != 0x0e {
					t.Errorf("LUN %d: UNIT ATTENTION %02x/%02x, want 3F/0E", lun, asc, ascq)
				}
				ua++
			}
		}
		if ua == 0 {
			t.Errorf("no UNIT ATTENTION on any LUN of a new session")
		}
	})
	t.Run("Helpers", func(t *testing.T) {
		// A new initiator name, so a new nexus with its unit attentions:
		// the helpers must get through them.
		s := login(t, l, nil)
		ctx := testCtx(t)
		logParams(t, "defaults", s)
		luns, err := s.ReportLUNs(ctx)
		if err != nil {
			t.Fatalf("REPORT LUNS: %v", err)
		}
		slices.Sort(luns)
		if !slices.Equal(luns, []int{0, 1, 2}) {
			t.Fatalf("REPORT LUNS: %v, want [0 1 2]", luns)
		}
		for _, lun := range luns {
			c, err := s.ReadCapacity(ctx, lun)
			if err != nil {
				t.Fatalf("READ CAPACITY LUN %d: %v", lun, err)
			}
			if c.BlockSize != blockSize || c.Bytes() != lioLUNMB<<20 {
				t.Errorf("LUN %d: %d blocks of %d bytes, want %d MiB in %d-byte blocks", lun, c.Blocks, c.BlockSize, lioLUNMB, blockSize)
			}
			inq, err := s.Inquiry(ctx, lun)
			if err != nil {
				t.Fatalf("INQUIRY LUN %d: %v", lun, err)
			}
			if inq.PeripheralType != 0 || inq.Vendor != "LIO-ORG" {
				t.Errorf("LUN %d: INQUIRY %+v", lun, inq)
			}
			if err := s.TestUnitReady(ctx, lun); err != nil {
				t.Errorf("TEST UNIT READY LUN %d: %v", lun, err)
			}
		}
	})
}

// testDiscovery: SendTargets names the VM's target with a portal the host
// can reach, and a login through that portal works.
func testDiscovery(t *testing.T, l *peers.LIO) {
	ctx := testCtx(t)
	check := func(t *testing.T, targets []session.DiscoveredTarget) string {
		t.Helper()
		for _, tg := range targets {
			t.Logf("SendTargets: %s %v", tg.Name, tg.Portals)
			if tg.Name == l.IQN {
				if len(tg.Portals) == 0 {
					t.Fatalf("target %s without a portal", tg.Name)
				}
				return tg.Addresses()[0]
			}
		}
		t.Fatalf("SendTargets did not name %s: %+v", l.IQN, targets)
		return ""
	}
	targets, err := session.Discover(ctx, session.Config{InitiatorName: initiatorName(t), Portal: l.Addr})
	if err != nil {
		t.Fatalf("session.Discover: %v", err)
	}
	check(t, targets)

	in, err := initiator.New(initiator.Config{Name: initiatorName(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	targets, err = in.Discover(ctx, l.Addr, nil)
	if err != nil {
		t.Fatalf("initiator.Discover: %v", err)
	}
	portal := check(t, targets)
	s, err := in.Login(ctx, portal, l.IQN, initiator.LoginOptions{})
	if err != nil {
		t.Fatalf("login through the discovered portal %s: %v", portal, err)
	}
	if _, err := s.Inquiry(ctx, 0); err != nil {
		t.Fatalf("INQUIRY: %v", err)
	}
	op, err := in.LogoutFromTarget(l.IQN)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := op.Wait(ctx); err != nil || res.Outcome != logout.Success {
		t.Fatalf("logout: %v %v", res.Outcome, err)
	}
	waitLIOSessions(t, l, initiatorName(t), 0)
}

// testDigests: CRC32C header and data digests, negotiated and then used
// for I/O that is checked byte for byte.
func testDigests(t *testing.T, l *peers.LIO) {
	for _, c := range []struct {
		name         string
		header, data bool
	}{{"Header", true, false}, {"Data", false, true}, {"Both", true, true}} {
		t.Run(c.name, func(t *testing.T) {
			p := session.DefaultParams()
			p.HeaderDigest, p.DataDigest = c.header, c.data
			s := login(t, l, &p)
			logParams(t, "digests "+c.name, s)
			got := s.Params()
			if got.HeaderDigest != c.header || got.DataDigest != c.data {
				t.Fatalf("negotiated HeaderDigest %v DataDigest %v, want %v %v", got.HeaderDigest, got.DataDigest, c.header, c.data)
			}
			ctx := testCtx(t)
			lba := uint64(0)
			for i, n := range []int{512, 64<<10 + 512, 1 << 20} {
				if err := testutil.WriteVerify(ctx, s, 0, lba, blockSize, testutil.Random(uint64(100+i), n)); err != nil {
					t.Fatal(err)
				}
				lba += uint64(n / blockSize)
			}
		})
	}
}

// testIO: writes and reads of every size, checked byte for byte, with the
// four combinations of InitialR2T and ImmediateData.
func testIO(t *testing.T, l *peers.LIO) {
	for _, c := range []struct{ initialR2T, immediate bool }{{false, true}, {true, true}, {false, false}, {true, false}} {
		t.Run(fmt.Sprintf("InitialR2T=%s,ImmediateData=%s", pdu.FormatBool(c.initialR2T), pdu.FormatBool(c.immediate)), func(t *testing.T) {
			p := session.DefaultParams()
			p.InitialR2T, p.ImmediateData = c.initialR2T, c.immediate
			s := login(t, l, &p)
			logParams(t, t.Name(), s)
			got := s.Params()
			// LIO leaves out its answer to ImmediateData=No, as RFC 7143
			// §6.2.2 allows (an AND offered as No: the outcome is No): the
			// session must say No, or LIO rejects the first write.
			if got.InitialR2T != c.initialR2T || got.ImmediateData != c.immediate {
				t.Fatalf("negotiated InitialR2T %v ImmediateData %v, want %v %v", got.InitialR2T, got.ImmediateData, c.initialR2T, c.immediate)
			}
			if got.FirstBurstLength != 64<<10 || got.MaxBurstLength != 256<<10 {
				t.Errorf("negotiated FirstBurstLength %d MaxBurstLength %d, want LIO's 65536 and 262144", got.FirstBurstLength, got.MaxBurstLength)
			}
			ctx := testCtx(t)
			start := time.Now()
			total := 0
			lba := uint64(0)
			for i, n := range ioSizes {
				// A seed per combination and size: data left by another
				// case never passes for this one's.
				seed := uint64(i) | uint64(len(t.Name()))<<16 | map[bool]uint64{true: 1 << 32}[c.initialR2T] | map[bool]uint64{true: 1 << 33}[c.immediate]
				if err := testutil.WriteVerify(ctx, s, 0, lba, blockSize, testutil.Random(seed, n)); err != nil {
					t.Fatal(err)
				}
				lba += uint64(n / blockSize)
				total += 2 * n
			}
			t.Logf("%d bytes written and read back in %v", total, time.Since(start))
		})
	}
}

// testInFlight: 32 goroutines on one session, each writing its own region,
// reading it back and checking it, all at once.
func testInFlight(t *testing.T, l *peers.LIO) {
	const (
		n    = 32
		size = 64<<10 + 512 // past FirstBurstLength: immediate data, then R2T
	)
	s := login(t, l, nil)
	ctx := testCtx(t)
	if err := s.TestUnitReady(ctx, 1); err != nil { // take the nexus's unit attentions first
		t.Fatal(err)
	}
	t0 := time.Now()
	testutil.ConcurrentIO(t, ctx, s, 1, blockSize, n, size, 1000)
	t.Logf("%d × %d bytes written and read back at once in %v", n, size, time.Since(t0))
}

// testMCS: sessions of 2 and 4 connections, with I/O spread over them.
func testMCS(t *testing.T, l *peers.LIO) {
	for _, nconn := range []int{2, 4} {
		t.Run(fmt.Sprintf("%dconns", nconn), func(t *testing.T) {
			ctx := testCtx(t)
			var mu sync.Mutex
			var counts []*countConn
			in, err := initiator.New(initiator.Config{Name: initiatorName(t), WrapConn: func(c net.Conn) net.Conn {
				cc := &countConn{Conn: c}
				mu.Lock()
				counts = append(counts, cc)
				mu.Unlock()
				return cc
			}})
			if err != nil {
				t.Fatal(err)
			}
			defer in.Close()
			s, err := in.Login(ctx, l.Addr, l.IQN, initiator.LoginOptions{Connections: nconn})
			if err != nil {
				t.Fatalf("login with %d connections: %v", nconn, err)
			}
			logParams(t, fmt.Sprintf("MC/S %d connections", nconn), s)
			if got := len(s.Conns()); got != nconn {
				t.Fatalf("%d connections, want %d", got, nconn)
			}
			if s.Params().MaxConnections != lioMaxMCS {
				t.Errorf("negotiated MaxConnections %d, want %d", s.Params().MaxConnections, lioMaxMCS)
			}
			for _, c := range s.Conns() {
				t.Logf("connection %d: %s", c.CID(), fmtParams(c.Params()))
			}
			waitLIOSessions(t, l, initiatorName(t), 1) // one session, however many connections
			if err := s.TestUnitReady(ctx, 2); err != nil {
				t.Fatal(err)
			}
			const (
				workers = 16
				size    = 256<<10 + 512
			)
			before := make([]int64, len(counts))
			for i, c := range counts {
				before[i] = c.written.Load()
			}
			testutil.ConcurrentIO(t, ctx, s, 2, blockSize, workers, size, uint64(2000+10*nconn))
			// Every connection carried some of the writes.
			for i, c := range counts {
				w := c.written.Load() - before[i]
				t.Logf("connection %d sent %d bytes", i, w)
				if w < size {
					t.Errorf("connection %d sent %d bytes, less than one write of %d", i, w, size)
				}
			}
			// PerSession: reason 0 ends the session on LIO at once (see
			// testLogout for reason 1 on every connection).
			op, err := in.LogoutFromTargetWith(l.IQN, logout.Options{Strategy: logout.PerSession})
			if err != nil {
				t.Fatal(err)
			}
			res, err := op.Wait(ctx)
			if err != nil || res.Outcome != logout.Success {
				t.Fatalf("logout: %v %v", res.Outcome, err)
			}
			waitLIOSessions(t, l, initiatorName(t), 0)
		})
	}
}

// logoutCase is one LogoutFromTarget test: nsess sessions of nconn
// connections, logged out by strategy. retain, when not nil, is the
// DefaultTime2Retain offered instead of the default.
type logoutCase struct {
	strategy     logout.Strategy
	nsess, nconn int
	retain       *int
}

// testLogout: LogoutFromTarget with 1, 4 and 16 sessions, and with sessions
// of 2 connections, by both strategies. LIO's own session list must be empty
// after it, a second call must find nothing, and the connections of the
// first session are recorded and checked with tshark.
func testLogout(t *testing.T, l *peers.LIO) {
	zero := 0
	var cases []logoutCase
	for _, strategy := range []logout.Strategy{logout.PerConnection, logout.PerSession} {
		for _, c := range []struct{ sessions, conns int }{{1, 1}, {4, 1}, {16, 1}, {4, 2}} {
			cases = append(cases, logoutCase{strategy: strategy, nsess: c.sessions, nconn: c.conns})
		}
	}
	// Reason 1 on every connection, with DefaultTime2Retain=0 (open-iscsi's
	// default): LIO frees the session when its last connection goes.
	cases = append(cases, logoutCase{strategy: logout.PerConnection, nsess: 4, nconn: 2, retain: &zero})
	for _, c := range cases {
		name := fmt.Sprintf("%s/%dx%d", c.strategy, c.nsess, c.nconn)
		if c.retain != nil {
			name += fmt.Sprintf("/DefaultTime2Retain=%d", *c.retain)
		}
		t.Run(name, func(t *testing.T) { c.run(t, l) })
	}
}

func (c logoutCase) run(t *testing.T, l *peers.LIO) {
	ctx := testCtx(t)
	rec := testutil.NewRecorder(t, l.Port)
	var wrapped int
	var mu sync.Mutex
	name := initiatorName(t)
	cfg := initiator.Config{Name: name, WrapConn: func(nc net.Conn) net.Conn {
		// The sessions log in one after the other: the first nconn
		// connections are the first session's.
		mu.Lock()
		wrapped++
		first := wrapped <= c.nconn
		mu.Unlock()
		if first {
			return rec.Wrap(nc)
		}
		return nc
	}}
	if c.retain != nil {
		p := session.DefaultParams()
		p.DefaultTime2Retain = *c.retain
		cfg.Params = &p
	}
	in, err := initiator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	var retain int
	for i := 0; i < c.nsess; i++ {
		s, err := in.Login(ctx, l.Addr, l.IQN, initiator.LoginOptions{Connections: c.nconn})
		if err != nil {
			t.Fatalf("login %d: %v", i, err)
		}
		if err := s.TestUnitReady(ctx, 0); err != nil {
			t.Fatalf("session %d: TEST UNIT READY: %v", i, err)
		}
		retain = s.Params().DefaultTime2Retain
	}
	waitLIOSessions(t, l, name, c.nsess)

	op, err := in.LogoutFromTargetWith(l.IQN, logout.Options{Strategy: c.strategy, Timeout: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	res, err := op.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcome != logout.Success || res.HRESULT() != logout.HResultOK || res.Err() != nil {
		t.Fatalf("outcome %v (0x%08x), want success", res.Outcome, res.HRESULT())
	}
	if len(res.Sessions) != c.nsess || res.LoggedOut() != c.nsess {
		t.Fatalf("%d sessions in the result, %d logged out; want %d", len(res.Sessions), res.LoggedOut(), c.nsess)
	}
	for _, sr := range res.Sessions {
		if len(sr.Conns) != c.nconn {
			t.Fatalf("session %d: %d connections in the result, want %d", sr.TSIH, len(sr.Conns), c.nconn)
		}
		for j, cr := range sr.Conns {
			want, reason := logout.ConnLoggedOut, pdu.LogoutCloseSession
			switch {
			case c.strategy == logout.PerConnection && c.nconn > 1:
				reason = pdu.LogoutCloseConnection
			case c.strategy == logout.PerSession && j > 0:
				want = logout.ConnClosedWithSession
			}
			if cr.State != want || cr.Reason != reason || (want == logout.ConnLoggedOut && (!cr.Responded || cr.Response != pdu.LogoutSuccess)) {
				t.Errorf("session %d connection %d: %s (reason %d, %+v), want %v with reason %d", sr.TSIH, cr.CID, cr.Detail(), cr.Reason, cr, want, reason)
			}
		}
	}
	t.Logf("%d sessions × %d connections logged out (%s) in %v", c.nsess, c.nconn, c.strategy, res.Duration)
	if got := in.Sessions(l.IQN); len(got) != 0 {
		t.Errorf("%d sessions still in the initiator's table", len(got))
	}

	// A second call finds nothing, at once.
	op2, err := in.LogoutFromTarget(l.IQN)
	if err != nil {
		t.Fatal(err)
	}
	if op2 == op {
		t.Fatal("a second LogoutFromTarget right after the first returned the first, finished operation")
	}
	select {
	case <-op2.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("second logout did not complete at once")
	}
	res2, _ := op2.Wait(ctx)
	if res2.Outcome != logout.SessionNotFound || res2.HRESULT() != logout.HResultSessionNotFound || !errors.Is(res2.Err(), logout.ErrSessionNotFound) {
		t.Errorf("second logout: %v (0x%08x), want session not found", res2.Outcome, res2.HRESULT())
	}

	// The first session's connections, as tshark reads them.
	if req, resp := logouts(rec); req != nil {
		if len(req) != c.nconn {
			t.Fatalf("%d connections recorded, want %d", len(req), c.nconn)
		}
		t.Logf("tshark: first session's connections carry %v Logout Requests and %v Responses, no malformed packet", req, resp)
		first := res.Sessions[0]
		for j := range req {
			want := 1
			if first.Conns[j].State == logout.ConnClosedWithSession {
				want = 0 // the target closed it with the session
			}
			if req[j] != want || resp[j] != want {
				t.Errorf("connection %d: %d Logout Requests and %d Responses, want %d of each", j, req[j], resp[j], want)
			}
		}
	}

	// LIO's own view: no session left. Reason 1 on the last connection of a
	// session leaves it in LIO's FAILED state for DefaultTime2Retain
	// seconds (iscsit_close_connection): the initiator offers 0 by default,
	// so it goes at once unless a case asks for more.
	if c.strategy == logout.PerConnection && c.nconn > 1 && retain > 0 {
		t.Logf("DefaultTime2Retain=%d: LIO keeps the sessions that long", retain)
	}
	waitLIOSessions(t, l, name, 0)
}
