package sockio

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// readBufSize is the read buffer of a connection: PDUs that arrive together
// (a burst of Data-In at a high queue depth) are read with one system call.
const readBufSize = 64 << 10

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
	n      int
	errno  syscall.Errno
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

// sysRead reads from the socket into p (nil: into the free part of the
// buffer), waiting for it to be readable. While it waits with nothing
// buffered the buffer goes back to the pool.
func (s *Reader) sysRead(p []byte) (int, error) {
	s.dst, s.n, s.errno = p, 0, 0
	err := s.rc.Read(s.readFn)
	n, errno := s.n, s.errno
	s.dst = nil
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
	if dst == nil {
		if s.buf == nil {
			s.buf = readBufs.Get().(*[]byte)
		}
		dst = (*s.buf)[s.w:]
	}
	s.n, s.errno = readFD(fd, dst)
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
	n, err := s.sysRead(nil)
	s.w += n
	if err != nil {
		s.err = err
	}
}

// Read reads into p: from the buffer, or straight from the socket when p is
// at least as large as the buffer and nothing is buffered.
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
		if len(p) >= readBufSize {
			return s.sysRead(p)
		}
		if s.buf != nil {
			s.r, s.w = 0, 0
		}
		s.fill()
		if s.r == s.w {
			return 0, s.readErr()
		}
	}
	n := copy(p, (*s.buf)[s.r:s.w])
	s.r += n
	return n, nil
}

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
