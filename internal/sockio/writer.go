package sockio

import (
	"net"
	"syscall"
)

// Writer writes a TCP socket with raw writev system calls (see the package
// documentation), for a pdu.Writer, which hands it each batch through
// WriteBuffers. A batch of more buffers than one writev takes (IOV_MAX) goes
// out in several; a full socket is waited on through the socket's RawConn,
// as net.Conn.Write waits, so deadlines and Close interrupt it the same way.
// Nothing is allocated per write. A Writer is not safe for concurrent use.
type Writer struct {
	c   *net.TCPConn
	rc  syscall.RawConn
	iov []iovec // the buffers of the batch being written
	// writeFn is tryWrite as a func value, made once (no allocation per
	// write); pending and werrno are its state.
	writeFn func(fd uintptr) bool
	pending []iovec
	werrno  syscall.Errno
	// tryOnceFn is tryOnce as a func value, for TryWriteBuffers; tryN is
	// how much it wrote.
	tryOnceFn func(fd uintptr) bool
	tryN      int
}

// NewWriter returns a Writer of c, or nil where there is none: off Linux, or
// where c gives no RawConn.
func NewWriter(c *net.TCPConn) *Writer {
	if !rawIO {
		return nil
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	w := &Writer{c: c, rc: rc}
	w.writeFn = w.tryWrite
	w.tryOnceFn = w.tryOnce
	return w
}

// Write writes p through the connection's own Write: a pdu.Writer writes
// with WriteBuffers.
func (w *Writer) Write(p []byte) (int, error) { return w.c.Write(p) }
