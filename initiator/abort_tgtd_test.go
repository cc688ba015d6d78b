package initiator

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/internal/testutil"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

// Issue 15, part 4 on tgtd: the abort policy with k commands in flight:
// 32 reads of 256 KiB (tgtd is single-threaded: they queue), or 16 writes
// of 512 KiB, each past FirstBurstLength so that it waits for an R2T. The
// initiator's reads of the connection are held from before the commands go
// out until ABORT TASK SET is on the wire, so that none completes before
// the logout begins (and no R2T is answered): exactly k commands are in
// flight, and the result must count k, each the way its command ended
// (nil: completed; ErrAborted: aborted; any other error: outcome unknown).
// tgtadm shows no session after.
func TestAbortInFlightTgtd(t *testing.T) {
	for _, tc := range []struct {
		name    string
		write   bool
		k, size int
	}{{"Reads", false, 32, 256 << 10}, {"Writes", true, 16, 512 << 10}} {
		t.Run(tc.name, func(t *testing.T) { testAbortInFlightTgtd(t, tc.write, tc.k, tc.size) })
	}
}

func testAbortInFlightTgtd(t *testing.T, write bool, k, size int) {
	const bs = 512
	peers.Require(t, "tgtd", "tgtadm")
	tg := peers.StartTgtd(t)
	if _, err := tg.AddDiskTarget(1, targetA, 16<<20); err != nil {
		t.Fatal(err)
	}
	var (
		armed   atomic.Bool
		sent    atomic.Int32
		allSent = make(chan struct{})
		tmf     = make(chan struct{})
		tmfOnce sync.Once
		pc      *testutil.PDUConn
	)
	wrap := func(c net.Conn) net.Conn {
		pc = testutil.NewPDUConn(c)
		pc.OnPDU = func(bhs []byte, _ bool) {
			if !armed.Load() {
				return
			}
			switch testutil.Opcode(bhs) {
			case pdu.OpSCSICommand:
				if sent.Add(1) == int32(k) {
					close(allSent)
				}
			case pdu.OpTaskMgmtRequest:
				tmfOnce.Do(func() { close(tmf) })
			}
		}
		return pc
	}
	in, err := New(Config{Name: "iqn.2026-11.org.goiscsi:abort-tgtd", WrapConn: wrap})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := in.Login(ctx, tg.Addr, targetA, LoginOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p := s.Params(); p.HeaderDigest || p.DataDigest {
		t.Fatalf("digests negotiated (%v, %v): the PDU splitter needs none", p.HeaderDigest, p.DataDigest)
	}
	if err := s.TestUnitReady(ctx, 1); err != nil { // the new nexus's unit attention
		t.Fatal(err)
	}
	waitNexus(t, tg, 1, 1)
	// What tgtd answers to ABORT TASK SET, asked once with nothing running:
	// the abort policy can abort nothing unless it is "function complete".
	tsResp, err := s.TaskManagement(ctx, pdu.TMFAbortTaskSet, 1, 0)
	if err != nil {
		t.Fatalf("ABORT TASK SET with nothing running: %v", err)
	}
	t.Logf("tgtd answers ABORT TASK SET with %q (%d)", tsResp, tsResp)

	release := pc.Hold(30 * time.Second)
	defer release()
	armed.Store(true)
	errs := make([]error, k)
	var wg sync.WaitGroup
	var returned atomic.Int32
	for i := range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := &session.Command{LUN: 1, CDB: testutil.RW16(0x88, uint64(i*size/bs), size, bs), Read: make([]byte, size)}
			if write {
				cmd = &session.Command{LUN: 1, CDB: testutil.RW16(0x8a, uint64(i*size/bs), size, bs), Write: testutil.Random(uint64(i), size)}
			}
			_, errs[i] = s.Execute(ctx, cmd)
			returned.Add(1)
		}()
	}
	testutil.Recv(t, testutil.Go(func() struct{} { <-allSent; return struct{}{} }), 20*time.Second, "the commands on the wire")
	if n := returned.Load(); n != 0 {
		t.Fatalf("%d commands returned while the connection's reads were held", n)
	}
	start := time.Now()
	op, err := in.LogoutFromTargetWith(targetA, logout.Options{InFlight: session.InFlightAbort,
		AbortTimeout: 10 * time.Second, Timeout: 10 * time.Second, Deadline: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-tmf:
	case <-op.Done():
		t.Fatal("the logout ended without sending ABORT TASK SET")
	case <-ctx.Done():
		t.Fatal("no ABORT TASK SET on the wire")
	}
	release()
	r, err := op.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	var want logout.Commands
	for i, err := range errs {
		switch {
		case err == nil:
			want.Completed++
		case errors.Is(err, session.ErrAborted):
			want.Aborted++
		case errors.Is(err, session.ErrOutcomeUnknown):
			want.Unknown++
		default:
			t.Errorf("command %d: %v, neither completed, aborted nor outcome unknown", i, err)
		}
	}
	t.Logf("%d commands of %d KiB in flight (write %v), logged out (abort) in %v: %+v", k, size>>10, write, time.Since(start), r.Commands)
	if r.Outcome != logout.Success || len(r.Sessions) != 1 || len(r.Sessions[0].Conns) != 1 {
		t.Fatalf("outcome %v, %d sessions", r.Outcome, len(r.Sessions))
	}
	c := r.Sessions[0].Conns[0]
	if r.Commands.Total() != k || r.Commands != want || r.Sessions[0].Commands != want || c.Commands != want {
		t.Fatalf("counts %+v (session %+v, connection %+v), want %+v: the %d commands in flight, each as it ended",
			r.Commands, r.Sessions[0].Commands, c.Commands, want, k)
	}
	if want.Aborted > 0 && tsResp != pdu.TMFComplete {
		t.Fatalf("%d commands aborted, though tgtd answers ABORT TASK SET with %q", want.Aborted, tsResp)
	}
	// A target that confirms ABORT TASK SET leaves none unknown: each
	// command was aborted, or completed before the abort. One that refuses
	// it aborts none, and the abort policy then fails those still running
	// with their outcome unknown, as the policy fail does.
	if tsResp == pdu.TMFComplete && (want.Unknown != 0 || want.Aborted == 0 && want.Completed != k) {
		t.Fatalf("abort policy, ABORT TASK SET confirmed: %+v of %d", want, k)
	}
	if len(c.Steps) != 1 || c.Steps[0].Kind != logout.StepLogout || c.Steps[0].State != logout.ConnLoggedOut ||
		c.Steps[0].Commands != want || c.FailedCommands != want.Unknown {
		t.Fatalf("steps %+v, failed %d", c.Steps, c.FailedCommands)
	}
	waitNexus(t, tg, 1, 0)
}
