package iscsitest

import "sync"

// chunkSize is the unit in which a LUN's memory is allocated, on first write.
const chunkSize = 1 << 20

// lun is a sparse memory-backed logical unit: chunks never written read as
// zeros and take no memory.
type lun struct {
	size   int64 // bytes, a multiple of BlockSize
	mu     sync.RWMutex
	chunks map[int64][]byte
}

func newLUN(size int64) *lun {
	return &lun{size: max(size/BlockSize, 0) * BlockSize, chunks: make(map[int64][]byte)}
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
			copy(p[:n], c[co:])
		} else {
			clear(p[:n])
		}
		p, off = p[n:], off+n
	}
}

// writeAt stores p at offset off; the caller has checked the range.
func (l *lun) writeAt(p []byte, off int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for len(p) > 0 {
		ci, co := off/chunkSize, off%chunkSize
		n := min(int64(len(p)), chunkSize-co)
		c := l.chunks[ci]
		if c == nil {
			c = make([]byte, min(chunkSize, l.size-ci*chunkSize))
			l.chunks[ci] = c
		}
		copy(c[co:], p[:n])
		p, off = p[n:], off+n
	}
}

// snapshot returns a copy of the whole LUN.
func (l *lun) snapshot() []byte {
	b := make([]byte, l.size)
	l.readAt(b, 0)
	return b
}
