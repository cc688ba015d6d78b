package sockio

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// readBufSize is the read buffer of a connection: PDUs that arrive together
// (a burst of Data-In at a high queue depth) are read with one system call.
const readBufSize = 64 << 10

// directMin is the shortest read that Read takes straight from the socket
// into the caller's memory when nothing is buffered: a large data segment
// (a Data-In of 256 KiB) goes into place without passing through the
// buffer. Shorter reads fill the buffer, which gathers several PDUs per
// system call when many small ones are queued.
const directMin = 32 << 10

// overRead is how much a read into the caller's memory may bring into the
// buffer after it, in the same readv: the next PDU's header and a little
// more (a SCSI Response), so that what follows a large data segment costs
// no system call of its own, while at most this much of the next data
// segment is read into the buffer and copied from there.
const overRead = 512

// readBufs are the read buffers of the connections that are not waiting for
// the network.
var readBufs = sync.Pool{New: func() any {
	b := make([]byte, readBufSize)
	return &b
}}

// Reader is a buffered reader of a TCP socket that reads through a 64 KiB
// buffer and gives it back to readBufs, a pool shared by every connection,
// whenever it has nothing buffered and must wait for the network, and takes
// one again when the socket is readable: an idle connection holds no read
// buffer (64 KiB of a session's ~75 KiB before).
// It reads with the socket's RawConn, so it waits as net.Conn.Read does, and
// deadlines and Close interrupt it the same way; its errors are those
// net.Conn.Read returns. Nothing is allocated per read. It is the
// pdu.BufferedSource a pdu.Reader reads a TCP connection through; a read
// deadline that expires in Peek consumes nothing, so the pdu.Reader stays in
// step. A Reader is not safe for concurrent use.
type Reader struct {
	c   *net.TCPConn
	rc  syscall.RawConn
	buf *[]byte // nil while released
	r   int     // read position in *buf
	w   int     // write position in *buf
	err error
	// readFn is tryRead as a func value, made once: a closure per read
	// would be an allocation per read. dst, n and errno are its argument
	// and results.
	readFn func(fd uintptr) bool
	dst    []byte
	over   bool // a read into dst may bring overRead bytes into the buffer
	n      int
	errno  syscall.Errno
	// onWait runs before the Reader waits for the socket when waitWork
	// says it has something to do (SetOnWait); hookNext says the read in
	// progress has not run it yet.
	onWait   func()
	waitWork func() bool
	hookNext bool
	// copied counts the bytes Read copied out of the buffer into the
	// caller's memory (Copied).
	copied uint64
	// direct is set when the last Read went straight into the caller's
	// memory: the next fill then reads overRead bytes at most (the next
	// header, which the readv did not bring), so that the data segment
	// after it, likely large too, is not read into the buffer either; and
	// so do the fills after it until one gets overRead bytes (a header
	// that came in pieces).
	direct bool

	// reads counts the reads that brought data, for the watchdog of
	// Coalesce; lowat is the socket's SO_RCVLOWAT as Coalesce and the
	// watchdog set it (0 and 1 both mean 1, the kernel's default);
	// lowatSets counts the setsockopt calls that set it.
	reads atomic.Uint64
	// drops counts the marks the watchdog dropped (Drops).
	drops     atomic.Uint64
	lowat     atomic.Int32
	lowatSets atomic.Uint64
	// lw is the watchdog's state, guarded by lwMu, which also orders the
	// setsockopt calls so that lowat is what the socket has.
	lwMu sync.Mutex
	lw   struct {
		timer   *time.Timer
		seen    uint64 // reads when it was last armed
		runs    uint64 // times it ran, for tests
		stopped bool   // StopCoalesce ran: no mark, no watchdog
	}
}

