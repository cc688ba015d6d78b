package session

import (
	"sync"
	"sync/atomic"

	"github.com/goiscsi/iscsi/pdu"
)

type taskKind uint8

const (
	taskSCSI taskKind = iota
	taskNOP
	taskTMF
	taskLogout
	taskText
)

// requestOp is the opcode of the request each kind of task sends, for
// matching the header a Reject carries.
var requestOp = [...]pdu.Opcode{
	taskSCSI:   pdu.OpSCSICommand,
	taskNOP:    pdu.OpNOPOut,
	taskTMF:    pdu.OpTaskMgmtRequest,
	taskLogout: pdu.OpLogoutRequest,
	taskText:   pdu.OpTextRequest,
}

// task is one exchange waiting for the target: a SCSI command, a NOP-Out,
// a task management request, a logout or a text request.
type task struct {
	itt  uint32
	kind taskKind
	// done is closed when the task ends, except for a task that is
	// reused: a Call's (submit.go) stays open for its next use, and an
	// Execute task that recycle takes back gets one token instead (done
	// has room for one), which its waiter takes. A SCSI task's done is
	// made with room for one either way (newSCSITask).
	done chan struct{}
	// fin is set by whoever ends the task, once.
	fin atomic.Bool
	err error
	// call is the Call of a task submitted with Submit; conn is the
	// connection of a Call's task and of an Execute SCSI task, nil for
	// the other kinds.
	call *Call
	conn *Conn
	// unlisted is set when the reader, ending an Execute task with the
	// target's status, took it out of the task table while the connection
	// was up and no logout had counted it (unlistDone): nothing but its
	// own goroutine holds it any more, so it may be reused (recycle), and
	// complete signals done with a token rather than closing it; it is
	// guarded by the Conn's mu. pinned is set when a logout took the task
	// into its count of commands in flight (inflight.go): such a task is
	// never reused (neither recycled nor, for a Submit call, reset for
	// the next call). It is atomic: a task held by ERL 2 connection
	// recovery is in no connection's table when a logout pins it.
	unlisted bool
	pinned   atomic.Bool

	// SCSI command state. mu is held while the reader copies Data-In into
	// readBuf, so that a caller giving up can wait for the copy to end.
	mu   sync.Mutex
	dead bool
	// cmdSN is the request's CmdSN once sent is set, for ABORT TASK and
	// for matching a Reject to its request.
	cmdSN uint32
	sent  bool
	// unsendable is set when the connection's end left the task, not
	// yet sent, to fail (holdForReassign): its request must not go out
	// after that (claimRequest), or its CmdSN would be a command the
	// initiator has given up on.
	unsendable bool
	lun        pdu.LUN
	readBuf    []byte
	writeLen   int
	received   int
	// wrote is how much of the write went out from its start without a
	// gap (immediate, unsolicited and solicited data); spans holds the
	// ranges sent past a gap, for a target that asks out of order. Only
	// the command's own goroutine touches them.
	wrote int
	spans [][2]int
	// flushing is set while the command's goroutine writes (or waits for
	// a write of) PDUs that point into the caller's memory or hold the
	// goroutine; cancel fails the connection if the caller gives up then.
	flushing atomic.Bool
	dataSN   uint32
	r2ts     chan r2tIn
	// r2tSN is the R2TSN the next R2T of a write carries (ERL 1; the
	// reader's); cmd is Execute's command, for a retry (a Call's is
	// call.Cmd): of the command the target rejected for its digest
	// (ERL 1) or never got before its connection died (ERL 2,
	// connrecovery.go).
	r2tSN uint32
	// r2tResync is set when a TASK REASSIGN moved a write: the target's
	// R2Ts on the new connection are recovery R2Ts that carry its next
	// unused R2TSN (RFC 7143 §2.2, "recovery R2T"), past any sent on the lost
	// connection that never arrived, or from 0 for a command sent again.
	// The first R2T that comes sets r2tSN (snack.go). Set before the
	// task is registered on the new connection; then only the reader
	// touches it.
	r2tResync bool
	cmd       *Command
	status    uint8
	response  uint8
	sense     []byte
	residual  uint32
	under     bool
	over      bool

	// home is the connection the task moved to by TASK REASSIGN
	// (connrecovery.go); nil while it is on the one it was sent on.
	home atomic.Pointer[Conn]
	// held is set once ERL 2 connection recovery holds the task.
	held atomic.Bool

	tmfResp      pdu.TMResponse
	logoutReason pdu.LogoutReason
	logoutResp   pdu.LogoutResponse
	textResp     pdu.TextResponse
	text         []byte
}

