package reliability

// No data loss: writes of random data race a logout of the target, a
// canceled logout, a forced one, and a target that drops the connections.
// After each round a fresh session reads back every write that was
// reported done and compares it byte for byte. Short by default; SOAK=1
// runs 1,000 rounds against the in-memory target and 400 against tgtd.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/session"
)

// What races the writes in a round.
type raceMode int

const (
	raceLogout raceMode = iota // LogoutFromTarget, waited for
	raceCancel                 // LogoutFromTarget, canceled at once
	raceForce                  // LogoutFromTarget with Force, the target silent
	raceDrop                   // the target drops every connection
	numRaces
)

func (m raceMode) String() string {
	return [...]string{"logout", "cancel", "force", "drop"}[m]
}

const (
	lossWriters   = 4
	lossMaxWrites = 64
	lossBlocks    = 8 // blocks per write
	// lossRegion is the blocks one round writes in, at most.
	lossRegion = lossWriters * lossMaxWrites * lossBlocks
	lossLUN    = 256 << 20
)

// forceMark is the ISID byte that makes the in-memory target ignore a
// session's Logout Requests (the force rounds).
const forceMark = 0xf0

// lossEnv is a target the rounds run against.
type lossEnv struct {
	name, portal string
	lun          int
	conns        int
	// drop makes the target drop every connection of s.
	drop func(s *session.Session)
	// forceTimeout is the logout deadline of the force rounds.
	forceTimeout time.Duration
}

type written struct {
	lba  uint64
	data []byte
}

// lossStats adds up the rounds.
type lossStats struct {
	rounds, done, failed, bytes int
	byMode                      [numRaces]int
	errs                        map[string]int
}

func randInt(n int) int {
	v, _ := rand.Int(rand.Reader, big.NewInt(int64(n)))
	return int(v.Int64())
}

// writeErrClass names what a failed write's error says became of it: never
// sent (ErrNotSent: Execute refused it before sending, the connection
// logging out or ended), or sent
// with its outcome unknown ("outcome on the target is unknown"), with the
// cause. It returns "" for an error that says neither.
func writeErrClass(err error) string {
	msg := err.Error()
	unknown := strings.Contains(msg, "outcome on the target is unknown")
	if errors.Is(err, session.ErrNotSent) {
		return "not sent"
	}
	if !unknown && (errors.Is(err, session.ErrClosed) || errors.Is(err, session.ErrConnReset) ||
		errors.Is(err, session.ErrDeadPeer) || errors.Is(err, session.ErrLoggedOut)) {
		return "not sent: connection ended"
	}
	if !strings.Contains(msg, "outcome on the target is unknown") {
		return ""
	}
	for _, c := range []struct {
		err  error
		name string
	}{
		{session.ErrTargetDropped, "unknown: target dropped"},
		{session.ErrLoggedOut, "unknown: logged out"},
		{session.ErrConnReset, "unknown: connection reset"},
		{session.ErrClosed, "unknown: closed"},
		{session.ErrDeadPeer, "unknown: dead peer"},
	} {
		if errors.Is(err, c.err) {
			return c.name
		}
	}
	return "unknown: other"
}

// lossRound runs one round: login, writers, the race, then the read-back.
func lossRound(t *testing.T, in *initiator.Initiator, env lossEnv, r int, mode raceMode, st *lossStats) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	id := isid(r)
	id[2] = byte(r >> 16)
	if mode == raceForce {
		id[3] = forceMark
	}
	s, err := in.Login(ctx, env.portal, env.name, initiator.LoginOptions{Connections: env.conns, ISID: id})
	if err != nil {
		t.Fatalf("round %d: login: %v", r, err)
	}
	base := uint64(r%(lossLUN/512/lossRegion)) * lossRegion
	var mu sync.Mutex
	var done []written
	progress := make(chan struct{}, lossWriters*lossMaxWrites)
	var wg sync.WaitGroup
	for w := 0; w < lossWriters; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < lossMaxWrites; i++ {
				lba := base + uint64((w*lossMaxWrites+i)*lossBlocks)
				data := make([]byte, lossBlocks*512)
				rand.Read(data)
				err := s.Write(ctx, env.lun, lba, 512, data)
				mu.Lock()
				if err == nil {
					done = append(done, written{lba, data})
				} else {
					st.failed++
					class := writeErrClass(err)
					if class == "" {
						t.Errorf("round %d (%v): a write failed with an error that does not say what became of it: %v", r, mode, err)
					}
					st.errs[class]++
				}
				mu.Unlock()
				if err != nil {
					return
				}
				progress <- struct{}{}
			}
		}()
	}
	// The race starts after a random number of writes have completed.
	for n := randInt(12); n > 0; n-- {
		select {
		case <-progress:
		case <-ctx.Done():
			t.Fatalf("round %d: writes stalled", r)
		}
	}
	switch mode {
	case raceLogout, raceCancel, raceForce:
		opts := logout.Options{Timeout: 5 * time.Second}
		if mode == raceForce {
			opts.Force, opts.Timeout = true, env.forceTimeout
		}
		if randInt(2) == 0 {
			opts.DrainTimeout = 20 * time.Millisecond
		}
		op, err := in.LogoutFromTargetWith(env.name, opts)
		if err != nil {
			t.Fatal(err)
		}
		if mode == raceCancel {
			op.Cancel()
		}
		res, err := op.Wait(ctx)
		if err != nil {
			t.Fatalf("round %d: logout not done: %v", r, err)
		}
		if mode == raceForce && res.Outcome != logout.Success && !res.Sessions[0].Forced {
			t.Errorf("round %d: force: %v without Forced", r, res.Outcome)
		}
	case raceDrop:
		env.drop(s)
	}
	wg.Wait()
	// Whatever is left of the session (a canceled logout, a drop) goes.
	s.Close()
	st.rounds++
	st.byMode[mode]++
	verify(t, ctx, in, env, r, done, st)
}

