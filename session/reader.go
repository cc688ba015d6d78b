package session

import (
	"errors"
	"os"
	"sync"
	"time"

	"github.com/goiscsi/iscsi/internal/sockio"
	"github.com/goiscsi/iscsi/pdu"
)

// The reader role. One goroutine at a time reads a connection's PDUs and
// dispatches them: the connection's reader goroutine (readLoop), or, on a
// TCP connection, a goroutine whose SCSI command waits for its response and
// that found nobody reading. That command then reads its own response: no
// other goroutine has to wake it, which at queue depth 1 is most of what an
// I/O costs besides the system calls (a wake-up across threads and the
// scheduler's spinning: on a 2-core VM, 25.6 µs of CPU per 4 KiB
// request/response through a reader goroutine against 13.8 µs read in
// place).
//
// The reader goroutine reads while anything waits on the connection: it
// gives the role up only when no task is left (and no logout has begun), so
// that the next command can take it. Whoever gives the role up while tasks
// still wait wakes the reader goroutine; a role left free with nothing
// waiting wakes it after readIdle, so that the target's own PDUs (pings,
// asynchronous messages, a closed connection) are read within readIdle.
//
// A command reading for itself stops when its context ends: between PDUs a
// read deadline interrupts its wait (pdu.Reader.Next leaves the stream in
// step when it does); inside a PDU it reads the PDU to its end first, for
// at most readCancelGrace: a target that dribbles the rest slower than that
// loses the connection (the stream cannot be resumed in the middle of a
// PDU), and the command ends saying its outcome is unknown.

// readerRole is who reads a connection's PDUs now, and how to stop it.
type readerRole struct {
	mu sync.Mutex // guards the following
	// held is set while a goroutine holds the role; cmd is the command
	// whose goroutine holds it (nil: the reader goroutine).
	held bool
	cmd  *task
	// stop asks the command holding the role to give it up (its context
	// ended); atHeader says the holder waits for a PDU's header, between
	// PDUs; deadlineSet that a read deadline was set to interrupt it.
	stop        bool
	atHeader    bool
	deadlineSet bool
	// wake wakes the reader goroutine to take the role.
	wake chan struct{}
	// idleTimer wakes the reader goroutine once the role has been free
	// for readIdle (armIdle); idleTimerSet says it is running; freedAt is
	// when the role was last given up.
	idleTimer    *time.Timer
	idleTimerSet bool
	freedAt      time.Time
	// cmds counts the commands holding the role, for Close.
	cmds sync.WaitGroup
	// watch is the context watch Execute's commands share (ctxWatch).
	watch ctxWatch
}

// readIdle is how long the role may stay free with nothing waiting before
// the reader goroutine takes it again: how late a target's own PDU (a ping,
// an asynchronous message, the connection's end) may be read on a
// connection with no command waiting. Its timer runs about once per
// readIdle while commands come and go (idleCheck moves it on), and each
// run wakes a thread: at 5 ms that was 0.065 futex calls per I/O at QD1 on
// tgtd and 30.2-32.8 us of CPU per I/O, at 20 ms 0.017 and 25.5-27.6 us
// (A/B in one sitting, three runs each).
const readIdle = 20 * time.Millisecond

// readCancelGrace is how long a PDU being read when its reader's command
// gave up may take to finish, before the connection is failed.
const readCancelGrace = time.Second

// takeRole gives the reader role to the caller if nobody holds it and the
// connection is up; cmd is the command whose goroutine takes it, nil for the
// reader goroutine.
func (c *Conn) takeRole(cmd *task) bool {
	c.role.mu.Lock()
	defer c.role.mu.Unlock()
	if c.role.held {
		return false
	}
	select {
	case <-c.closing:
		return false
	default:
	}
	c.role.held, c.role.cmd, c.role.stop = true, cmd, false
	if cmd != nil {
		c.role.cmds.Add(1)
	}
	return true
}

// releaseRole gives the role up, waking the reader goroutine if tasks other
// than cmd's wait (at once) or may come (after readIdle).
func (c *Conn) releaseRole(cmd *task) {
	c.endBatch()
	c.role.mu.Lock()
	c.role.held, c.role.cmd, c.role.stop = false, nil, false
	if c.role.deadlineSet {
		// A deadline set to interrupt the holder must not outlive it.
		c.role.deadlineSet = false
		c.nc.SetReadDeadline(time.Time{})
	}
	if cmd != nil {
		c.role.cmds.Done()
	}
	if c.othersWait(cmd) {
		c.wakeReader()
	} else {
		c.armIdle()
	}
	c.role.mu.Unlock()
}

// leaveIfIdle gives the reader goroutine's role up when nothing waits on
// the connection, so that the next command reads for itself. It reports
// whether it did.
func (c *Conn) leaveIfIdle() bool {
	if !c.direct || c.state() >= connLogoutSent {
		return false
	}
	if c.othersWait(nil) {
		return false
	}
	// What completions queued goes out before the role is given up (and
	// before role.mu: writers take it under wmu).
	c.endBatch()
	c.role.mu.Lock()
	defer c.role.mu.Unlock()
	if c.othersWait(nil) {
		return false
	}
	c.role.held = false
	c.armIdle()
	return true
}

