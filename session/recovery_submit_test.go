package session

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/pdu"
)

// waitCall waits for a call's Done (sent on ch) within a bound.
func waitCall(t *testing.T, ch chan *Call, what string) *Call {
	t.Helper()
	timer := time.NewTimer(20 * time.Second)
	defer timer.Stop()
	select {
	case c := <-ch:
		return c
	case <-timer.C:
		t.Fatalf("%s: Done never ran", what)
		return nil
	}
}

// Calls submitted with Session.Submit keep 8 writes in flight while the
// target resets the session's connections three times: every call ends
// without an error (those in flight at each loss are sent again after the
// reinstatement, the first on each new session past its UNIT ATTENTION),
// the session counts 3 reconnects and the retried calls, and every
// acknowledged write is on the target byte for byte.
func TestRecoverySubmitResumes(t *testing.T) {
	t2w := 0
	tg := newTestTarget(t, iscsitest.Config{UnitAttentionOnLogin: true, DefaultTime2Wait: &t2w})
	g := newGate()
	events := make(chan StateEvent, 64)
	ctx := interopCtx(t)
	s := mustLogin(t, ctx, recoveryConfig(tg, g, RecoveryConfig{ReplacementTimeout: 20 * time.Second}, events))
	defer s.Close()
	if _, err := s.ReadCapacity(ctx, 0); err != nil { // the login's UNIT ATTENTION
		t.Fatal(err)
	}
	const qd, blocks, slots = 8, 8, 16
	type worker struct {
		call  Call
		i     int
		acked map[uint64][]byte
	}
	var (
		mu       sync.Mutex
		firstErr error
		stop     atomic.Bool
		done     atomic.Int64
	)
	finished := make(chan struct{}, qd)
	progress := make(chan struct{}, 1)
	ws := make([]worker, qd)
	var next func(w *worker)
	onDone := func(c *Call) {
		w := &ws[c.Tag]
		mu.Lock()
		if c.Err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("call %d, write %d: %w", c.Tag, w.i, c.Err)
			}
			mu.Unlock()
			finished <- struct{}{}
			return
		}
		lba := uint64((int(c.Tag)*slots + w.i%slots) * blocks)
		w.acked[lba] = bytes.Clone(c.Cmd.Write)
		mu.Unlock()
		done.Add(1)
		select {
		case progress <- struct{}{}:
		default:
		}
		w.i++
		next(w)
	}
	next = func(w *worker) {
		if stop.Load() {
			finished <- struct{}{}
			return
		}
		lba := uint64((int(w.call.Tag)*slots + w.i%slots) * blocks)
		w.call.Cmd.CDB = rw16(0x8a, lba, blocks*512, 512)
		rand.Read(w.call.Cmd.Write)
		if err := s.Submit(&w.call); err != nil {
			mu.Lock()
			if firstErr == nil {
				firstErr = fmt.Errorf("submit %d: %w", w.call.Tag, err)
			}
			mu.Unlock()
			finished <- struct{}{}
		}
	}
	for i := range ws {
		ws[i] = worker{acked: map[uint64][]byte{}}
		ws[i].call = Call{Cmd: Command{Write: make([]byte, blocks*512)}, Done: onDone, Tag: uint64(i)}
	}
	for i := range ws {
		next(&ws[i])
	}
	const rounds = 3
	for r := 0; r < rounds; r++ {
		<-progress
		before := done.Load()
		resetAll(t, tg, s)
		waitState(t, events, SessionRecovering)
		waitState(t, events, SessionUp)
		for done.Load() <= before+qd {
			select {
			case <-progress:
			case <-time.After(20 * time.Second):
				t.Fatalf("round %d: no call completed after the reinstatement", r)
			}
		}
	}
	stop.Store(true)
	for range qd {
		select {
		case <-finished:
		case <-time.After(20 * time.Second):
			t.Fatal("calls never finished")
		}
	}
	mu.Lock()
	err := firstErr
	mu.Unlock()
	if err != nil {
		t.Fatalf("a call failed across the recoveries: %v", err)
	}
	info := s.Recovery()
	if info.Reconnects != rounds || info.Retries == 0 || info.State != SessionUp {
		t.Errorf("recovery info %+v: want %d reconnects, retried calls, up", info, rounds)
	}
	t.Logf("%d writes, %d retried", done.Load(), info.Retries)
	lun := tg.LUNData(0)
	for k := range ws {
		for lba, data := range ws[k].acked {
			if !bytes.Equal(lun[lba*512:lba*512+uint64(len(data))], data) {
				t.Fatalf("call %d: LBA %d does not hold the acknowledged write", k, lba)
			}
		}
	}
	mustLogout(t, ctx, s)
}

