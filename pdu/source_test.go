package pdu_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/goiscsi/iscsi/pdu"
)

// peekCounter is a BufferedSource that counts its Peeks.
type peekCounter struct {
	*bufio.Reader
	peeks int
}

func (p *peekCounter) Peek(n int) ([]byte, error) {
	p.peeks++
	return p.Reader.Peek(n)
}

// TestReaderBufferedSource: a BufferedSource large enough to peek at any
// header is read as it is; a smaller one through a buffer of the Reader's.
func TestReaderBufferedSource(t *testing.T) {
	items := targetStream()
	wire := encode(t, items, digests{})
	for _, size := range []int{64 << 10, pdu.BHSLen + pdu.MaxAHSLength + pdu.DigestLen, 16} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			src := &peekCounter{Reader: bufio.NewReaderSize(bytes.NewReader(wire), size)}
			r := pdu.NewReader(src, pdu.ReaderConfig{From: pdu.FromTarget, MaxDataSegmentLength: 1 << 20})
			if n, err := readAll(t, r, items, false); n != len(items) || err != io.EOF {
				t.Fatalf("%d PDUs, %v", n, err)
			}
			asIs := size >= pdu.BHSLen+pdu.MaxAHSLength+pdu.DigestLen
			if (src.peeks > 0) != asIs {
				t.Fatalf("%d Peeks of a source of %d bytes", src.peeks, size)
			}
		})
	}
}

// buffersRecorder is a BuffersWriter that keeps what it is given; its Write
// must not be called.
type buffersRecorder struct {
	got   bytes.Buffer
	calls int
	bytes int
	keep  bool
}

func (b *buffersRecorder) Write(p []byte) (int, error) {
	return 0, errors.New("Write called on a BuffersWriter")
}

func (b *buffersRecorder) WriteBuffers(bufs [][]byte) error {
	b.calls++
	for _, p := range bufs {
		b.bytes += len(p)
		if b.keep {
			b.got.Write(p)
		}
	}
	return nil
}

// TestWriterBuffersWriter: a Writer to a BuffersWriter writes each batch
// with one WriteBuffers, the same bytes as to any writer, and allocates
// nothing doing it.
func TestWriterBuffersWriter(t *testing.T) {
	items := targetStream()
	for _, d := range allDigests {
		bw := &buffersRecorder{keep: true}
		w := pdu.NewWriter(bw)
		w.SetDigests(d.header, d.data)
		for _, it := range items {
			if err := w.Append(it.p, it.ahs, it.data); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if bw.calls != 1 {
			t.Fatalf("%+v: %d WriteBuffers for one batch", d, bw.calls)
		}
		if want := encode(t, items, d); !bytes.Equal(bw.got.Bytes(), want) {
			t.Fatalf("%+v: WriteBuffers got %d bytes unlike the %d of a plain writer", d, bw.got.Len(), len(want))
		}
	}
	bw := &buffersRecorder{}
	w := pdu.NewWriter(bw)
	data := make([]byte, 4096)
	cmd := &pdu.DataOut{ITT: 1, TTT: 2}
	w.WritePDU(cmd, data)
	if n := testing.AllocsPerRun(100, func() { w.WritePDU(cmd, data) }); n != 0 {
		t.Fatalf("%v allocations per PDU, want 0", n)
	}
}
