package sockio

import (
	"errors"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// rawIO says that sockets are read and written here with raw system calls
// (RawConn and RawSyscall) rather than through net.Conn: see the package
// documentation for why.
const rawIO = true

// readFD reads from the non-blocking descriptor fd into p.
func readFD(fd uintptr, p []byte) (int, syscall.Errno) {
	if len(p) == 0 {
		return 0, 0
	}
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), 0
	}
}

// readvFD reads from the non-blocking descriptor fd into a, then b, with
// one readv.
func readvFD(fd uintptr, a, b []byte) (int, syscall.Errno) {
	var iov [2]iovec
	setIovec(&iov[0], a)
	setIovec(&iov[1], b)
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READV, fd, uintptr(unsafe.Pointer(&iov[0])), 2)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), 0
	}
}

// iovec is one buffer of a writev.
type iovec = syscall.Iovec

// maxIovecs is the most buffers one writev takes (IOV_MAX).
const maxIovecs = 1024

// writevFD writes iov to the non-blocking descriptor fd and returns how many
// bytes it took.
func writevFD(fd uintptr, iov []iovec) (int, syscall.Errno) {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), 0
	}
}

// setIovec points v at b.
func setIovec(v *iovec, b []byte) {
	v.Base = &b[0]
	v.SetLen(len(b))
}

// WriteBuffers writes the non-empty buffers of bufs, in order, with writev
// system calls on the socket, waiting for room as net.Conn.Write does. Its
// errors are those of net.Conn.Write. It keeps nothing of bufs once it
// returns, and allocates nothing.
func (w *Writer) WriteBuffers(bufs [][]byte) error {
	iov := w.iov[:0]
	for _, b := range bufs {
		if len(b) > 0 {
			iov = append(iov, iovec{})
			setIovec(&iov[len(iov)-1], b)
		}
	}
	w.iov = iov
	if len(iov) == 0 {
		return nil
	}
	w.pending, w.werrno = iov, 0
	err := w.rc.Write(w.writeFn)
	errno := w.werrno
	w.pending = nil
	clear(w.iov) // no pointers into the batch left behind
	switch {
	case err != nil:
		var oe *net.OpError
		if errors.As(err, &oe) {
			oe.Op = "write"
		}
		return err
	case errno != 0:
		return &net.OpError{Op: "write", Net: "tcp", Source: w.c.LocalAddr(), Addr: w.c.RemoteAddr(), Err: os.NewSyscallError("writev", errno)}
	}
	return nil
}

// tryWrite is the RawConn.Write callback of WriteBuffers (a func value made
// once, in writeFn): it writes w.pending until done, an error (w.werrno) or
// a full socket.
func (w *Writer) tryWrite(fd uintptr) bool {
	iov := w.pending
	for len(iov) > 0 {
		n, e := writevFD(fd, iov[:min(len(iov), maxIovecs)])
		if e == syscall.EAGAIN {
			w.pending = iov
			return false
		}
		if e != 0 {
			w.werrno = e
			return true
		}
		// Step past what the kernel took.
		for n > 0 {
			l := int(iov[0].Len)
			if n < l {
				b := unsafe.Slice(iov[0].Base, l)
				setIovec(&iov[0], b[n:])
				break
			}
			n -= l
			iov = iov[1:]
		}
	}
	w.pending = nil
	return true
}

// TryWriteBuffers writes as much of the non-empty buffers of bufs as the
// socket takes now, without waiting for room, and returns how many bytes
// went out: fewer than the whole when the socket is full. A goroutine that
// must never wait on a write (a connection's reader) writes with it and
// hands the rest to one that may wait. It allocates nothing.
func (w *Writer) TryWriteBuffers(bufs [][]byte) (int, error) {
	iov := w.iov[:0]
	total := 0
	for _, b := range bufs {
		if len(b) > 0 {
			iov = append(iov, iovec{})
			setIovec(&iov[len(iov)-1], b)
			total += len(b)
		}
	}
	w.iov = iov
	if len(iov) == 0 {
		return 0, nil
	}
	w.pending, w.werrno, w.tryN = iov, 0, 0
	err := w.rc.Write(w.tryOnceFn)
	errno, n := w.werrno, w.tryN
	w.pending = nil
	clear(w.iov)
	switch {
	case err != nil:
		var oe *net.OpError
		if errors.As(err, &oe) {
			oe.Op = "write"
		}
		return n, err
	case errno != 0:
		return n, &net.OpError{Op: "write", Net: "tcp", Source: w.c.LocalAddr(), Addr: w.c.RemoteAddr(), Err: os.NewSyscallError("writev", errno)}
	}
	return n, nil
}

// tryOnce is the RawConn.Write callback of TryWriteBuffers: it writes
// w.pending until done, an error or a full socket, and never asks to wait.
func (w *Writer) tryOnce(fd uintptr) bool {
	iov := w.pending
	for len(iov) > 0 {
		n, e := writevFD(fd, iov[:min(len(iov), maxIovecs)])
		if e == syscall.EAGAIN {
			return true
		}
		if e != 0 {
			w.werrno = e
			return true
		}
		w.tryN += n
		for n > 0 {
			l := int(iov[0].Len)
			if n < l {
				b := unsafe.Slice(iov[0].Base, l)
				setIovec(&iov[0], b[n:])
				break
			}
			n -= l
			iov = iov[1:]
		}
	}
	return true
}