// A connection that ends between a Submit call's task registered and its
// send has taken the task: the call goes again once (after the
// reinstatement) and its Done runs once. It ran twice before: sendCall
// reported the call not sent while the connection's end retried it too,
// one Call on two tasks (a race on the call, and with a writer reusing its
// Call an acknowledged write overwritten by an older one:
// TestRecoverySubmitResumes failed about once in 40 -race runs).
func TestRecoverySubmitConnEndsAsRegistered(t *testing.T) {
	t2w := 0
	tg := newTestTarget(t, iscsitest.Config{DefaultTime2Wait: &t2w})
	events := make(chan StateEvent, 64)
	ctx := interopCtx(t)
	s := mustLogin(t, ctx, recoveryConfig(tg, newGate(), RecoveryConfig{ReplacementTimeout: 20 * time.Second}, events))
	defer s.Close()
	var fired atomic.Bool
	registerCallHook = func(c *Conn) {
		if fired.CompareAndSwap(false, true) {
			c.fail(errors.New("test: connection lost as a call was registered"))
		}
	}
	t.Cleanup(func() { registerCallHook = nil })
	data := make([]byte, 4096)
	rand.Read(data)
	var dones atomic.Int32
	ch := make(chan *Call, 2)
	call := &Call{Cmd: Command{CDB: rw16(0x8a, 64, len(data), 512), Write: data}, Done: func(c *Call) {
		dones.Add(1)
		ch <- c
	}}
	if err := s.Submit(call); err != nil {
		t.Fatalf("Submit as its connection ends: %v, want the call taken (it goes again after the reinstatement)", err)
	}
	c := waitCall(t, ch, "the call whose connection ended as it was registered")
	if !fired.Load() {
		t.Fatal("the hook never ran")
	}
	if c.Err != nil {
		t.Fatalf("call: %v, want success after the reinstatement", c.Err)
	}
	if !bytes.Equal(tg.LUNData(0)[64*512:64*512+len(data)], data) {
		t.Error("the LUN does not hold the write")
	}
	// Logging out waits for the session's goroutines: a second Done, if
	// any, has run by then.
	mustLogout(t, ctx, s)
	if n := dones.Load(); n != 1 {
		t.Errorf("Done ran %d times, want once", n)
	}
}

// The target sends half of a read's data (garbage) in a Data-In, then
// resets the connection: the read, through Execute and through Submit, is
// sent again after the reinstatement and returns the LUN's data, and the
// session counts it as retried.
func TestRecoveryResetMidDataIn(t *testing.T) {
	for _, viaSubmit := range []bool{false, true} {
		t.Run(fmt.Sprintf("submit=%v", viaSubmit), func(t *testing.T) {
			var armed atomic.Bool
			hook := func(ev *iscsitest.Event) iscsitest.Action {
				c, ok := ev.PDU.(*pdu.SCSICommand)
				if !ok || !c.Read || !armed.CompareAndSwap(true, false) {
					return iscsitest.Continue
				}
				half := bytes.Repeat([]byte{0xee}, int(c.ExpectedDataTransferLength/2))
				return iscsitest.Respond(&pdu.DataIn{ITT: c.ITT, LUN: c.LUN, TTT: pdu.ReservedTag}, half).ThenReset()
			}
			t2w := 0
			tg := newTestTarget(t, iscsitest.Config{Hook: hook, DefaultTime2Wait: &t2w})
			g := newGate()
			events := make(chan StateEvent, 64)
			ctx := interopCtx(t)
			s := mustLogin(t, ctx, recoveryConfig(tg, g, RecoveryConfig{ReplacementTimeout: 20 * time.Second}, events))
			defer s.Close()
			data := make([]byte, 32*512)
			rand.Read(data)
			if err := s.Write(ctx, 0, 64, 512, data); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(data))
			armed.Store(true)
			if viaSubmit {
				ch := make(chan *Call, 1)
				call := &Call{Cmd: Command{CDB: rw16(0x88, 64, len(got), 512), Read: got}, Done: func(c *Call) { ch <- c }}
				if err := s.Submit(call); err != nil {
					t.Fatal(err)
				}
				c := waitCall(t, ch, "read")
				if c.Err != nil || c.Result.N != len(got) {
					t.Fatalf("read across the reset: %v (%d bytes)", c.Err, c.Result.N)
				}
			} else if err := s.Read(ctx, 0, 64, 512, got); err != nil {
				t.Fatalf("read across the reset: %v", err)
			}
			if armed.Load() {
				t.Fatal("the target never reset the read")
			}
			if !bytes.Equal(got, data) {
				t.Fatal("the read retried after the reinstatement did not return the LUN's data")
			}
			if info := s.Recovery(); info.Reconnects != 1 || info.Retries != 1 {
				t.Errorf("recovery info %+v: want 1 reconnect, 1 retried command", info)
			}
			mustLogout(t, ctx, s)
		})
	}
}