// verify reads every write reported done back through a fresh session.
func verify(t *testing.T, ctx context.Context, in *initiator.Initiator, env lossEnv, r int, done []written, st *lossStats) {
	id := isid(r)
	id[2], id[3] = byte(r>>16), 0x0f
	s, err := in.Login(ctx, env.portal, env.name, initiator.LoginOptions{ISID: id})
	if err != nil {
		t.Fatalf("round %d: read-back login: %v", r, err)
	}
	got := make([]byte, lossBlocks*512)
	for _, w := range done {
		if err := s.Read(ctx, env.lun, w.lba, 512, got); err != nil {
			t.Fatalf("round %d: read back LBA %d: %v", r, w.lba, err)
		}
		if !bytes.Equal(got, w.data) {
			t.Errorf("round %d: the write at LBA %d was reported done but the target holds other data", r, w.lba)
		}
		st.done++
		st.bytes += len(w.data)
	}
	op, err := in.LogoutFromTarget(env.name)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := op.Wait(ctx); err != nil || res.Outcome != logout.Success {
		t.Fatalf("round %d: read-back logout: %v %v", r, res.Outcome, err)
	}
}

func runLoss(t *testing.T, name string, env lossEnv, rounds int) {
	// DefaultTime2Wait 0 offered: the target's value decides (the larger
	// wins, RFC 7143 §13.15): 0 on the in-memory target, 2 s on tgtd.
	params := session.DefaultParams()
	params.DefaultTime2Wait = 0
	in, err := initiator.New(initiator.Config{Name: initiatorIQN, NOPInterval: -1, Params: &params})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	st := &lossStats{errs: map[string]int{}}
	start := time.Now()
	for r := 0; r < rounds && !t.Failed(); r++ {
		lossRound(t, in, env, r, raceMode(r%int(numRaces)), st)
	}
	t.Logf("%s: %d rounds in %v (%v): %d writes reported done, all read back byte for byte (%.1f MiB); %d failed, by error: %v",
		name, st.rounds, time.Since(start).Round(time.Millisecond), st.byMode, st.done, float64(st.bytes)/(1<<20), st.failed, st.errs)
}

func lossRounds(long, short int) int {
	if soak() {
		return long
	}
	return short
}

// TestNoDataLossMem races writes on sessions of two connections against
// the in-memory target.
func TestNoDataLossMem(t *testing.T) {
	hook := iscsitest.NoLogoutResponse(func(ev *iscsitest.Event) bool { return ev.ISID[3] == forceMark })
	// Time2Wait 0 on both sides: a drop round's session reinstates itself
	// at once rather than after the default 2 s (250 drop rounds in the
	// soak took 8 of its minutes).
	zero := 0
	tg := iscsitest.NewTarget(iscsitest.Config{Name: memIQN, LUNs: []int64{lossLUN}, Hook: hook, DefaultTime2Wait: &zero})
	defer tg.Close()
	env := lossEnv{name: memIQN, portal: tg.Addr(), lun: 0, conns: 2, forceTimeout: 50 * time.Millisecond,
		drop: func(s *session.Session) {
			for _, info := range tg.Sessions() {
				if info.TSIH == s.TSIH() && !info.Ended {
					for _, cid := range info.CIDs {
						if c := tg.Conn(info.TSIH, cid); c != nil {
							c.Reset()
						}
					}
				}
			}
		}}
	runLoss(t, "in-memory", env, lossRounds(1000, 100))
}

// TestNoDataLossTgtd races writes against tgtd, through a proxy that drops
// the connections for the drop rounds; the force rounds give the logout
// 1 ms.
func TestNoDataLossTgtd(t *testing.T) {
	peers.Require(t, "tgtd", "tgtadm")
	tg := peers.StartTgtd(t)
	name := "iqn.2026-11.org.goiscsi:reliability-loss"
	if _, err := tg.AddDiskTarget(1, name, lossLUN); err != nil {
		t.Fatal(err)
	}
	px := newProxy(t, tg.Addr)
	defer px.close()
	env := lossEnv{name: name, portal: px.addr(), lun: 1, conns: 1, forceTimeout: time.Millisecond,
		drop: func(*session.Session) { px.drop() }}
	runLoss(t, "tgtd", env, lossRounds(400, 40))
}

// proxy forwards TCP connections to a backend and can drop them all at once
// (RST on both sides), as a failing target or network would.
type proxy struct {
	ln      net.Listener
	backend string
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
}

func newProxy(t *testing.T, backend string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, backend: backend, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", p.backend)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[b] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			io.Copy(dst, src)
			// One side ended: end the other (FIN then close).
			dst.Close()
			src.Close()
			p.mu.Lock()
			delete(p.conns, dst)
			delete(p.conns, src)
			p.mu.Unlock()
		}
		go pipe(b, c)
		go pipe(c, b)
	}
}

// drop resets every connection the proxy carries.
func (p *proxy) drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
}

func (p *proxy) close() {
	p.ln.Close()
	p.drop()
	p.wg.Wait()
}
