package session

import (
	"context"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/pdu"
)

// The worst cases of adaptive receive coalescing (coalesceMark): the
// reader waits with SO_RCVLOWAT raised for a few responses, and a PDU that
// comes alone must still be read within coalesceBound (the watchdog drops
// the mark after 4 to 8 ms; the rest is slack for the race detector on a
// loaded machine).

// coalesceBound is how long after the target sent it a PDU must have been
// read and handled: 12 times the watchdog's 8 ms, and far below a stall
// (without the watchdog a lone PDU waits until more data comes: these
// tests then fail after 5 s). It was 20 ms, which a full -race run on 2
// cores with qemu beside it exceeded (27.7 ms in TestCoalesceOneAtATime):
// the scheduler's latency under load, not the reader's.
const coalesceBound = 100 * time.Millisecond

// coalesceDepth is how many commands the tests keep outstanding: enough for
// a mark of several responses.
const coalesceDepth = 32

// coalesceSize is the read length of the tests' commands.
const coalesceSize = 4096

// coalesceSession logs a session in over loopback TCP with a CmdSN window
// above coalesceDepth, and returns its connection, skipping where the
// connection is not read through a raw socket reader (no SO_RCVLOWAT).
func coalesceSession(t *testing.T, cfg Config) (*Session, *faketarget.Target, *Conn) {
	t.Helper()
	s, f, _ := tcpSession(t, cfg, faketarget.Login{Window: 2 * coalesceDepth})
	c := s.Conns()[0]
	if c.as.src == nil {
		t.Skip("no raw socket reader here")
	}
	return s, f, c
}

// submitReads submits n reads and returns the commands as the target got
// them and the channel their calls end on.
func submitReads(t *testing.T, s *Session, f *faketarget.Target, n int) ([]faketarget.PDU, <-chan *Call) {
	t.Helper()
	done := make(chan *Call, n)
	for i := range n {
		call := &Call{Cmd: *readCmd(coalesceSize), Tag: uint64(i), Done: func(c *Call) { done <- c }}
		if err := s.Submit(call); err != nil {
			t.Fatalf("Submit %d: %v", i, err)
		}
	}
	cmds := make([]faketarget.PDU, n)
	for i := range cmds {
		cmds[i] = f.Expect(pdu.OpSCSICommand)
	}
	return cmds, done
}

// answerOne answers cmd with its data and status and checks that its call
// ends, successfully, within coalesceBound.
func answerOne(t *testing.T, f *faketarget.Target, cmd faketarget.PDU, done <-chan *Call) {
	t.Helper()
	start := time.Now()
	f.ReadData(cmd, make([]byte, coalesceSize))
	select {
	case call := <-done:
		if took := time.Since(start); took > coalesceBound {
			t.Errorf("call %d ended %v after its response was sent, want within %v", call.Tag, took, coalesceBound)
		}
		if call.Err != nil {
			t.Errorf("call %d: %v", call.Tag, call.Err)
		}
	case <-time.After(wait):
		t.Fatalf("no call ended within %v of a response", wait)
	}
}

// markSets returns how many times the connection's receive mark was set.
func markSets(c *Conn) uint64 {
	_, sets := c.as.src.LowWater()
	return sets
}

// TestCoalesceOneAtATime: a target that answers one command at a time while
// many are outstanding has each answer read within coalesceBound, though
// the reader waits with a mark of several responses; once the watchdog has
// dropped a mark nobody reached, the next coalesceCool waits have none, so
// that the answers do not each wait for the watchdog.
func TestCoalesceOneAtATime(t *testing.T) {
	s, f, c := coalesceSession(t, testConfig())
	cmds, done := submitReads(t, s, f, coalesceDepth)
	for _, cmd := range cmds {
		answerOne(t, f, cmd, done)
	}
	// With coalesceMin commands or more outstanding the reader raised the
	// mark before waiting and the watchdog dropped it; then it rested
	// (without the rest: set twice per answer, 32 times at least).
	if n := c.as.src.Drops(); n < 1 {
		t.Errorf("the watchdog dropped the mark %d times, want at least once: the test did not wait with a raised mark", n)
	}
	if sets, most := markSets(c), uint64(4); sets > most {
		t.Errorf("receive mark set %d times for %d answers one at a time, want at most %d: marks did not rest after a drop", sets, coalesceDepth, most)
	}
	if n, _ := c.as.src.LowWater(); n != 1 {
		t.Errorf("receive mark %d with nothing outstanding, want 1", n)
	}
}

