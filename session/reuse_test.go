package session

import (
	"bytes"
	"context"
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