// NewReader returns a Reader of c, or nil where there is none: off Linux, or
// where c gives no RawConn.
func NewReader(c *net.TCPConn) *Reader {
	if !rawIO {
		return nil
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	s := &Reader{c: c, rc: rc}
	s.readFn = s.tryRead
	return s
}

// onRelease, when set (by tests), runs whenever a Reader gives its
// buffer back.
var onRelease func()

// Size returns the size of the buffer.
func (s *Reader) Size() int { return readBufSize }

func (s *Reader) buffered() []byte {
	if s.buf == nil {
		return nil
	}
	return (*s.buf)[s.r:s.w]
}

// readErr returns the pending error once, as bufio.Reader does.
func (s *Reader) readErr() error {
	err := s.err
	s.err = nil
	return err
}

// SetOnWait sets f to run, on the goroutine reading, each time a read
// finds nothing to read and is about to wait for the socket: a reader that
// queued PDUs to write sends them there, before it may wait on a peer that
// waits for them. A Peek, Read or Discard that the buffer satisfies never
// runs it. work reports, cheaply, whether f has anything to do: it runs
// inside the read's system-call callback (where f may not: f writes, and
// may close the connection), and only when it says so does the read
// return to run f and then read again, a system call more.
func (s *Reader) SetOnWait(work func() bool, f func()) { s.waitWork, s.onWait = work, f }

// sysRead reads from the socket into p (nil: into the free part of the
// buffer), waiting for it to be readable; with over (p set, nothing
// buffered) up to overRead more bytes go into the buffer, counted in the
// n it returns. While it waits with nothing buffered the buffer goes back
// to the pool.
func (s *Reader) sysRead(p []byte, over bool) (int, error) {
	s.dst, s.over, s.n, s.errno = p, over, 0, 0
	s.hookNext = s.onWait != nil
	err := s.rc.Read(s.readFn)
	if err == nil && s.errno == syscall.EAGAIN {
		// Nothing to read: onWait runs before the wait.
		s.onWait()
		s.errno = 0
		err = s.rc.Read(s.readFn)
	}
	n, errno := s.n, s.errno
	s.dst, s.over = nil, false
	if n > 0 {
		s.reads.Add(1)
	}
	if (err != nil || errno != 0 || n == 0) && s.buf != nil && s.r == s.w {
		// The connection is over: its buffer serves another.
		readBufs.Put(s.buf)
		s.buf, s.r, s.w = nil, 0, 0
	}
	switch {
	case err != nil:
		// Closed, or past a deadline: say it as Read would.
		var oe *net.OpError
		if errors.As(err, &oe) {
			oe.Op = "read"
		}
		return 0, err
	case errno != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: s.c.LocalAddr(), Addr: s.c.RemoteAddr(), Err: os.NewSyscallError("read", errno)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// tryRead is the RawConn.Read callback of sysRead: one non-blocking read into
// s.dst, or the free part of the buffer when s.dst is nil.
func (s *Reader) tryRead(fd uintptr) bool {
	dst := s.dst
	switch {
	case dst == nil:
		if s.buf == nil {
			s.buf = readBufs.Get().(*[]byte)
		}
		dst = (*s.buf)[s.w:]
		if s.direct && len(dst) > overRead {
			dst = dst[:overRead]
		}
	case s.over:
		if s.buf == nil {
			s.buf = readBufs.Get().(*[]byte)
		}
		s.n, s.errno = readvFD(fd, dst, (*s.buf)[:overRead])
	}
	if !s.over {
		s.n, s.errno = readFD(fd, dst)
	}
	if s.errno == syscall.EAGAIN && s.hookNext {
		s.hookNext = false
		if s.waitWork() {
			return true // sysRead runs onWait, then reads again
		}
	}
	if s.errno == syscall.EAGAIN {
		if s.buf != nil && s.r == s.w {
			readBufs.Put(s.buf)
			s.buf, s.r, s.w = nil, 0, 0
			if onRelease != nil {
				onRelease()
			}
		}
		return false
	}
	return true
}

// fill reads more into the buffer, after what it holds.
func (s *Reader) fill() {
	if s.buf != nil && s.r > 0 {
		copy(*s.buf, (*s.buf)[s.r:s.w])
		s.w -= s.r
		s.r = 0
	}
	n, err := s.sysRead(nil, false)
	// A read that direct limited to overRead and that got less (part of
	// a header: the rest had not come) leaves the next one limited too.
	s.direct = s.direct && n < overRead
	s.w += n
	if err != nil {
		s.err = err
	}
}

// Read reads into p: from the buffer, or, when nothing is buffered and p
// is at least directMin bytes, straight from the socket into p with one
// readv that brings up to overRead bytes more (what follows: the next
// header) into the buffer.
func (s *Reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		if s.r < s.w {
			return 0, nil
		}
		return 0, s.readErr()
	}
	if s.r == s.w {
		if s.err != nil {
			return 0, s.readErr()
		}
		if s.buf != nil {
			s.r, s.w = 0, 0
		}
		// After a read straight into place, the rest of the same data
		// segment (a read that brought only part of it) goes straight
		// too, however short: through the buffer it would be copied, and
		// it would bring overRead bytes of what follows with it, to be
		// copied too.
		if len(p) >= directMin || s.direct {
			n, err := s.sysRead(p, true)
			s.direct = true
			if n > len(p) {
				s.w = n - len(p)
				n = len(p)
			}
			return n, err
		}
		s.fill()
		if s.r == s.w {
			return 0, s.readErr()
		}
	}
	n := copy(p, (*s.buf)[s.r:s.w])
	s.r += n
	s.copied += uint64(n)
	return n, nil
}

// Copied returns how many bytes Read has copied out of the buffer into
// its callers' memory: what came in with something else (a header) and
// was not read straight into place.
func (s *Reader) Copied() uint64 { return s.copied }

// Peek returns the next n bytes without consuming them, valid until the
// next read.
func (s *Reader) Peek(n int) ([]byte, error) {
	if n > readBufSize {
		return s.buffered(), bufio.ErrBufferFull
	}
	for s.w-s.r < n && s.err == nil {
		s.fill()
	}
	if s.w-s.r < n {
		err := s.readErr()
		if err == nil {
			err = bufio.ErrBufferFull
		}
		return s.buffered(), err
	}
	return (*s.buf)[s.r : s.r+n], nil
}

// Discard skips the next n bytes.
func (s *Reader) Discard(n int) (int, error) {
	done := 0
	for done < n {
		if s.r == s.w {
			if s.err != nil {
				return done, s.readErr()
			}
			s.fill()
			continue
		}
		m := min(n-done, s.w-s.r)
		s.r += m
		done += m
	}
	return done, nil
}

// Buffered returns how many bytes are buffered, read from the socket and
// not yet consumed: a reader that finds fewer than a header's worth knows
// its next read may wait for the network.
func (s *Reader) Buffered() int { return s.w - s.r }

// SetLowWater sets the socket's SO_RCVLOWAT to n bytes (at least 1): the
// kernel then reports the socket readable, and wakes a reader waiting for
// it, only once n bytes are queued (or the connection ends). Lowering it
// wakes a waiting reader at once if enough is queued (tcp_set_rcvlowat
// signals the socket), which is what a watchdog that drops it back to 1
// relies on. It is safe to call from any goroutine.
func (s *Reader) SetLowWater(n int) error {
	if !rawIO {
		return nil
	}
	n = max(n, 1)
	var serr error
	err := s.rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, n)
	})
	if err != nil {
		return err
	}
	return serr
}

