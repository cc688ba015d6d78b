package session

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/goiscsi/iscsi/pdu"
	"go.uber.org/zap"
)

// Conn is one TCP connection of a session, in full feature phase. It has one
// reader goroutine that routes each PDU to the task waiting for it, and a
// keepalive that runs on a timer (keepalive.go); writes are serialized under
// one lock.
type Conn struct {
	s   *Session
	cid uint16
	nc  net.Conn
	log *zap.Logger
	r   *pdu.Reader
	// params are the session's parameters with this connection's own
	// digests and data segment lengths.
	params Params

	// wmu guards w, the PDUs queued for the next write, and flushing.
	// Writes are group commits: the goroutine that finds no write running
	// writes what is queued, with wmu released during the write; PDUs
	// queued meanwhile go out with its next write (see flushLocked).
	wmu      sync.Mutex
	w        *pdu.Writer
	wspare   *pdu.Writer // the batch being written, swapped with w
	flushing bool
	wdone    *sync.Cond // on wmu, broadcast when a batch is written and when a flusher stops
	// wseq counts the batches written, for the keepalive's watch of a
	// write that does not end (writeWatch) and for the writers waiting
	// for their batch; wdoneSeq is the last batch written.
	wseq     uint64
	wdoneSeq uint64

	// st is the connection's connState (state.go): changed under mu,
	// read without it.
	st atomic.Uint32

	mu    sync.Mutex // guards the following
	tasks map[uint32]*task
	err   error // why the connection ended, once it has
	// ownLogout is set once Logout has begun on this connection (a second
	// Logout joins it); logoutInFlight are the SCSI commands running on the
	// connection then (inflight.go).
	ownLogout      bool
	logoutInFlight []*task
	// scsiCount counts SCSI tasks; idle, when set, is closed as it drops
	// to zero, for a logout draining the connection.
	scsiCount int
	idle      chan struct{}

	expStatSN atomic.Uint32
	lastRecv  atomic.Int64 // unix nanoseconds of the last PDU received
	// commands counts the SCSI commands sent on the connection.
	commands atomic.Uint64

	// ka is the keepalive's state (keepalive.go).
	ka         keepalive
	closing    chan struct{} // closed when the connection starts to close
	readerDone chan struct{}
	// exited is closed once the reader goroutine has returned; live
	// counts the goroutines it waits for.
	exited chan struct{}
	live   atomic.Int32
	// wg counts the reader goroutine, a keepalive check running and
	// the goroutines that post starts.
	wg        sync.WaitGroup
	closeOnce sync.Once
	// logoutAsked is set once the target asked for a logout (event 1).
	logoutAsked atomic.Bool
	// logoutDone is closed when the connection's logout has ended, with
	// its result in logoutRes; a second Logout waits for it.
	logoutDone chan struct{}
	logoutRes  LogoutResult

	// role is the reader role (reader.go).
	role readerRole
	// direct is set on a TCP connection: commands may read for themselves.
	direct bool
	// as is the state of Submit's calls (submit.go).
	as asyncConn
	// snack is the within-connection recovery at ERL 1 (snack.go).
	snack snackState
}

type nopPing struct {
	ttt  uint32
	lun  pdu.LUN
	data []byte
}

// CID returns the connection's ID within its session.
func (c *Conn) CID() uint16 { return c.cid }

// Session returns the connection's session.
func (c *Conn) Session() *Session { return c.s }

// Err returns why the connection ended, or nil while it is up.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Params returns the parameters in force on the connection: the session's,
// with this connection's digests and data segment lengths.
func (c *Conn) Params() Params { return c.params }

// Active reports whether the connection accepts new commands.
func (c *Conn) Active() bool { return c.state() == connUp }

// Done is closed once the connection's reader has stopped.
func (c *Conn) Done() <-chan struct{} { return c.readerDone }

