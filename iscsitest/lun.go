package iscsitest

import (
	"slices"
	"sync"
	"sync/atomic"
)

// chunkSize is the unit in which a LUN's memory is allocated, on first write.
const chunkSize = 1 << 20

// zeroChunk is what a chunk never written reads as. Nothing writes to it:
// reads of unwritten chunks point into it instead of clearing a buffer.
var zeroChunk = make([]byte, chunkSize)

// lun is a sparse memory-backed logical unit: chunks never written read as
// zeros and take no memory.
type lun struct {
	size   int64 // bytes, a multiple of BlockSize
	mu     sync.RWMutex
	chunks map[int64]*chunk
}

// chunk is chunkSize bytes of a LUN (less for the last one).
type chunk struct {
	b []byte
	// pins counts the reads whose Data-In point into b and are not written
	// yet. A write to a pinned chunk copies it first and leaves b as the
	// reads saw it, so that the data of a read is a consistent snapshot
	// without copying it out of the LUN.
	pins atomic.Int32
}

func newLUN(size int64) *lun {
	return &lun{size: max(size/BlockSize, 0) * BlockSize, chunks: make(map[int64]*chunk)}
}

// blocks returns the number of logical blocks.
func (l *lun) blocks() uint64 { return uint64(l.size / BlockSize) }

// readAt fills p from offset off; the caller has checked the range.
func (l *lun) readAt(p []byte, off int64) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	for len(p) > 0 {
		ci, co := off/chunkSize, off%chunkSize
		n := min(int64(len(p)), chunkSize-co)
		if c := l.chunks[ci]; c != nil {
			copy(p[:n], c.b[co:])
		} else {
			clear(p[:n])
		}
		p, off = p[n:], off+n
	}
}

// view returns the n bytes at offset off as the LUN holds them now, without
// copying them: the chunks they lie in stay pinned until the view's release.
// The caller has checked the range.
func (l *lun) view(off int64, n int) *lunView {
	v := &lunView{size: n}
	v.parts, v.pinned = v.part0[:0], v.pin0[:0]
	l.mu.RLock()
	defer l.mu.RUnlock()
	for n > 0 {
		ci, co := off/chunkSize, off%chunkSize
		k := int(min(int64(n), chunkSize-co))
		b := zeroChunk
		if c := l.chunks[ci]; c != nil {
			c.pins.Add(1)
			v.pinned = append(v.pinned, c)
			b = c.b
		}
		v.parts = append(v.parts, b[co:co+int64(k)])
		n, off = n-k, off+int64(k)
	}
	return v
}

// writeAt stores p at offset off; the caller has checked the range.
func (l *lun) writeAt(p []byte, off int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for len(p) > 0 {
		ci, co := off/chunkSize, off%chunkSize
		n := min(int64(len(p)), chunkSize-co)
		c := l.chunks[ci]
		switch {
		case c == nil:
			c = &chunk{b: make([]byte, min(chunkSize, l.size-ci*chunkSize))}
			l.chunks[ci] = c
		case c.pins.Load() > 0:
			// Data-In still to be written point into c: copy on write.
			c = &chunk{b: slices.Clone(c.b)}
			l.chunks[ci] = c
		}
		copy(c.b[co:], p[:n])
		p, off = p[n:], off+n
	}
}

// snapshot returns a copy of the whole LUN.
func (l *lun) snapshot() []byte {
	b := make([]byte, l.size)
	l.readAt(b, 0)
	return b
}

// lunView is the data of a READ: consecutive slices of a LUN's chunks, the
// first at the read's offset, which no write changes until release.
type lunView struct {
	size   int
	parts  [][]byte
	pinned []*chunk
	// part0 and pin0 back parts and pinned for a read within one chunk.
	part0 [1][]byte
	pin0  [1]*chunk
	// released guards against a second release.
	released atomic.Bool
}

// slice returns bytes [off, off+n) of the view: a slice of the LUN's
// memory when they lie in one chunk, else a copy.
func (v *lunView) slice(off, n int) []byte {
	if n == 0 {
		return nil
	}
	i := 0
	for off >= len(v.parts[i]) {
		off -= len(v.parts[i])
		i++
	}
	if p := v.parts[i]; off+n <= len(p) {
		return p[off : off+n : off+n]
	}
	b := make([]byte, 0, n)
	for len(b) < n {
		p := v.parts[i][off:]
		b = append(b, p[:min(len(p), n-len(b))]...)
		i, off = i+1, 0
	}
	return b
}

// release unpins the view's chunks: once its Data-In are written (or
// dropped), writes may change them in place again.
func (v *lunView) release() {
	if v == nil || v.released.Swap(true) {
		return
	}
	for _, c := range v.pinned {
		c.pins.Add(-1)
	}
}
