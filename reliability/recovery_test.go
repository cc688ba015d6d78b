package reliability

// Sessions that survive: tgtd is killed (SIGKILL) mid-I/O and restarted on
// the same port with the same target and backing file; the session
// reinstates itself, the writers (Execute and Submit) see no failure, and
// every acknowledged write reads back byte for byte. 3 restarts by default,
// 200 with SOAK=1 (make soak).

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/session"
)

const restartIQN = "iqn.2026-11.org.goiscsi:restart"

// restartTgtd kills tgtd and starts a new one on the same portal and
// control port, serving the same backing file as target 1, LUN 1.
func restartTgtd(t *testing.T, old *peers.Tgtd, path string) *peers.Tgtd {
	t.Helper()
	if err := syscall.Kill(old.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill tgtd %d: %v", old.Pid, err)
	}
	old.Stop() // reaps it; its error is the kill's
	s, err := peers.StartTgtdProcess(peers.TgtdOptions{Port: old.Port, CtlPort: old.CtlPort, Dir: old.Dir})
	if err != nil {
		t.Fatalf("restart tgtd on %s: %v\n%s", old.Addr, err, old.LogTail(20))
	}
	if err := s.AddTarget(1, restartIQN); err != nil {
		t.Fatal(err)
	}
	if err := s.AddLUN(1, 1, path); err != nil {
		t.Fatal(err)
	}
	if err := s.BindAll(1); err != nil {
		t.Fatal(err)
	}
	return s
}

// recovering is a session to a private tgtd that recovers: tgtd (which a
// restart replaces; the test stops it), the LUN's backing file, the
// initiator (closed at the test's end), the session, and the state changes
// the test asked for.
type recovering struct {
	tg     *peers.Tgtd
	path   string
	in     *initiator.Initiator
	s      *session.Session
	events <-chan session.StateEvent
}

