//go:build !linux

package pdu

import "syscall"

// rawIO is false: sockets are read and written through net.Conn.
const rawIO = false

func readFD(fd uintptr, p []byte) (int, syscall.Errno) { return 0, syscall.EINVAL }

type iovec struct{}

const maxIovecs = 1024

func writevFD(fd uintptr, iov []iovec) (int, syscall.Errno) { return 0, syscall.EINVAL }

func setIovec(v *iovec, b []byte) {}

func (w *Writer) writeRaw() error { return syscall.EINVAL }

func (w *Writer) tryWrite(fd uintptr) bool { return true }
