//go:build !linux

package sockio

import "syscall"

// rawIO is false: sockets are read and written through net.Conn, and
// NewReader and NewWriter return nil.
const rawIO = false

func readFD(fd uintptr, p []byte) (int, syscall.Errno) { return 0, syscall.EINVAL }

func readvFD(fd uintptr, a, b []byte) (int, syscall.Errno) { return 0, syscall.EINVAL }

type iovec struct{}

// WriteBuffers is never called: NewWriter returns no Writer here.
func (w *Writer) WriteBuffers(bufs [][]byte) error { return syscall.EINVAL }

func (w *Writer) tryWrite(fd uintptr) bool { return true }

// TryWriteBuffers is never called: NewWriter returns no Writer here.
func (w *Writer) TryWriteBuffers(bufs [][]byte) (int, error) { return 0, syscall.EINVAL }

func (w *Writer) tryOnce(fd uintptr) bool { return true }
