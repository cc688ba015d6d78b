package sockio

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

var (
	_ pdu.BufferedSource = (*Reader)(nil)
	_ pdu.BuffersWriter  = (*Writer)(nil)
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
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
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// rawReader returns a pdu.Reader of c read through a Reader, skipping the
// test where there is no raw I/O.
func rawReader(t *testing.T, c *net.TCPConn, cfg pdu.ReaderConfig) *pdu.Reader {
	t.Helper()
	sr := NewReader(c)
	if sr == nil {
		if rawIO {
			t.Fatal("no Reader of a *net.TCPConn")
		}
		t.Skip("no raw socket I/O here")
	}
	return pdu.NewReader(sr, cfg)
}

// rawWriter returns a pdu.Writer of c written through a Writer, skipping
// the test where there is no raw I/O.
func rawWriter(t *testing.T, c *net.TCPConn) *pdu.Writer {
	t.Helper()
	sw := NewWriter(c)
	if sw == nil {
		if rawIO {
			t.Fatal("no Writer of a *net.TCPConn")
		}
		t.Skip("no raw socket I/O here")
	}
	return pdu.NewWriter(sw)
}

// TestReaderStream reads PDUs of every size, written in pieces of every size,
// through a pdu.Reader on a Reader of a TCP connection, and checks them all.
func TestReaderStream(t *testing.T) {
	c, s := tcpPair(t)
	r := rawReader(t, c, pdu.ReaderConfig{From: pdu.FromTarget, MaxDataSegmentLength: 1 << 20, DataDigest: true, HeaderDigest: true})
	sizes := []int{0, 1, 3, 47, 48, 4096, 8191, readBufSize - 1, readBufSize, readBufSize + 5, 256 << 10, 1 << 20}
	var stream bytes.Buffer
	w := pdu.NewWriter(&stream)
	w.SetDigests(true, true)
	var want [][]byte
	for i, n := range sizes {
		data := make([]byte, n)
		for j := range data {
			data[j] = byte(i + j*7)
		}
		want = append(want, data)
		if err := w.WritePDU(&pdu.DataIn{ITT: uint32(i), TTT: 0xffffffff, BufferOffset: 0}, data); err != nil {
			t.Fatal(err)
		}
	}
	raw := stream.Bytes()
	go func() {
		// Pieces of awkward sizes, with pauses, so that the reader meets
		// an empty socket in the middle of headers and data.
		step := 1
		for off := 0; off < len(raw); {
			n := min(step, len(raw)-off)
			s.Write(raw[off : off+n])
			off += n
			step = step*3 + 1
			if step > 300000 {
				step = 1
			}
			time.Sleep(time.Millisecond)
		}
		s.CloseWrite()
	}()
	for i, n := range sizes {
		h, err := r.Next()
		if err != nil {
			t.Fatalf("PDU %d: %v", i, err)
		}
		if h.DataSegmentLength() != n {
			t.Fatalf("PDU %d: DataSegmentLength %d, want %d", i, h.DataSegmentLength(), n)
		}
		switch {
		case i%3 == 2:
			continue // skipped by the next Next, digest still checked
		case i%3 == 1:
			got, err := r.Data()
			if err != nil || !bytes.Equal(got, want[i]) {
				t.Fatalf("PDU %d: Data: %v, equal %v", i, err, bytes.Equal(got, want[i]))
			}
		default:
			got := make([]byte, n)
			if n > 0 {
				if err := r.ReadData(got); err != nil || !bytes.Equal(got, want[i]) {
					t.Fatalf("PDU %d: ReadData: %v, equal %v", i, err, bytes.Equal(got, want[i]))
				}
			}
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("after the last PDU: %v, want io.EOF", err)
	}
}

// TestReaderIdleHoldsNoBuffer checks the point of Reader: while it waits for
// the network with nothing buffered, it holds no buffer.
func TestReaderIdleHoldsNoBuffer(t *testing.T) {
	releases := make(chan struct{}, 16)
	onRelease = func() { releases <- struct{}{} }
	defer func() { onRelease = nil }()
	c, s := tcpPair(t)
	r := rawReader(t, c, pdu.ReaderConfig{From: pdu.FromTarget})
	var stream bytes.Buffer
	w := pdu.NewWriter(&stream)
	w.WritePDU(&pdu.NOPIn{ITT: 1, TTT: 0xffffffff}, []byte("ping"))
	got := make(chan error, 2)
	go func() {
		for range 2 {
			_, err := r.Next()
			if err == nil {
				_, err = r.Data()
			}
			got <- err
		}
	}()
	waitRelease := func(what string) {
		t.Helper()
		select {
		case <-releases:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: the reader holds its buffer while waiting for the network", what)
		}
	}
	waitRelease("before the first PDU")
	s.Write(stream.Bytes())
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	waitRelease("after the first PDU")
	s.Write(stream.Bytes())
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}

// TestReaderErrors: a deadline, a reset and a local close end a read as they
// end net.Conn.Read.
func TestReaderErrors(t *testing.T) {
	t.Run("deadline", func(t *testing.T) {
		c, _ := tcpPair(t)
		r := rawReader(t, c, pdu.ReaderConfig{})
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, err := r.Next()
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("got %v, want os.ErrDeadlineExceeded", err)
		}
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "read" {
			t.Fatalf("got %#v, want a *net.OpError of a read", err)
		}
	})
	t.Run("close", func(t *testing.T) {
		c, _ := tcpPair(t)
		r := rawReader(t, c, pdu.ReaderConfig{})
		go func() {
			time.Sleep(20 * time.Millisecond)
			c.Close()
		}()
		if _, err := r.Next(); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("got %v, want net.ErrClosed", err)
		}
	})
	t.Run("reset", func(t *testing.T) {
		c, s := tcpPair(t)
		r := rawReader(t, c, pdu.ReaderConfig{})
		s.Write(make([]byte, 10)) // inside a header
		s.SetLinger(0)
		s.Close()
		_, err := r.Next()
		if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("got %v, want ECONNRESET or an unexpected EOF", err)
		}
	})
	t.Run("eof", func(t *testing.T) {
		c, s := tcpPair(t)
		r := rawReader(t, c, pdu.ReaderConfig{})
		s.CloseWrite()
		if _, err := r.Next(); err != io.EOF {
			t.Fatalf("got %v, want io.EOF", err)
		}
	})
}