// TestCoalesceLowDepth: a lone command at queue depth 1 (submitted, and
// executed) is read at once; the mark is never raised below coalesceMin
// outstanding commands.
func TestCoalesceLowDepth(t *testing.T) {
	s, f, c := coalesceSession(t, testConfig())
	for range 3 {
		cmds, done := submitReads(t, s, f, 1)
		answerOne(t, f, cmds[0], done)
	}
	for range 3 {
		ch := goExecute(context.Background(), s, readCmd(coalesceSize))
		cmd := f.Expect(pdu.OpSCSICommand)
		start := time.Now()
		f.ReadData(cmd, make([]byte, coalesceSize))
		select {
		case r := <-ch:
			if r.err != nil {
				t.Fatalf("Execute: %v", r.err)
			}
			if took := time.Since(start); took > coalesceBound {
				t.Errorf("Execute returned %v after its response was sent, want within %v", took, coalesceBound)
			}
		case <-time.After(wait):
			t.Fatalf("Execute did not return within %v of its response", wait)
		}
	}
	// Seven outstanding: still no mark.
	cmds, done := submitReads(t, s, f, coalesceMin-1)
	for _, cmd := range cmds {
		answerOne(t, f, cmd, done)
	}
	if sets := markSets(c); sets != 0 {
		t.Errorf("receive mark set %d times below %d outstanding commands, want 0", sets, coalesceMin)
	}
}

// raiseMark answers the first of cmds, so that the reader waits again with
// the rest outstanding, and, for the first of the three lone PDUs the tests
// send (i), waits for the mark to change: the reader raised it, or the
// watchdog dropped the one it waits with. Once the watchdog has dropped it
// marks rest for coalesceCool waits, so the next ones come with none.
func raiseMark(t *testing.T, f *faketarget.Target, c *Conn, cmds []faketarget.PDU, done <-chan *Call, i int) {
	t.Helper()
	before := markSets(c)
	answerOne(t, f, cmds[0], done)
	if i > 0 {
		return
	}
	deadline := time.Now().Add(wait)
	for markSets(c) == before {
		if time.Now().After(deadline) {
			n, sets := c.as.src.LowWater()
			t.Fatalf("the reader did not raise its receive mark within %v with %d commands outstanding (mark %d, %d sets before, %d now)", wait, len(cmds)-1, n, before, sets)
		}
		time.Sleep(50 * time.Microsecond) // no signal says the reader set it
	}
}

// TestCoalesceNOPInAlone: a target's NOP-In arriving alone while many
// commands are outstanding is answered within coalesceBound.
func TestCoalesceNOPInAlone(t *testing.T) {
	s, f, c := coalesceSession(t, testConfig())
	cmds, done := submitReads(t, s, f, coalesceDepth)
	for i := range 3 {
		raiseMark(t, f, c, cmds, done, i)
		cmds = cmds[1:]
		start := time.Now()
		f.Ping()
		if took := time.Since(start); took > coalesceBound {
			t.Errorf("NOP-In answered %v after it was sent, want within %v", took, coalesceBound)
		}
	}
	for _, cmd := range cmds {
		f.ReadData(cmd, make([]byte, coalesceSize))
	}
	for range cmds {
		<-done
	}
}