// r2tIn is an R2T with the connection it came on: a write answers it
// there, and an R2T of a connection that ended before its task moved
// (connrecovery.go) is answered nowhere.
type r2tIn struct {
	r pdu.R2T
	c *Conn
}

// on returns the connection the task is on now: c, the one it was sent
// on, unless a TASK REASSIGN moved it.
func (t *task) on(c *Conn) *Conn {
	if h := t.home.Load(); h != nil {
		return h
	}
	return c
}

// complete ends the task once: set records its result, err its failure.
// Whatever set writes is visible to the waiter after done is closed, or to
// a Call's Done. It reports whether this call ended the task.
func (t *task) complete(err error, set func()) bool {
	if !t.fin.CompareAndSwap(false, true) {
		return false
	}
	if set != nil {
		set()
	}
	t.err = err
	if t.call != nil {
		t.conn.finishCall(t, false)
		return true
	}
	if err == nil && t.conn != nil && t.conn.unlistDone(t) {
		// Its waiter takes the token and may reuse the task with its
		// channel: nobody else looks at done once the task is unlisted.
		t.done <- struct{}{}
		return true
	}
	close(t.done)
	return true
}

// newSCSITask returns a SCSI task with a done channel that has room for
// the token of a reused task's completion.
func newSCSITask() *task {
	return &task{kind: taskSCSI, done: make(chan struct{}, 1)}
}

// reset readies a finished SCSI task for its next use; nothing else holds
// it (finishCall, recycle). Its done channel is empty and open, and its
// R2T channel, drained, is kept.
func (t *task) reset() {
	done, spans, r2ts := t.done, t.spans[:0], t.r2ts
	for r2ts != nil && len(r2ts) > 0 {
		<-r2ts
	}
	*t = task{kind: taskSCSI, done: done, spans: spans, r2ts: r2ts}
}

// scsiResponse completes a command from a SCSI Response.
func (t *task) scsiResponse(r *pdu.SCSIResponse, data []byte) {
	sense := senseOf(data)
	t.complete(nil, func() {
		t.response, t.status, t.sense = r.Response, r.Status, sense
		t.residual, t.under, t.over = r.ResidualCount, r.Underflow, r.Overflow
	})
}

// command returns the SCSI command of a SCSI task.
func (t *task) command() *Command {
	if t.call != nil {
		return &t.call.Cmd
	}
	return t.cmd
}

// markSent records data[off:off+n] of a write as sent.
func (t *task) markSent(off, n int) {
	if n <= 0 {
		return
	}
	if off > t.wrote {
		t.spans = append(t.spans, [2]int{off, off + n})
		return
	}
	t.wrote = max(t.wrote, off+n)
	// Ranges sent earlier past a gap join once the gap is filled.
	for merged := true; merged; {
		merged = false
		for i, sp := range t.spans {
			if sp[0] <= t.wrote {
				t.wrote = max(t.wrote, sp[1])
				t.spans = append(t.spans[:i], t.spans[i+1:]...)
				merged = true
				break
			}
		}
	}
}

// wasSent reports whether the task's request went out.
func (t *task) wasSent() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sent
}

// setRequest records the CmdSN a task's request went out with.
func (t *task) setRequest(cmdSN uint32) {
	t.mu.Lock()
	t.cmdSN, t.sent = cmdSN, true
	t.mu.Unlock()
}

// claimRequest records, as setRequest, the CmdSN a SCSI command's request
// goes out with, unless the end of its connection has already left it to
// fail as never sent (unsendable): then it reports false, and the request
// must not go out. Either the connection's end sees the task sent (and
// holds it for ERL 2 connection recovery) or the task's sender sees it
// unsendable: both decide under t.mu.
func (t *task) claimRequest(cmdSN uint32) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.unsendable {
		return false
	}
	t.cmdSN, t.sent = cmdSN, true
	return true
}

// senseOf copies the sense data of a SCSI Response's data segment.
func senseOf(data []byte) []byte {
	if len(data) < 2 {
		return nil
	}
	n := min(int(data[0])<<8|int(data[1]), len(data)-2)
	return append([]byte(nil), data[2:2+n]...)
}
