package pdu_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

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

// TestNextDeadlineResumes: a read deadline that expires while Next waits for
// a header, or skips an unread data segment, leaves the stream in step.
func TestNextDeadlineResumes(t *testing.T) {
	for _, dig := range []bool{false, true} {
		t.Run(fmt.Sprintf("digests=%v", dig), func(t *testing.T) {
			c, s := tcpPair(t)
			r := pdu.NewReader(c, pdu.ReaderConfig{From: pdu.FromTarget, HeaderDigest: dig, DataDigest: dig, MaxDataSegmentLength: 1 << 20})
			var stream bytes.Buffer
			w := pdu.NewWriter(&stream)
			w.SetDigests(dig, dig)
			big := bytes.Repeat([]byte{7}, 200<<10)
			w.WritePDU(&pdu.DataIn{ITT: 1, TTT: 0xffffffff}, big) // skipped unread
			w.WritePDU(&pdu.NOPIn{ITT: 2, TTT: 0xffffffff}, []byte("pong"))
			raw := stream.Bytes()
			first := pdu.BHSLen
			if dig {
				first += pdu.DigestLen
			}
			interrupt := func(what string) {
				t.Helper()
				c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
				if _, err := r.Next(); !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("%s: got %v, want os.ErrDeadlineExceeded", what, err)
				}
				c.SetReadDeadline(time.Time{})
			}
			interrupt("nothing sent")
			s.Write(raw[:20]) // part of the first header
			interrupt("part of a header")
			s.Write(raw[20 : first+1000]) // the header and some data
			h, err := r.Next()
			if err != nil || h.Opcode() != pdu.OpSCSIDataIn {
				t.Fatalf("first PDU: %v %v", h, err)
			}
			interrupt("part of the unread data segment")
			s.Write(raw[first+1000 : len(raw)-10])
			interrupt("part of the next header")
			s.Write(raw[len(raw)-10:])
			h, err = r.Next()
			if err != nil || h.Opcode() != pdu.OpNOPIn {
				t.Fatalf("second PDU: %v %v", h, err)
			}
			if d, err := r.Data(); err != nil || string(d) != "pong" {
				t.Fatalf("second PDU's data: %q %v", d, err)
			}
		})
	}
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skip(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-acc
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}