// TestNextDeadlineResumes: a read deadline that expires while pdu.Reader.Next
// waits for a header, or skips an unread data segment, leaves the stream in
// step (Peek consumes nothing when it times out), whether pdu.Reader reads
// the socket through a Reader or through its own bufio.Reader.
func TestNextDeadlineResumes(t *testing.T) {
	for _, src := range []string{"sockio", "bufio"} {
		for _, dig := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/digests=%v", src, dig), func(t *testing.T) {
				testNextDeadlineResumes(t, src == "sockio", dig)
			})
		}
	}
}

func testNextDeadlineResumes(t *testing.T, raw, dig bool) {
	c, s := tcpPair(t)
	cfg := pdu.ReaderConfig{From: pdu.FromTarget, HeaderDigest: dig, DataDigest: dig, MaxDataSegmentLength: 1 << 20}
	r := pdu.NewReader(c, cfg)
	if raw {
		r = rawReader(t, c, cfg)
	}
	var stream bytes.Buffer
	w := pdu.NewWriter(&stream)
	w.SetDigests(dig, dig)
	big := bytes.Repeat([]byte{7}, 200<<10)
	w.WritePDU(&pdu.DataIn{ITT: 1, TTT: 0xffffffff}, big) // skipped unread
	w.WritePDU(&pdu.NOPIn{ITT: 2, TTT: 0xffffffff}, []byte("pong"))
	wire := stream.Bytes()
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
	s.Write(wire[:20]) // part of the first header
	interrupt("part of a header")
	s.Write(wire[20 : first+1000]) // the header and some data
	h, err := r.Next()
	if err != nil || h.Opcode() != pdu.OpSCSIDataIn {
		t.Fatalf("first PDU: %v %v", h, err)
	}
	interrupt("part of the unread data segment")
	s.Write(wire[first+1000 : len(wire)-10])
	interrupt("part of the next header")
	s.Write(wire[len(wire)-10:])
	h, err = r.Next()
	if err != nil || h.Opcode() != pdu.OpNOPIn {
		t.Fatalf("second PDU: %v %v", h, err)
	}
	if d, err := r.Data(); err != nil || string(d) != "pong" {
		t.Fatalf("second PDU's data: %q %v", d, err)
	}
}