// A write submitted with Submit that the target resets on is sent again
// after the reinstatement (the default), or ends with its outcome unknown
// under NoRetryWrites, not counted as retried.
func TestRecoverySubmitWriteInFlight(t *testing.T) {
	for _, noRetry := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoRetryWrites=%v", noRetry), func(t *testing.T) {
			isWrite := func(ev *iscsitest.Event) bool {
				c, ok := ev.PDU.(*pdu.SCSICommand)
				return ok && c.Write
			}
			t2w := 0
			tg := newTestTarget(t, iscsitest.Config{Hook: iscsitest.Once(iscsitest.When(isWrite, iscsitest.Reset)), DefaultTime2Wait: &t2w})
			g := newGate()
			events := make(chan StateEvent, 64)
			ctx := interopCtx(t)
			s := mustLogin(t, ctx, recoveryConfig(tg, g, RecoveryConfig{ReplacementTimeout: 20 * time.Second, NoRetryWrites: noRetry}, events))
			defer s.Close()
			data := make([]byte, 4096)
			rand.Read(data)
			ch := make(chan *Call, 1)
			call := &Call{Cmd: Command{CDB: rw16(0x8a, 8, len(data), 512), Write: data}, Done: func(c *Call) { ch <- c }}
			if err := s.Submit(call); err != nil {
				t.Fatal(err)
			}
			c := waitCall(t, ch, "write")
			info := s.Recovery()
			if noRetry {
				if !errors.Is(c.Err, ErrOutcomeUnknown) || info.Retries != 0 {
					t.Fatalf("write in flight under NoRetryWrites: %v, %d retried", c.Err, info.Retries)
				}
				waitState(t, events, SessionUp)
				return
			}
			if c.Err != nil || info.Retries != 1 {
				t.Fatalf("write in flight: %v, %d retried", c.Err, info.Retries)
			}
			if !bytes.Equal(tg.LUNData(0)[8*512:8*512+len(data)], data) {
				t.Fatal("the retried write is not on the target")
			}
		})
	}
}