// CoalesceWait is how long a socket whose SO_RCVLOWAT Coalesce raised may
// go without a read bringing data before the watchdog drops it back to 1
// byte: a reader waits at most about twice that for what is queued below
// the mark (the watchdog checks every CoalesceWait). The watchdog costs
// the process about two wake-ups per CoalesceWait while the mark is up
// (the runtime checks the timer when it was due, and wakes a thread when
// it moves again): going from 1 ms to 4 ms took a QD32 run on tgtd from
// 3.0 to 2.7 µs of CPU per I/O. A caller that saw a mark dropped (Drops)
// should not raise it again at once: a peer that answers in a trickle
// would pay the wait on every answer.
const CoalesceWait = 4 * time.Millisecond

// MaxCoalesce is the highest mark Coalesce sets: 16 responses of 4 KiB
// less one. It keeps the mark well under the socket's receive buffer: the
// kernel caps the mark at half of it, and a mark above that grows the
// buffer and clamps the window to it.
const MaxCoalesce = 64 << 10

// Coalesce sets the socket's SO_RCVLOWAT to n bytes (1 to MaxCoalesce)
// unless it is that already: the system call is made only when the mark
// changes. Above 1 the kernel wakes a reader only once n bytes are queued,
// so one wake-up and one read take several PDUs; a watchdog then drops
// the mark back to 1 once no read has brought data for CoalesceWait, so
// that a reader never waits long for bytes that are all the peer will
// send (a lone response, a peer answering one command at a time). The
// caller, which knows what it expects, sets it to 1 when it expects
// little. It is safe to call from any goroutine; a socket that refuses
// the option is left as it is.
func (s *Reader) Coalesce(n int) {
	n = min(max(n, 1), MaxCoalesce)
	if max(int(s.lowat.Load()), 1) == n {
		if n > 1 {
			s.rearm()
		}
		return
	}
	s.lwMu.Lock()
	defer s.lwMu.Unlock()
	if s.lw.stopped || max(int(s.lowat.Load()), 1) == n || s.setLowWaterLocked(n) != nil {
		return
	}
	if n > 1 {
		s.armLocked()
	}
}

