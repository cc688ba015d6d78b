package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/goiscsi/iscsi/capture"
)

// pcapHeaderLen and pcapRecordHeaderLen are the sizes of a pcap file header
// and of each packet record's header.
const (
	pcapHeaderLen       = 24
	pcapRecordHeaderLen = 16
	// maxPcapRecord bounds a record a Tap writes; anything larger means the
	// stream is not what we think it is.
	maxPcapRecord = 1 << 20
)

// pcapMux records every connection of a command into one pcap file. A
// capture.TapConn writes a whole pcap stream of its own (file header, then
// records); the mux gives each Tap a writer that keeps the first file
// header, drops the others, and copies each record whole under one lock, so
// records of concurrent connections never interleave.
type pcapMux struct {
	mu     sync.Mutex
	f      *os.File
	bw     *bufio.Writer
	header []byte // the file header written, nil before the first
	err    error
	taps   []*capture.TapConn
}

func newPcapMux(path string) (*pcapMux, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &pcapMux{f: f, bw: bufio.NewWriterSize(f, 256<<10)}, nil
}

// Wrap records nc into the file; it is initiator.Config.WrapConn. A
// connection that cannot be recorded is used all the same.
func (m *pcapMux) Wrap(nc net.Conn) net.Conn {
	m.mu.Lock()
	// Connections without TCP addresses (net.Pipe) are recorded with a port
	// of their own, so that they stay apart in the capture.
	opts := capture.TapOptions{InitiatorPort: capture.DefaultInitiatorPort + uint16(len(m.taps)%16384)}
	m.mu.Unlock()
	t, err := capture.NewTap(nc, &tapWriter{m: m}, opts)
	if err != nil {
		m.fail(err)
		return nc
	}
	m.mu.Lock()
	m.taps = append(m.taps, t)
	m.mu.Unlock()
	return t
}

func (m *pcapMux) fail(err error) {
	m.mu.Lock()
	if m.err == nil {
		m.err = err
	}
	m.mu.Unlock()
}

// Close flushes and closes the file; it returns the first error met
// recording. The connections must be closed before.
func (m *pcapMux) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, t := range m.taps {
		if err := t.Err(); err != nil && m.err == nil {
			m.err = err
		}
	}
	if m.header == nil && m.err == nil {
		// No connection at all: still a valid, empty capture.
		m.err = writePcapHeader(m.bw)
	}
	if err := m.bw.Flush(); err != nil && m.err == nil {
		m.err = err
	}
	if err := m.f.Close(); err != nil && m.err == nil {
		m.err = err
	}
	return m.err
}

// writePcapHeader writes the header a Tap writes (Ethernet, microseconds).
func writePcapHeader(w *bufio.Writer) error {
	var h [pcapHeaderLen]byte
	binary.LittleEndian.PutUint32(h[0:], 0xa1b2c3d4)
	binary.LittleEndian.PutUint16(h[4:], 2)
	binary.LittleEndian.PutUint16(h[6:], 4)
	binary.LittleEndian.PutUint32(h[16:], 262144)
	binary.LittleEndian.PutUint32(h[20:], 1)
	_, err := w.Write(h[:])
	return err
}

// header takes a Tap's file header: the first is written, the others must
// match it.
func (m *pcapMux) takeHeader(h []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return m.err
	}
	if m.header == nil {
		m.header = bytes.Clone(h)
		if _, err := m.bw.Write(h); err != nil {
			m.err = err
		}
		return m.err
	}
	if !bytes.Equal(m.header, h) {
		m.err = errors.New("pcap: connections recorded with different file headers")
	}
	return m.err
}

func (m *pcapMux) writeRecord(r []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return m.err
	}
	if _, err := m.bw.Write(r); err != nil {
		m.err = err
	}
	return m.err
}

// tapWriter receives one Tap's pcap stream, which may come in pieces of any
// size, and passes it to the mux in whole records.
type tapWriter struct {
	m         *pcapMux
	buf       []byte
	order     binary.ByteOrder
	sawHeader bool
}

func (w *tapWriter) Write(b []byte) (int, error) {
	w.buf = append(w.buf, b...)
	if !w.sawHeader {
		if len(w.buf) < pcapHeaderLen {
			return len(b), nil
		}
		switch binary.LittleEndian.Uint32(w.buf) {
		case 0xa1b2c3d4, 0xa1b23c4d:
			w.order = binary.LittleEndian
		case 0xd4c3b2a1, 0x4d3cb2a1:
			w.order = binary.BigEndian
		default:
			return 0, fmt.Errorf("pcap: unknown magic %x", w.buf[:4])
		}
		if err := w.m.takeHeader(w.buf[:pcapHeaderLen]); err != nil {
			return 0, err
		}
		w.buf = w.buf[pcapHeaderLen:]
		w.sawHeader = true
	}
	off := 0
	for len(w.buf)-off >= pcapRecordHeaderLen {
		n := int(w.order.Uint32(w.buf[off+8:]))
		if n > maxPcapRecord {
			return 0, fmt.Errorf("pcap: record of %d bytes", n)
		}
		end := off + pcapRecordHeaderLen + n
		if len(w.buf) < end {
			break
		}
		if err := w.m.writeRecord(w.buf[off:end]); err != nil {
			return 0, err
		}
		off = end
	}
	// Keep the partial record at the front of the buffer, which is reused.
	w.buf = append(w.buf[:0], w.buf[off:]...)
	return len(b), nil
}