// recoveringSession starts a private tgtd serving a 64 MiB disk as
// restartIQN, LUN 1, and logs in to it as initiator name with session
// recovery bounded by replacement. The state changes that keep selects
// come on events (dropped when it is full).
func recoveringSession(t *testing.T, ctx context.Context, name string, replacement time.Duration,
	keep func(session.StateEvent) bool) *recovering {
	t.Helper()
	peers.Require(t, "tgtd", "tgtadm")
	tg, err := peers.StartTgtdProcess(peers.TgtdOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	r := &recovering{tg: tg}
	if r.path, err = tg.AddDiskTarget(1, restartIQN, 64<<20); err != nil {
		tg.Stop()
		t.Fatal(err)
	}
	evs := make(chan session.StateEvent, 64)
	r.events = evs
	r.in, err = initiator.New(initiator.Config{Name: name, NOPInterval: -1,
		RecoveryConfig: initiator.RecoveryConfig{ReplacementTimeout: replacement,
			OnState: func(_ *session.Session, ev session.StateEvent) {
				if keep(ev) {
					select {
					case evs <- ev:
					default:
					}
				}
			}}})
	if err != nil {
		tg.Stop()
		t.Fatal(err)
	}
	t.Cleanup(func() { r.in.Close() })
	if r.s, err = r.in.Login(ctx, tg.Addr, restartIQN, initiator.LoginOptions{}); err == nil {
		_, err = r.s.ReadCapacity(ctx, 1)
	}
	if err != nil {
		tg.Stop()
		t.Fatal(err)
	}
	return r
}

func TestNoDataLossTgtdRestarts(t *testing.T) {
	restarts := 3
	if soak() {
		restarts = 200
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(restarts)*30*time.Second+time.Minute)
	defer cancel()
	rs := recoveringSession(t, ctx, "iqn.2026-11.org.goiscsi:restart-initiator", 60*time.Second,
		func(ev session.StateEvent) bool { return ev.To == session.SessionUp })
	defer func() { rs.tg.Stop() }()
	tg, path, in, s, ups := rs.tg, rs.path, rs.in, rs.s, rs.events
	const writers, blocks, slots = 4, 8, 32
	acked := make([]map[uint64][]byte, writers)
	var writes, failed atomic.Int64
	progress := make(chan struct{}, 1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		acked[w] = map[uint64][]byte{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				lba := uint64((w*slots + i%slots) * blocks)
				data := make([]byte, blocks*512)
				rand.Read(data)
				if err := s.Write(ctx, 1, lba, 512, data); err != nil {
					failed.Add(1)
					t.Errorf("writer %d: write at LBA %d: %v", w, lba, err)
					return
				}
				acked[w][lba] = data
				writes.Add(1)
				select {
				case progress <- struct{}{}:
				default:
				}
			}
		}()
	}
	// Submit writers: qd calls, each submitted again from its Done, on
	// their own slots.
	const qd = 4
	type subWriter struct {
		call  session.Call
		i     int
		acked map[uint64][]byte
	}
	subs := make([]subWriter, qd)
	var subMu sync.Mutex
	var subStop atomic.Bool
	subDone := make(chan struct{}, qd)
	var submitNext func(w *subWriter)
	subLBA := func(w *subWriter) uint64 { return uint64(((writers+int(w.call.Tag))*slots + w.i%slots) * blocks) }
	onDone := func(c *session.Call) {
		w := &subs[c.Tag]
		if c.Err != nil {
			failed.Add(1)
			t.Errorf("submit writer %d: write at LBA %d: %v", c.Tag, subLBA(w), c.Err)
			subDone <- struct{}{}
			return
		}
		subMu.Lock()
		w.acked[subLBA(w)] = bytes.Clone(c.Cmd.Write)
		subMu.Unlock()
		writes.Add(1)
		select {
		case progress <- struct{}{}:
		default:
		}
		w.i++
		submitNext(w)
	}
	submitNext = func(w *subWriter) {
		if subStop.Load() {
			subDone <- struct{}{}
			return
		}
		lba := subLBA(w)
		cdb := w.call.Cmd.CDB
		cdb[0] = 0x8a
		for i := range 8 {
			cdb[2+i] = byte(lba >> (56 - 8*i))
		}
		n := uint32(blocks)
		cdb[10], cdb[11], cdb[12], cdb[13] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
		rand.Read(w.call.Cmd.Write)
		if err := s.Submit(&w.call); err != nil {
			failed.Add(1)
			t.Errorf("submit writer %d: %v", w.call.Tag, err)
			subDone <- struct{}{}
		}
	}
	for i := range subs {
		subs[i] = subWriter{acked: map[uint64][]byte{}}
		subs[i].call = session.Call{Cmd: session.Command{LUN: 1, CDB: make([]byte, 16), Write: make([]byte, blocks*512)},
			Done: onDone, Tag: uint64(i)}
	}
	for i := range subs {
		submitNext(&subs[i])
	}
	const perRestart = 64 // writes acknowledged between restarts
	start := time.Now()
	var worst time.Duration
	for r := 0; r < restarts && failed.Load() == 0; r++ {
		<-progress
		before := writes.Load()
		tg = restartTgtd(t, tg, path)
		rs.tg = tg // the one the test stops
		back := time.Now()
		select {
		case <-ups:
		case <-ctx.Done():
			t.Fatalf("restart %d: the session did not recover (%+v)", r, s.Recovery())
		}
		// I/O resumes, and runs a while before the next restart.
		for writes.Load() <= before+perRestart && failed.Load() == 0 {
			select {
			case <-progress:
			case <-ctx.Done():
				t.Fatalf("restart %d: no write completed after the recovery", r)
			}
		}
		worst = max(worst, time.Since(back))
	}
	close(stop)
	wg.Wait()
	subStop.Store(true)
	for range qd {
		select {
		case <-subDone:
		case <-ctx.Done():
			t.Fatal("the submitted writes never ended")
		}
	}
	took := time.Since(start)
	info := s.Recovery()
	checked := 0
	subMu.Lock()
	for i := range subs {
		acked = append(acked, subs[i].acked)
	}
	subMu.Unlock()
	for w := range acked {
		checked += len(acked[w])
	}
	t.Logf("%d restarts in %v, %d writes acknowledged (%d retried), %d reconnects; worst restart-to-write %v; %d acknowledged blocks of %d KiB read back",
		restarts, took.Round(time.Millisecond), writes.Load(), info.Retries, info.Reconnects, worst, checked, blocks*512>>10)
	if info.Reconnects < restarts {
		t.Errorf("%d reinstatements for %d restarts", info.Reconnects, restarts)
	}
	for w := range acked {
		for lba, data := range acked[w] {
			got := make([]byte, len(data))
			if err := s.Read(ctx, 1, lba, 512, got); err != nil {
				t.Fatalf("read back LBA %d: %v", lba, err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("writer %d: LBA %d does not hold its acknowledged write", w, lba)
			}
		}
	}
	op, err := in.LogoutFromTarget(restartIQN)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := op.Wait(ctx); err != nil || !r.LoggedOutOrGone() {
		t.Fatalf("logout: %v %v", r.Outcome, err)
	}
}

// A connection deleted on tgtd (tgtadm --op delete --mode conn) while a
// writer runs: the session goes recovering, then up (same ISID), the
// writer sees no failure and goes on, and its acknowledged writes read
// back byte for byte.
func TestTgtdConnDeletedRecovers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rs := recoveringSession(t, ctx, "iqn.2026-11.org.goiscsi:conndel-initiator", 30*time.Second,
		func(session.StateEvent) bool { return true })
	defer rs.tg.Stop()
	tg, in, s, events := rs.tg, rs.in, rs.s, rs.events
	isid, tsih := s.ISID(), s.TSIH()
	const blocks, slots = 8, 64
	acked := map[uint64][]byte{}
	var writes atomic.Int64
	progress := make(chan struct{}, 1)
	stop := make(chan struct{})
	werr := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				werr <- nil
				return
			default:
			}
			lba := uint64(i % slots * blocks)
			data := make([]byte, blocks*512)
			rand.Read(data)
			if err := s.Write(ctx, 1, lba, 512, data); err != nil {
				werr <- err
				return
			}
			acked[lba] = data
			writes.Add(1)
			select {
			case progress <- struct{}{}:
			default:
			}
		}
	}()
	<-progress
	ns, err := tg.Sessions(1)
	if err != nil || len(ns) != 1 || len(ns[0].Connections) != 1 {
		t.Fatalf("tgtd's sessions: %+v %v", ns, err)
	}
	out, err := tg.Tgtadm("--lld", "iscsi", "--op", "delete", "--mode", "conn", "--tid", "1",
		"--sid", fmt.Sprint(ns[0].ID), "--cid", fmt.Sprint(ns[0].Connections[0].CID))
	if err != nil {
		t.Fatalf("tgtadm delete conn: %v %s", err, out)
	}
	var seen []string
	timeout := time.After(30 * time.Second)
	for len(seen) < 2 || seen[len(seen)-1] != "up" {
		select {
		case ev := <-events:
			seen = append(seen, ev.To.String())
		case <-timeout:
			t.Fatalf("states after the connection was deleted: %v", seen)
		}
	}
	if seen[0] != "recovering" || s.ISID() != isid || s.TSIH() == tsih {
		t.Fatalf("states %v, ISID %x (was %x), TSIH %d (was %d)", seen, s.ISID(), isid, s.TSIH(), tsih)
	}
	before := writes.Load()
	for writes.Load() <= before {
		select {
		case <-progress:
		case err := <-werr:
			t.Fatalf("the writer failed across the connection's deletion: %v", err)
		case <-ctx.Done():
			t.Fatal("no write completed after the recovery")
		}
	}
	close(stop)
	if err := <-werr; err != nil {
		t.Fatalf("the writer failed: %v", err)
	}
	t.Logf("states %v, %d writes, recovery %+v", seen, writes.Load(), s.Recovery())
	for lba, data := range acked {
		got := make([]byte, len(data))
		if err := s.Read(ctx, 1, lba, 512, got); err != nil {
			t.Fatalf("read back LBA %d: %v", lba, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("LBA %d does not hold its acknowledged write", lba)
		}
	}
	op, err := in.LogoutFromTarget(restartIQN)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := op.Wait(ctx); err != nil || !r.LoggedOutOrGone() {
		t.Fatalf("logout: %v %v", r.Outcome, err)
	}
}