// rearm pushes the watchdog back to CoalesceWait from now: the caller is
// about to wait with the mark up. A watchdog pushed back at every wait
// fires only when a wait has lasted CoalesceWait, not every CoalesceWait
// while the mark is up: each firing runs a goroutine, which on an idle
// process wakes a thread (at 1 ms, a thousand wake-ups a second, about a
// fifth of the process's context switches at queue depth 32).
func (s *Reader) rearm() {
	s.lwMu.Lock()
	if s.lowat.Load() > 1 && !s.lw.stopped {
		s.armLocked()
	}
	s.lwMu.Unlock()
}

// armLocked (re)starts the watchdog's CoalesceWait. The caller holds lwMu.
func (s *Reader) armLocked() {
	s.lw.seen = s.reads.Load()
	if s.lw.timer == nil {
		s.lw.timer = time.AfterFunc(CoalesceWait, s.watchdog)
	} else {
		s.lw.timer.Reset(CoalesceWait)
	}
}

// watchdog runs CoalesceWait after Coalesce last raised the mark or found
// it up before a wait; if reads brought data since then (the reader is
// busy with it) it checks again CoalesceWait later, else it drops the mark
// to 1 (which wakes a waiting reader if anything is queued: the kernel
// checks the socket when the mark changes).
func (s *Reader) watchdog() {
	s.lwMu.Lock()
	defer s.lwMu.Unlock()
	if s.lw.stopped {
		return
	}
	s.lw.runs++
	if s.lowat.Load() <= 1 {
		return
	}
	if r := s.reads.Load(); r != s.lw.seen {
		s.lw.seen = r
		s.lw.timer.Reset(CoalesceWait)
		return
	}
	s.drops.Add(1)
	s.setLowWaterLocked(1)
}

// StopCoalesce ends Coalesce's watchdog for good, its socket closing: the
// watchdog does not run again (one already running waits for lwMu, then
// returns without touching the socket), and Coalesce sets no mark after
// it. It is safe to call from any goroutine, more than once.
func (s *Reader) StopCoalesce() {
	s.lwMu.Lock()
	defer s.lwMu.Unlock()
	s.lw.stopped = true
	if s.lw.timer != nil {
		s.lw.timer.Stop()
	}
}

// Drops returns how many times the watchdog dropped a mark that nothing
// reached for CoalesceWait: each a wait of up to twice CoalesceWait for
// bytes that were already there. It is safe to call from any goroutine.
func (s *Reader) Drops() uint64 {
	return s.drops.Load()
}

// LowWater returns the socket's SO_RCVLOWAT as Coalesce and its watchdog
// last set it, and how many times they set it (each a system call).
func (s *Reader) LowWater() (n int, sets uint64) {
	return max(int(s.lowat.Load()), 1), s.lowatSets.Load()
}

// setLowWaterLocked sets SO_RCVLOWAT to n and records it. The caller holds
// lwMu. The mark is recorded before the system call: a reader woken by it
// (a lower mark wakes a reader if enough is queued) must see the new mark
// when it asks for another, or it would take the old one for the
// socket's and not set it.
func (s *Reader) setLowWaterLocked(n int) error {
	s.lowatSets.Add(1)
	old := s.lowat.Swap(int32(n))
	if err := s.SetLowWater(n); err != nil {
		s.lowat.Store(old)
		return err
	}
	return nil
}
