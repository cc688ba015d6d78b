package iscsitest

import (
	"bytes"
	"testing"
)

// A view keeps what the LUN held when it was taken, across writes, without
// copying unless a PDU's data straddles two chunks; once released, writes
// go in place again.
func TestLUNView(t *testing.T) {
	l := newLUN(3 * chunkSize)
	old := bytes.Repeat([]byte{1}, 2*chunkSize)
	l.writeAt(old, 0)

	v := l.view(chunkSize-BlockSize, 2*BlockSize+chunkSize)
	zeros := l.view(2*chunkSize+BlockSize, BlockSize)
	l.writeAt(bytes.Repeat([]byte{2}, 3*chunkSize), 0)

	want := append(bytes.Repeat([]byte{1}, chunkSize+BlockSize), make([]byte, BlockSize)...)
	var got []byte
	for off := 0; off < v.size; off += 3 * BlockSize {
		got = append(got, v.slice(off, min(3*BlockSize, v.size-off))...)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("a view changed with a write made after it")
	}
	if b := v.slice(BlockSize, BlockSize); &b[0] != &v.parts[1][0] {
		t.Error("data within one chunk was copied")
	}
	if b := zeros.slice(0, BlockSize); !bytes.Equal(b, make([]byte, BlockSize)) || &b[0] != &zeroChunk[BlockSize] {
		t.Error("an unwritten chunk does not read as the shared zeros")
	}

	v.release()
	v.release() // a second release changes nothing
	zeros.release()
	c := l.chunks[0]
	if n := c.pins.Load(); n != 0 {
		t.Fatalf("pins after release: %d", n)
	}
	l.writeAt([]byte{3}, 0)
	if l.chunks[0] != c || c.b[0] != 3 {
		t.Error("a write to an unpinned chunk did not go in place")
	}
	if !bytes.Equal(l.snapshot()[1:], bytes.Repeat([]byte{2}, 3*chunkSize-1)) {
		t.Error("the LUN lost a write made while it was pinned")
	}
}