// othersWait reports tasks other than cmd's still waiting for the target:
// a done task may stay in c.tasks until its goroutine settles it (one the
// target's status ended on an up connection leaves at once: unlistDone,
// finishCall). With more than a few tasks some surely wait. The caller
// holds rmu.
func (c *Conn) othersWait(cmd *task) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.tasks) > 4 {
		return true
	}
	for _, o := range c.tasks {
		if o == cmd {
			continue
		}
		select {
		case <-o.done:
		default:
			return true
		}
	}
	return false
}

// armIdle makes the reader goroutine read again once the role has been
// free for readIdle. The caller holds rmu. The timer is set only when it is
// not already: setting a timer can wake a thread of the scheduler (the one
// waiting in the network poller), which at one release per command costs
// more than the command; it checks instead when the role was last given up.
func (c *Conn) armIdle() {
	c.role.freedAt = time.Now()
	if c.role.idleTimerSet {
		return
	}
	select {
	case <-c.closing:
		return // nothing more to read
	default:
	}
	c.role.idleTimerSet = true
	if c.role.idleTimer == nil {
		c.role.idleTimer = time.AfterFunc(readIdle, c.idleCheck)
		return
	}
	c.role.idleTimer.Reset(readIdle)
}

// idleCheck runs readIdle after armIdle: if the role has been free since,
// for readIdle, the reader goroutine takes it.
func (c *Conn) idleCheck() {
	c.role.mu.Lock()
	defer c.role.mu.Unlock()
	c.role.idleTimerSet = false
	if c.role.held {
		return // the holder sets the timer again when it gives the role up
	}
	if d := time.Since(c.role.freedAt); d < readIdle {
		c.role.idleTimerSet = true
		c.role.idleTimer.Reset(readIdle - d)
		return
	}
	c.wakeReader()
}

func (c *Conn) wakeReader() {
	select {
	case c.role.wake <- struct{}{}:
	default:
	}
}

// ensureReader wakes the reader goroutine if nobody reads: a request whose
// sender will not read the answer itself has just gone out.
func (c *Conn) ensureReader() {
	if !c.direct {
		return
	}
	c.role.mu.Lock()
	free := !c.role.held
	c.role.mu.Unlock()
	if free {
		c.wakeReader()
	}
}

// readPDUs reads and dispatches PDUs for the holder of the role, then gives
// the role up. The reader goroutine (t nil) reads until nothing waits on the
// connection; a command until t is done or its context ended. It returns
// false once the connection has ended.
func (c *Conn) readPDUs(t *task) bool {
	for {
		if t != nil {
			// fin, not done: an Execute task's done may hold a token
			// (complete) that its own select must take.
			if t.fin.Load() {
				c.releaseRole(t)
				return true
			}
			if !c.atBoundary() {
				c.releaseRole(t)
				return true
			}
		}
		if c.as.inBatch && (c.as.src == nil || c.as.src.Buffered() < pdu.BHSLen) {
			// The next header may have to be waited for: what the
			// completions queued goes out first.
			c.endBatch()
		}
		if src := c.as.src; src != nil && src.Buffered() < pdu.BHSLen {
			// The next header may have to be waited for: let the
			// kernel gather a few responses first when many are due.
			src.Coalesce(c.coalesceMark())
		}
		h, err := c.r.Next()
		if t != nil && c.pastBoundary(err) {
			// Our context ended while we waited between PDUs.
			c.releaseRole(t)
			return true
		}
		if err != nil && c.headerSkipped(err) {
			continue // ERL 1: what the PDU carried is found missing later
		}
		if err != nil {
			c.fail(c.readErr(err))
			c.releaseRole(t)
			return false
		}
		c.lastRecv.Store(time.Now().UnixNano())
		if err := c.dispatch(h); err != nil {
			// A stream that ends inside a data segment is a connection
			// the target closed, as one that ends between PDUs.
			c.fail(c.readErr(err))
			c.releaseRole(t)
			return false
		}
		if t == nil && c.leaveIfIdle() {
			return true
		}
	}
}

// atBoundary marks the command reader as waiting for the next PDU's header.
// It reports false when the command's context has ended: the command stops
// reading.
func (c *Conn) atBoundary() bool {
	c.role.mu.Lock()
	defer c.role.mu.Unlock()
	if c.role.stop {
		return false
	}
	c.role.atHeader = true
	return true
}

