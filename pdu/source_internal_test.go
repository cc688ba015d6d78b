package pdu

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

// TestSockReaderStream reads PDUs of every size, written in pieces of every
// size, through a Reader on a TCP connection, and checks them all.
func TestSockReaderStream(t *testing.T) {
	c, s := tcpPair(t)
	r := NewReader(c, ReaderConfig{From: FromTarget, MaxDataSegmentLength: 1 << 20, DataDigest: true, HeaderDigest: true})
	if _, ok := r.r.(*sockReader); !ok {
		t.Fatalf("a *net.TCPConn is read through %T, want *sockReader", r.r)
	}
	sizes := []int{0, 1, 3, 47, 48, 4096, 8191, readBufSize - 1, readBufSize, readBufSize + 5, 256 << 10, 1 << 20}
	var stream bytes.Buffer
	w := NewWriter(&stream)
	w.SetDigests(true, true)
	var want [][]byte
	for i, n := range sizes {
		data := make([]byte, n)
		for j := range data {
			data[j] = byte(i + j*7)
		}
		want = append(want, data)
		if err := w.WritePDU(&DataIn{ITT: uint32(i), TTT: 0xffffffff, BufferOffset: 0}, data); err != nil {
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

// TestSockReaderIdleHoldsNoBuffer checks the point of sockReader: while it
// waits for the network with nothing buffered, it holds no buffer.
func TestSockReaderIdleHoldsNoBuffer(t *testing.T) {
	releases := make(chan struct{}, 16)
	onRelease = func() { releases <- struct{}{} }
	defer func() { onRelease = nil }()
	c, s := tcpPair(t)
	r := NewReader(c, ReaderConfig{From: FromTarget})
	var stream bytes.Buffer
	w := NewWriter(&stream)
	w.WritePDU(&NOPIn{ITT: 1, TTT: 0xffffffff}, []byte("ping"))
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

// TestSockReaderErrors: a deadline, a reset and a local close end a read as
// they end net.Conn.Read.
func TestSockReaderErrors(t *testing.T) {
	t.Run("deadline", func(t *testing.T) {
		c, _ := tcpPair(t)
		r := NewReader(c, ReaderConfig{})
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
		r := NewReader(c, ReaderConfig{})
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
		r := NewReader(c, ReaderConfig{})
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
		r := NewReader(c, ReaderConfig{})
		s.CloseWrite()
		if _, err := r.Next(); err != io.EOF {
			t.Fatalf("got %v, want io.EOF", err)
		}
	})
}

// TestNextDeadlineResumes: a read deadline that expires while Next waits for
// a header, or skips an unread data segment, leaves the stream in step.
func TestNextDeadlineResumes(t *testing.T) {
	for _, dig := range []bool{false, true} {
		t.Run(fmt.Sprintf("digests=%v", dig), func(t *testing.T) {
			c, s := tcpPair(t)
			r := NewReader(c, ReaderConfig{From: FromTarget, HeaderDigest: dig, DataDigest: dig, MaxDataSegmentLength: 1 << 20})
			var stream bytes.Buffer
			w := NewWriter(&stream)
			w.SetDigests(dig, dig)
			big := bytes.Repeat([]byte{7}, 200<<10)
			w.WritePDU(&DataIn{ITT: 1, TTT: 0xffffffff}, big) // skipped unread
			w.WritePDU(&NOPIn{ITT: 2, TTT: 0xffffffff}, []byte("pong"))
			raw := stream.Bytes()
			first := BHSLen
			if dig {
				first += DigestLen
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
			if err != nil || h.Opcode() != OpSCSIDataIn {
				t.Fatalf("first PDU: %v %v", h, err)
			}
			interrupt("part of the unread data segment")
			s.Write(raw[first+1000 : len(raw)-10])
			interrupt("part of the next header")
			s.Write(raw[len(raw)-10:])
			h, err = r.Next()
			if err != nil || h.Opcode() != OpNOPIn {
				t.Fatalf("second PDU: %v %v", h, err)
			}
			if d, err := r.Data(); err != nil || string(d) != "pong" {
				t.Fatalf("second PDU's data: %q %v", d, err)
			}
		})
	}
}

// TestRawWriterLargeBatch writes one batch of more buffers than a writev
// takes and more bytes than the socket buffers hold, while the reader is
// slow, through the raw writer, and reads it all back.
func TestRawWriterLargeBatch(t *testing.T) {
	c, s := tcpPair(t)
	w := NewWriter(s)
	if rawIO && w.rc == nil {
		t.Fatal("a *net.TCPConn is not written with raw writev")
	}
	w.SetDigests(true, true)
	const n = 1500 // PDUs: 3 buffers each (header, data, padding+digest)
	for i := range n {
		data := bytes.Repeat([]byte{byte(i)}, 4093) // padded: 3 buffers
		if err := w.Append(&DataIn{ITT: uint32(i), TTT: 0xffffffff}, nil, data); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- w.Flush() }()
	r := NewReader(c, ReaderConfig{From: FromTarget, HeaderDigest: true, DataDigest: true})
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

// TestRawWriterErrors: writing to a connection the peer reset, or that we
// closed, fails as net.Conn.Write does.
func TestRawWriterErrors(t *testing.T) {
	t.Run("reset", func(t *testing.T) {
		c, s := tcpPair(t)
		c.SetLinger(0)
		c.Close()
		w := NewWriter(s)
		var err error
		for range 100 {
			if err = w.WritePDU(&NOPIn{ITT: 1, TTT: 0xffffffff}, make([]byte, 8192)); err != nil {
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
		w := NewWriter(s)
		s.Close()
		if err := w.WritePDU(&NOPIn{ITT: 1, TTT: 0xffffffff}, nil); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("got %v, want net.ErrClosed", err)
		}
	})
}