// A call submitted while the target is down waits (Submit returns nil) and
// ends with ErrSessionFailed, never sent, at the replacement timeout; once
// the session has failed Submit fails at once. With a negative replacement
// timeout Submit fails at once with ErrSessionRecovering.
func TestRecoverySubmitFails(t *testing.T) {
	t.Run("timeout", func(t *testing.T) {
		ctx := interopCtx(t)
		_, s, _, events := downSession(t, ctx, RecoveryConfig{ReplacementTimeout: 300 * time.Millisecond})
		ch := make(chan *Call, 1)
		call := &Call{Cmd: Command{CDB: []byte{0, 0, 0, 0, 0, 0}}, Done: func(c *Call) { ch <- c }}
		if err := s.Submit(call); err != nil {
			t.Fatalf("Submit while recovering: %v", err)
		}
		c := waitCall(t, ch, "TEST UNIT READY")
		if !errors.Is(c.Err, ErrSessionFailed) || !errors.Is(c.Err, ErrNotSent) {
			t.Fatalf("call across the replacement timeout: %v", c.Err)
		}
		waitState(t, events, SessionFailed)
		if err := s.Submit(call); !errors.Is(err, ErrSessionFailed) {
			t.Fatalf("Submit on a failed session: %v", err)
		}
	})
	t.Run("failFast", func(t *testing.T) {
		ctx := interopCtx(t)
		_, s, _, _ := downSession(t, ctx, RecoveryConfig{ReplacementTimeout: -1})
		call := &Call{Cmd: Command{CDB: []byte{0, 0, 0, 0, 0, 0}}, Done: func(c *Call) { t.Error("Done ran for a call Submit refused") }}
		if err := s.Submit(call); !errors.Is(err, ErrSessionRecovering) || !errors.Is(err, ErrNotSent) {
			t.Fatalf("Submit while recovering, fail fast: %v", err)
		}
	})
	t.Run("close", func(t *testing.T) {
		ctx := interopCtx(t)
		_, s, _, _ := downSession(t, ctx, RecoveryConfig{ReplacementTimeout: time.Minute})
		ch := make(chan *Call, 1)
		call := &Call{Cmd: Command{CDB: []byte{0, 0, 0, 0, 0, 0}}, Done: func(c *Call) { ch <- c }}
		if err := s.Submit(call); err != nil {
			t.Fatalf("Submit while recovering: %v", err)
		}
		s.Close()
		select {
		case c := <-ch:
			if c.Err == nil || !errors.Is(c.Err, ErrNotSent) {
				t.Fatalf("call waiting when Close ran: %v", c.Err)
			}
		default:
			t.Fatal("Close returned before the waiting call's Done ran")
		}
	})
}

// The target announces it drops the session (async event 3) with Time2Wait
// 1 s and Time2Retain 7 s, where 0 and 20 were negotiated: the recovery
// reports those, waits the second before it reconnects, and a later loss
// without an announcement waits the negotiated 0 again.
func TestRecoveryAsyncDropTime2Wait(t *testing.T) {
	t2w := 0
	tg := newTestTarget(t, iscsitest.Config{DefaultTime2Wait: &t2w})
	g := newGate()
	events := make(chan StateEvent, 64)
	ctx := interopCtx(t)
	s := mustLogin(t, ctx, recoveryConfig(tg, g, RecoveryConfig{ReplacementTimeout: 20 * time.Second}, events))
	defer s.Close()
	if p := s.Params(); p.DefaultTime2Wait != 0 {
		t.Fatalf("negotiated DefaultTime2Wait %d, want 0", p.DefaultTime2Wait)
	}
	cid := s.Conns()[0].CID()
	if err := tg.SendAsync(s.TSIH(), cid, pdu.AsyncMessage{AsyncEvent: pdu.AsyncSessionDrop, Parameter2: 1, Parameter3: 7}, nil); err != nil {
		t.Fatal(err)
	}
	ev := waitState(t, events, SessionRecovering)
	ri := ev.Recovery
	if ri.Time2Wait != time.Second || ri.Time2Retain != 7*time.Second || ri.NextTry.Sub(ri.Since) != time.Second ||
		ri.RetainUntil.Sub(ri.Since) != 8*time.Second {
		t.Fatalf("recovery after async event 3: %+v", ri)
	}
	up := waitState(t, events, SessionUp)
	if d := up.At.Sub(ri.Since); d < time.Second {
		t.Fatalf("reinstated %v after the drop, before its Time2Wait of 1 s", d)
	}
	resetAll(t, tg, s)
	ev = waitState(t, events, SessionRecovering)
	if ev.Recovery.Time2Wait != 0 || !ev.Recovery.NextTry.Equal(ev.Recovery.Since) {
		t.Fatalf("recovery after a plain loss: %+v", ev.Recovery)
	}
	waitState(t, events, SessionUp)
	if _, err := s.Execute(ctx, &Command{CDB: []byte{0, 0, 0, 0, 0, 0}}); err != nil {
		t.Fatalf("command after the recoveries: %v", err)
	}
	mustLogout(t, ctx, s)
}