// pastBoundary marks the command reader as past a header read that ended
// with err. It reports true when a deadline set to interrupt the wait ended
// it; a header that came in despite the interrupt is read to its end within
// readCancelGrace.
func (c *Conn) pastBoundary(err error) bool {
	c.role.mu.Lock()
	defer c.role.mu.Unlock()
	c.role.atHeader = false
	if !c.role.deadlineSet {
		return false
	}
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		c.role.deadlineSet = false
		c.nc.SetReadDeadline(time.Time{})
		return true
	}
	c.nc.SetReadDeadline(time.Now().Add(readCancelGrace))
	return false
}

// interruptReader stops command t reading, its context having ended: at
// once if it waits between PDUs, else at the end of the PDU it reads, which
// must come within readCancelGrace.
func (c *Conn) interruptReader(t *task) {
	c.role.mu.Lock()
	defer c.role.mu.Unlock()
	if c.role.cmd != t || !c.role.held || c.role.deadlineSet {
		return
	}
	c.role.stop = true
	c.role.deadlineSet = true
	if c.role.atHeader {
		c.nc.SetReadDeadline(time.Unix(1, 0))
	} else {
		c.nc.SetReadDeadline(time.Now().Add(readCancelGrace))
	}
}

// readOwn reads PDUs for command t until its response is in, if nobody else
// is reading; otherwise the reader that is will hand the response over. The
// command's context interrupts it through cancel (scsi.go).
func (c *Conn) readOwn(t *task) {
	if !c.direct || !c.takeRole(t) {
		return
	}
	c.readPDUs(t)
}

// readLoop is the connection's reader goroutine: it reads whenever no
// command does, until the connection ends.
func (c *Conn) readLoop() {
	defer c.goroutineDone()
	defer close(c.readerDone)
	// The connection is over: its commands' context is not watched any
	// longer (a watch left on a long-lived context would keep it).
	defer c.role.watch.release()
	for {
		if c.takeRole(nil) && !c.readPDUs(nil) {
			return
		}
		select {
		case <-c.role.wake:
		case <-c.closing:
			return
		}
	}
}

// Adaptive receive coalescing. With many commands outstanding the reader
// asks the kernel (SO_RCVLOWAT, through sockio.Reader.Coalesce) to wake it
// only once a few responses' worth of bytes are queued: one wake-up, one
// read and one pass of the dispatcher then take several responses, where
// loopback TCP would otherwise wake it for nearly each. The mark is half
// of what is due at most (min(coalesceMax, outstanding/2) responses of 48
// bytes plus the calls' mean read length), so that when the target answers
// at its usual pace the mark is passed long before the last response, and
// the target still holds the other half to work on; when it is not (a
// target answering one command at a time, a lone NOP-In, an asynchronous
// message or a Logout Response while commands wait, a short read),
// sockio's watchdog drops the mark to 1 once no read has brought data for
// sockio.CoalesceWait: a PDU waits about 8 ms at most, and the next
// coalesceCool waits have no mark. Below coalesceMin outstanding commands
// the mark is 1: a low queue depth gets no added latency. The mark changes
// (a system call) only when its value does: at a steady queue depth, not
// per I/O.

// coalesceMax is the most responses the mark asks for; coalesceMin the
// fewest outstanding commands for a mark above 1 byte: at 8 (a mark of 2
// responses) tgtd 4 KiB random reads at QD8 lost IOPS (0.88x libiscsi's,
// against 1.04x) and took more CPU per I/O (1.20x, against 0.87x), and a
// mark of 4 at QD8 lost as much; at QD32 a mark of a quarter (8) took it
// from 0.90x to 0.72x, half (16) to about 0.6x, three quarters (24) no
// further (bench/README.md, issue 16).
// A mark is at least two responses and at most sockio.MaxCoalesce bytes:
// responses larger than half of that are not gathered.
//
// coalesceCool is how many waits go without a mark after the watchdog
// dropped one: a target answering one command at a time then pays the
// watchdog's wait (up to 2 x sockio.CoalesceWait) once per coalesceCool
// answers, not on each.
const (
	coalesceMax  = 16
	coalesceMin  = 16
	coalesceCool = 64
)

// coalesceMark returns the SO_RCVLOWAT the reader should wait with.
func (c *Conn) coalesceMark() int {
	if d := c.as.src.Drops(); d != c.as.drops {
		// A mark was not reached: the target answers in a trickle
		// now. Marks rest for a while, or each answer would wait for
		// the watchdog.
		c.as.drops, c.as.cool = d, coalesceCool
	}
	if c.as.cool > 0 {
		c.as.cool--
		return 1
	}
	c.mu.Lock()
	n, calls, data := c.scsiCount, c.as.calls, c.as.readOut
	c.mu.Unlock()
	if n < coalesceMin {
		return 1
	}
	per := pdu.BHSLen
	if calls > 0 && data > 0 {
		per += data / calls
	}
	// Large responses are not gathered: a few take a wake-up each
	// anyway, and a mark that a response's tail stays below would hold
	// it until the watchdog.
	k := min(coalesceMax, n/2, sockio.MaxCoalesce/per)
	if k < 2 {
		return 1
	}
	return k * per
}