func newConn(s *Session, cid uint16, nc net.Conn, r *pdu.Reader, w *pdu.Writer, expStatSN uint32, params Params) *Conn {
	c := &Conn{
		s: s, cid: cid, nc: nc, r: r, w: w, params: params,
		logoutDone: make(chan struct{}),
		log:        s.log.With(zap.Uint16("cid", cid)),
		tasks:      make(map[uint32]*task),
		closing:    make(chan struct{}),
		readerDone: make(chan struct{}),
		exited:     make(chan struct{}),
	}
	c.role.wake = make(chan struct{}, 1)
	// The login's writer and reader hold their buffers until the first
	// write or data segment of the full feature phase: an idle connection
	// should not.
	w.Release()
	r.Release()
	_, c.direct = nc.(*net.TCPConn)
	c.wdone = sync.NewCond(&c.wmu)
	c.expStatSN.Store(expStatSN)
	c.lastRecv.Store(time.Now().UnixNano())
	return c
}

func (c *Conn) start() {
	c.wg.Add(1)
	c.live.Store(1)
	go c.readLoop()
	c.startKeepalive()
}

// register adds a task; it fails once the connection no longer takes commands
// (unless the task is allowed while logging out).
func (c *Conn) register(t *task, whileLoggingOut bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch st := c.state(); {
	case st.ended():
		return c.closedErr()
	case st == connUp:
	case !whileLoggingOut || st == connStopped:
		return errLoggingOut
	}
	c.tasks[t.itt] = t
	if t.kind == taskSCSI {
		c.scsiCount++
	}
	return nil
}

func (c *Conn) closedErr() error {
	if c.err != nil {
		return c.err
	}
	return ErrClosed
}

func (c *Conn) lookup(itt uint32) *task {
	c.mu.Lock()
	t := c.tasks[itt]
	c.mu.Unlock()
	return t
}

func (c *Conn) remove(itt uint32) {
	c.mu.Lock()
	c.removeLocked(itt)
	c.mu.Unlock()
}

// removeLocked is remove for a caller that holds mu.
func (c *Conn) removeLocked(itt uint32) {
	if t, ok := c.tasks[itt]; ok {
		delete(c.tasks, itt)
		if t.kind == taskSCSI {
			c.scsiCount--
			if c.scsiCount == 0 && c.idle != nil {
				close(c.idle)
				c.idle = nil
			}
		}
	}
}

// goroutineDone ends one of the connection's goroutines.
func (c *Conn) goroutineDone() {
	if c.live.Add(-1) == 0 {
		close(c.exited)
	}
	c.wg.Done()
}

// fail ends the connection with err: no new commands, every task fails.
func (c *Conn) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.moveTo(connClosed) // a connection that logged out stays loggedOut
	tasks := c.tasks
	// Nothing registers on an ended connection (register and registerCall
	// check the state under mu): reading a nil map is all that is left.
	c.tasks = nil
	c.scsiCount = 0
	if c.idle != nil {
		close(c.idle)
		c.idle = nil
	}
	err = c.err
	c.mu.Unlock()
	c.closeOnce.Do(func() {
		close(c.closing)
		c.stopKeepalive()
		if c.as.src != nil {
			c.as.src.StopCoalesce()
		}
		c.nc.Close()
	})
	c.stopSNACKs()
	// At ErrorRecoveryLevel 2 the tasks of a connection lost while others
	// are up move to another (connrecovery.go) rather than fail.
	tasks = c.s.holdForReassign(c, err, tasks)
	for _, t := range tasks {
		t.complete(err, nil)
	}
	c.s.connEnded(c)
}

// loggedOut moves the connection to connLoggedOut on the target's success
// answer to its logout: its commands have ended (ErrLoggedOut), and so has
// the connection, which the target closes next.
func (c *Conn) loggedOut() {
	c.mu.Lock()
	if c.err == nil {
		c.err = ErrLoggedOut
	}
	c.moveTo(connLoggedOut)
	c.mu.Unlock()
}

// Close closes the connection at once, without a logout, and waits for its
// goroutines. Commands still running fail.
func (c *Conn) Close() error {
	c.fail(ErrClosed)
	c.wg.Wait()
	// No command takes the reader role once the connection is closing;
	// wait for those that hold it to see the end.
	c.role.mu.Lock()
	if c.role.idleTimer != nil {
		c.role.idleTimer.Stop()
	}
	c.role.mu.Unlock()
	c.role.cmds.Wait()
	return nil
}