// TestWriterLargeBatch writes one batch of more buffers than a writev takes
// and more bytes than the socket buffers hold, while the reader is slow,
// through a Writer, and reads it all back.
func TestWriterLargeBatch(t *testing.T) {
	c, s := tcpPair(t)
	w := rawWriter(t, s)
	w.SetDigests(true, true)
	const n = 1500 // PDUs: 3 buffers each (header, data, padding+digest)
	for i := range n {
		data := bytes.Repeat([]byte{byte(i)}, 4093) // padded: 3 buffers
		if err := w.Append(&pdu.DataIn{ITT: uint32(i), TTT: 0xffffffff}, nil, data); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- w.Flush() }()
	r := rawReader(t, c, pdu.ReaderConfig{From: pdu.FromTarget, HeaderDigest: true, DataDigest: true})
	got := make([]byte, 4093)
	for i := range n {
		if i%100 == 0 {
			time.Sleep(time.Millisecond) // let the writer meet a full socket
		}
		h, err := r.Next()
		if err != nil {
			t.Fatalf("PDU %d: %v", i, err)
		}
		if h.ITT() != uint32(i) {
			t.Fatalf("PDU %d: ITT %d", i, h.ITT())
		}
		if err := r.ReadData(got); err != nil || got[0] != byte(i) || got[4092] != byte(i) {
			t.Fatalf("PDU %d: data %v", i, err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestWriterErrors: writing to a connection the peer reset, or that we
// closed, fails as net.Conn.Write does.
func TestWriterErrors(t *testing.T) {
	t.Run("reset", func(t *testing.T) {
		c, s := tcpPair(t)
		c.SetLinger(0)
		c.Close()
		w := rawWriter(t, s)
		var err error
		for range 100 {
			if err = w.WritePDU(&pdu.NOPIn{ITT: 1, TTT: 0xffffffff}, make([]byte, 8192)); err != nil {
				break
			}
			time.Sleep(time.Millisecond)
		}
		if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("got %v, want ECONNRESET or EPIPE", err)
		}
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "write" {
			t.Fatalf("got %#v, want a *net.OpError of a write", err)
		}
	})
	t.Run("closed", func(t *testing.T) {
		_, s := tcpPair(t)
		w := rawWriter(t, s)
		s.Close()
		if err := w.WritePDU(&pdu.NOPIn{ITT: 1, TTT: 0xffffffff}, nil); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("got %v, want net.ErrClosed", err)
		}
	})
}

// TestOf: a *net.TCPConn is read and written through a Reader and a Writer
// where there is raw I/O; any other connection as it is.
func TestOf(t *testing.T) {
	c, _ := tcpPair(t)
	_, rok := ReaderOf(c).(*Reader)
	_, wok := WriterOf(c).(*Writer)
	if rok != rawIO || wok != rawIO {
		t.Fatalf("a *net.TCPConn: Reader %v, Writer %v; want %v", rok, wok, rawIO)
	}
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if ReaderOf(p) != p || WriterOf(p) != p {
		t.Fatal("a net.Pipe is not read and written as it is")
	}
}

// TestNoAllocs: a PDU written and read back through a Writer and a Reader
// allocates nothing, once they are warm.
func TestNoAllocs(t *testing.T) {
	c, s := tcpPair(t)
	w := rawWriter(t, s)
	r := rawReader(t, c, pdu.ReaderConfig{From: pdu.FromTarget})
	data := make([]byte, 4096)
	got := make([]byte, 4096)
	nop := &pdu.NOPIn{ITT: 1, TTT: 0xffffffff}
	roundTrip := func() {
		if err := w.WritePDU(nop, data); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
		if err := r.ReadData(got); err != nil {
			t.Fatal(err)
		}
	}
	roundTrip()
	if n := testing.AllocsPerRun(100, roundTrip); n != 0 {
		t.Fatalf("%v allocations per PDU, want 0", n)
	}
}

// TestSetLowWater: the socket's SO_RCVLOWAT takes the value asked for, and
// at least 1.
func TestSetLowWater(t *testing.T) {
	c, _ := tcpPair(t)
	r := NewReader(c)
	if r == nil {
		t.Skip("no raw I/O here")
	}
	get := func() int {
		rc, _ := c.SyscallConn()
		var v int
		var gerr error
		rc.Control(func(fd uintptr) { v, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT) })
		if gerr != nil {
			t.Fatal(gerr)
		}
		return v
	}
	for _, c := range []struct{ set, want int }{{4096, 4096}, {0, 1}, {33 << 10, 33 << 10}, {1, 1}} {
		if err := r.SetLowWater(c.set); err != nil {
			t.Fatal(err)
		}
		if got := get(); got != c.want {
			t.Errorf("SetLowWater(%d): SO_RCVLOWAT %d, want %d", c.set, got, c.want)
		}
	}
}