// TestCoalesceAsyncAlone: an asynchronous message arriving alone while
// many commands are outstanding is delivered within coalesceBound.
func TestCoalesceAsyncAlone(t *testing.T) {
	events := make(chan AsyncEvent, 4)
	cfg := testConfig()
	cfg.OnAsync = func(_ *Conn, ev AsyncEvent) bool {
		events <- ev
		return false
	}
	s, f, c := coalesceSession(t, cfg)
	cmds, done := submitReads(t, s, f, coalesceDepth)
	for i := range 3 {
		raiseMark(t, f, c, cmds, done, i)
		cmds = cmds[1:]
		start := time.Now()
		f.MustSend(&pdu.AsyncMessage{ITT: pdu.ReservedTag, AsyncEvent: pdu.AsyncVendorSpecific, AsyncVCode: uint8(i), SeqNums: f.Seq(true)}, nil)
		select {
		case ev := <-events:
			if took := time.Since(start); took > coalesceBound {
				t.Errorf("async message delivered %v after it was sent, want within %v", took, coalesceBound)
			}
			if ev.Event != pdu.AsyncVendorSpecific || ev.VCode != uint8(i) {
				t.Errorf("async event %v code %d, want %v code %d", ev.Event, ev.VCode, pdu.AsyncVendorSpecific, i)
			}
		case <-time.After(wait):
			t.Fatalf("async message not delivered within %v", wait)
		}
	}
	for _, cmd := range cmds {
		f.ReadData(cmd, make([]byte, coalesceSize))
	}
	for range cmds {
		<-done
	}
}

// TestCoalesceLogoutResponse: a Logout Response arriving alone while the
// reader waits with a raised mark ends the logout within coalesceBound.
func TestCoalesceLogoutResponse(t *testing.T) {
	s, f, c := coalesceSession(t, testConfig())
	cmds, done := submitReads(t, s, f, coalesceDepth)
	raiseMark(t, f, c, cmds, done, 0)
	type logoutResult struct {
		res LogoutResult
		err error
	}
	ch := make(chan logoutResult, 1)
	go func() {
		res, err := s.Logout(context.Background(), LogoutOptions{Timeout: opTimeout})
		ch <- logoutResult{res, err}
	}()
	x := f.Expect(pdu.OpLogoutRequest)
	start := time.Now()
	f.AnswerLogout(x, pdu.LogoutSuccess)
	// The reader has handled the response once the connection is logged
	// out; the target has not closed it yet, which would wake the reader
	// whatever its mark. No signal says so: the state is polled.
	for c.state() != connLoggedOut {
		if took := time.Since(start); took > coalesceBound {
			t.Fatalf("Logout Response not handled %v after it was sent, want within %v (state %v)", took, coalesceBound, c.state())
		}
		time.Sleep(50 * time.Microsecond)
	}
	f.Close() // as a target does after a successful Logout Response
	select {
	case r := <-ch:
		if r.err != nil || !r.res.OK() {
			t.Errorf("Logout: %+v, %v; want a successful logout", r.res, r.err)
		}
	case <-time.After(wait):
		t.Fatalf("Logout did not return within %v of its response", wait)
	}
	for range len(cmds) - 1 {
		select {
		case <-done:
		case <-time.After(wait):
			t.Fatalf("outstanding calls not ended within %v of the logout", wait)
		}
	}
}

// TestCoalesceSetsNotPerIO: at a steady queue depth the mark is set when
// it changes, not per I/O: a target answering each round of commands at
// once, the calls resubmitting themselves from Done.
func TestCoalesceSetsNotPerIO(t *testing.T) {
	s, f, c := coalesceSession(t, testConfig())
	const rounds = 20
	cmds, done := submitReads(t, s, f, coalesceDepth)
	for r := range rounds {
		for _, cmd := range cmds {
			f.ReadData(cmd, make([]byte, coalesceSize))
		}
		for i := range cmds {
			select {
			case call := <-done:
				if call.Err != nil {
					t.Fatalf("round %d: call %d: %v", r, call.Tag, call.Err)
				}
				if r == rounds-1 {
					continue
				}
				call.Result, call.Err = Result{}, nil
				if err := s.Submit(call); err != nil {
					t.Fatalf("round %d: resubmit: %v", r, err)
				}
			case <-time.After(wait):
				t.Fatalf("round %d: only %d calls ended", r, i)
			}
		}
		if r < rounds-1 {
			for i := range cmds {
				cmds[i] = f.Expect(pdu.OpSCSICommand)
			}
		}
	}
	// A round raises the mark at most a few times (as the depth falls and
	// comes back) and the watchdog drops it once while the target is
	// slow to answer: far below one set per I/O.
	ios := uint64(rounds * coalesceDepth)
	if sets := markSets(c); sets == 0 || sets > ios/4 {
		t.Errorf("receive mark set %d times for %d I/Os, want between 1 and %d", sets, ios, ios/4)
	}
}
