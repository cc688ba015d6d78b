package pdu

import (
	"bufio"
	"io"
)

// BufferedSource is a buffered byte stream that a Reader reads through as it
// is, rather than through a bufio.Reader of its own: a *bufio.Reader is one.
// Peek(n), for n up to Size, returns the next n bytes without consuming them,
// valid until the next call, or fewer with the error that stopped it
// (bufio.ErrBufferFull beyond Size); Discard(n) consumes n bytes; Read reads
// as io.Reader does. A read deadline that expires in Peek must consume
// nothing: the Reader then stays in step (see Reader).
type BufferedSource interface {
	io.Reader
	Peek(n int) ([]byte, error)
	Discard(n int) (int, error)
	// Size returns the size of the buffer: the most Peek returns.
	Size() int
}

var _ BufferedSource = (*bufio.Reader)(nil)

// readBufSize is the buffer a Reader reads through when it is given a
// reader that is no BufferedSource: PDUs that arrive together (a burst of
// Data-In at a high queue depth) are read with one call.
const readBufSize = 64 << 10
