package session

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/pdu"
)

// TestExecuteStaleAnswersAfterReuse checks that Execute's reuse of its
// tasks (taskPool) lets no answer to a finished command reach the next
// one: after each read ends, while the next read waits, the target sends
// the finished command's tag again in a Data-In with status and in a
// SCSI Response with CHECK CONDITION. The waiting read must not end on
// them, its buffer must hold only its own data, and it must end GOOD with
// what the target sends for its own tag.
func TestExecuteStaleAnswersAfterReuse(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	ctx := context.Background()
	const n = 512
	cmd := readCmd(n)
	ch := goExecute(ctx, s, cmd)
	prev := f.Expect(pdu.OpSCSICommand).PDU.(*pdu.SCSICommand)
	f.MustSend(&pdu.DataIn{Final: true, HasStatus: true, ITT: prev.ITT, TTT: pdu.ReservedTag, SeqNums: f.Seq(true)}, pattern(n, 0))
	if r := waitExec(t, ch); r.err != nil || r.res.N != n {
		t.Fatalf("first read: %+v %v", r.res, r.err)
	}
	for i := 1; i <= 20; i++ {
		cmd := readCmd(n)
		ch := goExecute(ctx, s, cmd)
		c := f.Expect(pdu.OpSCSICommand).PDU.(*pdu.SCSICommand)
		if c.ITT == prev.ITT {
			t.Fatalf("round %d: the new command has the finished one's tag %#x", i, c.ITT)
		}
		stale := bytes.Repeat([]byte{0xee}, n)
		f.MustSend(&pdu.DataIn{Final: true, HasStatus: true, ITT: prev.ITT, TTT: pdu.ReservedTag, SeqNums: f.Seq(true)}, stale)
		sense := []byte{0, 18, 0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0}
		f.MustSend(&pdu.SCSIResponse{ITT: prev.ITT, Status: pdu.StatusCheckCondition, SeqNums: f.Seq(true)}, sense)
		f.Ping() // the reader has handled both
		select {
		case r := <-ch:
			t.Fatalf("round %d: the waiting read ended on answers to a finished command: %+v %v", i, r.res, r.err)
		case <-time.After(quiet):
		}
		if bytes.Contains(cmd.Read, []byte{0xee}) {
			t.Fatalf("round %d: a finished command's Data-In went into the waiting read's buffer", i)
		}
		want := pattern(n, byte(i))
		f.MustSend(&pdu.DataIn{Final: true, HasStatus: true, ITT: c.ITT, TTT: pdu.ReservedTag, SeqNums: f.Seq(true)}, want)
		r := waitExec(t, ch)
		if r.err != nil || r.res.N != n || r.res.Status != pdu.StatusGood || !bytes.Equal(cmd.Read, want) {
			t.Fatalf("round %d: read: %+v %v", i, r.res, r.err)
		}
		prev = c
	}
}

// TestExecuteSharedContextWatch checks the context watch that Execute's
// commands share (ctxWatch): two reads with one context and a third with
// another run at once; canceling the third's context ends only the third
// (ABORT TASK for its tag), the first then ends GOOD, canceling the shared
// context ends the second (ABORT TASK for its tag), and a read with a new
// context afterwards ends GOOD with its data.
func TestExecuteSharedContextWatch(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	ctxA, cancelA := context.WithCancel(context.Background())
	defer cancelA()
	ctxB, cancelB := context.WithCancel(context.Background())
	defer cancelB()
	const n = 512
	cmd1, cmd2, cmd3 := readCmd(n), readCmd(n), readCmd(n)
	ch1 := goExecute(ctxA, s, cmd1)
	c1 := f.Expect(pdu.OpSCSICommand).PDU.(*pdu.SCSICommand)
	ch2 := goExecute(ctxA, s, cmd2)
	c2 := f.Expect(pdu.OpSCSICommand).PDU.(*pdu.SCSICommand)
	ch3 := goExecute(ctxB, s, cmd3)
	c3 := f.Expect(pdu.OpSCSICommand).PDU.(*pdu.SCSICommand)

	abortOf := func(want uint32) {
		t.Helper()
		r := f.Expect(pdu.OpTaskMgmtRequest).PDU.(*pdu.TaskMgmtRequest)
		if r.Function != pdu.TMFAbortTask || r.RefTaskTag != want {
			t.Fatalf("task management %v for tag %#x, want ABORT TASK for %#x", r.Function, r.RefTaskTag, want)
		}
		f.MustSend(&pdu.TaskMgmtResponse{Response: pdu.TMFComplete, ITT: r.ITT, SeqNums: f.Seq(true)}, nil)
	}
	cancelB()
	if r := waitExec(t, ch3); !errors.Is(r.err, ErrOutcomeUnknown) {
		t.Fatalf("read with the canceled context: %+v %v, want ErrOutcomeUnknown", r.res, r.err)
	}
	abortOf(c3.ITT)
	select {
	case r := <-ch1:
		t.Fatalf("the first read ended with another context: %+v %v", r.res, r.err)
	case r := <-ch2:
		t.Fatalf("the second read ended with another context: %+v %v", r.res, r.err)
	case <-time.After(quiet):
	}
	want := pattern(n, 1)
	f.MustSend(&pdu.DataIn{Final: true, HasStatus: true, ITT: c1.ITT, TTT: pdu.ReservedTag, SeqNums: f.Seq(true)}, want)
	if r := waitExec(t, ch1); r.err != nil || r.res.N != n || !bytes.Equal(cmd1.Read, want) {
		t.Fatalf("first read: %+v %v", r.res, r.err)
	}
	cancelA()
	if r := waitExec(t, ch2); !errors.Is(r.err, ErrOutcomeUnknown) {
		t.Fatalf("second read after its context ended: %+v %v, want ErrOutcomeUnknown", r.res, r.err)
	}
	abortOf(c2.ITT)

	ctxC, cancelC := context.WithCancel(context.Background())
	defer cancelC()
	cmd4 := readCmd(n)
	ch4 := goExecute(ctxC, s, cmd4)
	c4 := f.Expect(pdu.OpSCSICommand).PDU.(*pdu.SCSICommand)
	want = pattern(n, 4)
	f.MustSend(&pdu.DataIn{Final: true, HasStatus: true, ITT: c4.ITT, TTT: pdu.ReservedTag, SeqNums: f.Seq(true)}, want)
	if r := waitExec(t, ch4); r.err != nil || r.res.N != n || !bytes.Equal(cmd4.Read, want) {
		t.Fatalf("read with a new context: %+v %v", r.res, r.err)
	}
}
