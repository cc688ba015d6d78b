package faketarget

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// returns runs f in a goroutine and returns its error, failing the test if
// it takes longer than within.
func returns(t *testing.T, within time.Duration, f func() error) error {
	t.Helper()
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	select {
	case err := <-ch:
		return err
	case <-time.After(within):
		t.Fatalf("still blocked after %v", within)
	}
	panic("unreachable")
}

// A stalled Write blocks until Unstall, then writes; one blocked past its
// write deadline returns os.ErrDeadlineExceeded; Close wakes it.
func TestStallConnWrite(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	s := NewStallConn(a)
	defer s.Close()
	go io.Copy(io.Discard, b)

	if n, err := s.Write([]byte("before")); n != 6 || err != nil {
		t.Fatalf("write before the stall: %d, %v", n, err)
	}
	s.Stall()
	done := make(chan error, 1)
	go func() {
		_, err := s.Write([]byte("stalled"))
		done <- err
	}()
	select {
	case <-s.Blocked():
	case <-time.After(5 * time.Second):
		t.Fatal("the write did not block on the stall")
	}
	select {
	case err := <-done:
		t.Fatalf("stalled write returned %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	s.Unstall()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("write after Unstall: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Unstall did not release the write")
	}

	s.Stall()
	s.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	start := time.Now()
	err := returns(t, 5*time.Second, func() error { _, err := s.Write([]byte("x")); return err })
	if !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) < 90*time.Millisecond {
		t.Fatalf("write past its deadline: %v after %v", err, time.Since(start))
	}
	// A deadline set in the past wakes a write already blocked.
	s.SetWriteDeadline(time.Time{})
	s.Stall()
	go func() {
		<-s.Blocked()
		s.SetWriteDeadline(time.Unix(1, 0))
	}()
	err = returns(t, 5*time.Second, func() error { _, err := s.Write([]byte("x")); return err })
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write woken by a past deadline: %v", err)
	}
	s.SetWriteDeadline(time.Time{})
	s.Stall()
	go func() {
		<-s.Blocked()
		s.Close()
	}()
	err = returns(t, 5*time.Second, func() error { _, err := s.Write([]byte("x")); return err })
	if !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write woken by Close: %v", err)
	}
}

// StallReads leaves the peer's bytes unread until UnstallReads; Close
// wakes a blocked Read.
func TestStallConnReads(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	s := NewStallConn(a)
	s.StallReads()
	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 8)
		n, _ := s.Read(buf)
		got <- string(buf[:n])
	}()
	select {
	case <-s.ReadBlocked():
	case <-time.After(5 * time.Second):
		t.Fatal("the read did not block")
	}
	wrote := make(chan error, 1)
	go func() { _, err := b.Write([]byte("hello")); wrote <- err }()
	select {
	case <-wrote:
		t.Fatal("a pipe write went through while the reads were stalled")
	case <-time.After(50 * time.Millisecond):
	}
	s.UnstallReads()
	select {
	case g := <-got:
		if g != "hello" {
			t.Fatalf("read %q", g)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("UnstallReads did not release the read")
	}
	<-wrote
	s.StallReads()
	go func() {
		<-s.ReadBlocked()
		s.Close()
	}()
	err := returns(t, 5*time.Second, func() error { _, err := s.Read(make([]byte, 1)); return err })
	if !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read woken by Close: %v", err)
	}
}

// On loopback TCP a target that stops reading fills the buffers until the
// initiator's write blocks, and Reset makes the initiator's next read fail
// with ECONNRESET, not EOF.
func TestTCPStopReadingAndReset(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ini, tgt, err := TCPPair(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ini.Close()
	f := New(t, NewStallConn(tgt), Timing{})
	defer f.Close()
	ini.SetWriteBuffer(64 << 10)
	tgt.SetReadBuffer(64 << 10)
	f.StopReading()
	ini.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
	chunk := make([]byte, 1<<20)
	total := 0
	err = returns(t, 5*time.Second, func() error {
		for total < 64<<20 {
			n, err := ini.Write(chunk)
			total += n
			if err != nil {
				return err
			}
		}
		return nil
	})
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write to a target that reads nothing: %v after %d bytes", err, total)
	}
	ini.SetWriteDeadline(time.Time{})
	f.Reset()
	ini.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = ini.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after Reset: %v, want ECONNRESET", err)
	}
}
