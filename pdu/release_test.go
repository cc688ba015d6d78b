package pdu

import (
	"bytes"
	"testing"
)

// TestWriterRelease: Release with nothing queued drops the arena and the
// next PDUs are written whole; with PDUs queued it changes nothing.
func TestWriterRelease(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out)
	if err := w.Append(&NOPOut{ITT: 1, TTT: ReservedTag}, nil, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	w.Release() // queued: must keep it
	if w.Buffered() != 1 {
		t.Fatalf("Release dropped a queued PDU: %d buffered", w.Buffered())
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	w.Release()
	if w.arena != nil || w.bufs != nil {
		t.Errorf("Release left the arena (cap %d) or bufs (cap %d)", cap(w.arena), cap(w.bufs))
	}
	if err := w.Append(&NOPOut{ITT: 2, TTT: ReservedTag}, nil, []byte("pong")); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&out, ReaderConfig{})
	for _, want := range []struct {
		itt  uint32
		data string
	}{{1, "ping"}, {2, "pong"}} {
		h, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		var n NOPOut
		if err := n.UnmarshalBHS(h); err != nil {
			t.Fatal(err)
		}
		d, err := r.Data()
		if err != nil {
			t.Fatal(err)
		}
		if n.ITT != want.itt || string(d) != want.data {
			t.Errorf("read ITT %d data %q, want %d %q", n.ITT, d, want.itt, want.data)
		}
	}
}

// TestReaderRelease: Release drops Data's buffer between PDUs, and the next
// Data reads into a new one; with a data segment unread it keeps it.
func TestReaderRelease(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out)
	for i, d := range []string{"first", "second", "third"} {
		if err := w.Append(&NOPOut{ITT: uint32(i), TTT: ReservedTag}, nil, []byte(d)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&out, ReaderConfig{})
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	first, err := r.Data()
	if err != nil {
		t.Fatal(err)
	}
	r.Release()
	if r.buf != nil {
		t.Errorf("Release between PDUs kept a buffer of %d bytes", cap(r.buf))
	}
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	r.Release() // "second" is unread: nothing changes
	second, err := r.Data()
	if err != nil {
		t.Fatal(err)
	}
	if string(first) != "first" || string(second) != "second" {
		t.Errorf("Data gave %q then %q, want first, second: a released buffer was reused", first, second)
	}
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if d, err := r.Data(); err != nil || string(d) != "third" {
		t.Errorf("Data gave %q, %v; want third", d, err)
	}
}
