package pdu

import (
	"errors"
	"fmt"
	"io"
	"net"
)

// Writer queues PDUs and writes each batch with one vectored write: a
// BuffersWriter's WriteBuffers, or net.Buffers' WriteTo (writev on a TCP
// connection). It is not safe for concurrent use; a connection serializes it
// under its write lock.
type Writer struct {
	w          io.Writer
	bw         BuffersWriter // w, when it is one
	hdig, ddig bool
	bufs       net.Buffers
	// arena holds the headers, digests and padding of queued PDUs; data
	// segments are not copied.
	arena []byte
	n     int
	// out is the copy of bufs that WriteTo consumes; a field rather than a
	// local so that Flush does not allocate.
	out net.Buffers
}

// BuffersWriter is a writer that takes a batch of buffers at once, with one
// vectored write where it can. WriteBuffers writes every buffer of bufs, in
// order, all of them unless it fails, and keeps none of them once it
// returns; it must not change bufs.
type BuffersWriter interface {
	WriteBuffers(bufs [][]byte) error
}

var zeroPad [4]byte

// NewWriter returns a Writer to w, which writes each batch with WriteBuffers
// when w is a BuffersWriter.
func NewWriter(w io.Writer) *Writer {
	bw, _ := w.(BuffersWriter)
	return &Writer{w: w, bw: bw}
}

// arenaSize is what the arena starts with: the headers of a batch of PDUs
// without growing.
const arenaSize = 1024

// Release drops the Writer's buffers when nothing is queued, so that an idle
// connection's Writer holds no memory; the next Append allocates them again.
// It does nothing while PDUs are queued.
func (w *Writer) Release() {
	if w.n != 0 {
		return
	}
	w.arena, w.bufs = nil, nil
}

// SetDigests turns header and data digests on or off for PDUs queued from now on.
func (w *Writer) SetDigests(header, data bool) { w.hdig, w.ddig = header, data }

// Append queues p with its additional header segments and data segment,
// setting TotalAHSLength and DataSegmentLength from them. ahs and data are
// not copied and must not change until Flush returns.
func (w *Writer) Append(p PDU, ahs, data []byte) error {
	if len(ahs)%4 != 0 || len(ahs) > MaxAHSLength {
		return fmt.Errorf("iscsi: %s: additional header segments of %d bytes: not a multiple of 4 up to %d", p.Opcode(), len(ahs), MaxAHSLength)
	}
	if len(data) > MaxDataSegmentLength {
		return fmt.Errorf("iscsi: %s: data segment of %d bytes exceeds %d", p.Opcode(), len(data), MaxDataSegmentLength)
	}
	// The header is marshalled in place in the arena: a local BHS would
	// escape through the interface call and cost an allocation per PDU.
	if w.arena == nil {
		w.arena = make([]byte, 0, arenaSize)
	}
	start := len(w.arena)
	w.arena = append(w.arena, zeroBHS[:]...)
	h := (*BHS)(w.arena[start:])
	p.MarshalBHS(h)
	h.SetLengths(len(ahs), len(data))
	w.queue(start, ahs, data)
	return nil
}

var zeroBHS BHS

// AppendRaw queues a header exactly as given, whatever its length fields say,
// followed by ahs and data. It exists to build malformed PDUs in tests;
// Append is the normal way.
func (w *Writer) AppendRaw(h *BHS, ahs, data []byte) {
	start := len(w.arena)
	w.arena = append(w.arena, h[:]...)
	w.queue(start, ahs, data)
}

// queue adds ahs, the digests and the padding to the header at
// w.arena[start:] and queues the PDU. Slices of the arena are put in bufs only
// once written: a later append may move the arena, but what bufs holds stays
// valid in the old array.
func (w *Writer) queue(start int, ahs, data []byte) {
	w.arena = append(w.arena, ahs...)
	if w.hdig {
		crc := CRC32C(w.arena[start:])
		w.arena = append(w.arena, 0, 0, 0, 0)
		putDigest(w.arena[len(w.arena)-4:], crc)
	}
	w.bufs = append(w.bufs, w.arena[start:len(w.arena)])
	if len(data) > 0 {
		w.bufs = append(w.bufs, data)
		start = len(w.arena)
		p := zeroPad[:pad(len(data))]
		w.arena = append(w.arena, p...)
		if w.ddig {
			crc := updateCRC(CRC32C(data), p)
			w.arena = append(w.arena, 0, 0, 0, 0)
			putDigest(w.arena[len(w.arena)-4:], crc)
		}
		if len(w.arena) > start {
			w.bufs = append(w.bufs, w.arena[start:len(w.arena)])
		}
	}
	w.n++
}

// Buffered returns the number of PDUs queued and not yet flushed.
func (w *Writer) Buffered() int { return w.n }

// Flush writes every queued PDU in one vectored write.
func (w *Writer) Flush() error {
	if w.n == 0 {
		return nil
	}
	var err error
	if w.bw != nil {
		err = w.bw.WriteBuffers(w.bufs)
	} else {
		w.out = w.bufs
		_, err = w.out.WriteTo(w.w)
		w.out = nil
	}
	clear(w.bufs)
	w.bufs = w.bufs[:0]
	w.arena = w.arena[:0]
	w.n = 0
	return err
}

// Discard drops every queued PDU without writing it.
func (w *Writer) Discard() {
	clear(w.bufs)
	w.bufs = w.bufs[:0]
	w.arena = w.arena[:0]
	w.n = 0
}

// WritePDU queues p and flushes.
func (w *Writer) WritePDU(p PDU, data []byte) error {
	if err := w.Append(p, nil, data); err != nil {
		return err
	}
	return w.Flush()
}

// ErrShortPDU reports a buffer that ends inside a PDU.
var ErrShortPDU = errors.New("iscsi: buffer ends inside a PDU")
