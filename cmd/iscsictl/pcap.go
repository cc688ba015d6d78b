package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"github.com/goiscsi/iscsi/capture"
)

// pcapMux records every connection of a command into one pcap file, each
// through its own capture.TapConn of one capture.Recorder.
type pcapMux struct {
	rec *capture.Recorder
	// file is the file under a snapWriter, which Close closes.
	file io.Closer

	mu  sync.Mutex
	err error // the first Tap that could not be made
}

// minSnapLen is the least --pcap-snaplen: Ethernet, IPv6 and TCP headers
// and a BHS.
const minSnapLen = 128

// newPcapMux records into a new file at path; snap > 0 keeps at most snap
// bytes of each packet.
func newPcapMux(path string, snap int) (*pcapMux, error) {
	if snap == 0 {
		rec, err := capture.NewFileRecorder(path)
		if err != nil {
			return nil, err
		}
		return &pcapMux{rec: rec}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	sw := &snapWriter{w: f, snap: uint32(snap)}
	rec, err := capture.NewRecorder(sw)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &pcapMux{rec: rec, file: f}, nil
}

// Wrap records nc into the file; it is initiator.Config.WrapConn. A
// connection that cannot be recorded is used all the same, and Close
// reports why.
func (m *pcapMux) Wrap(nc net.Conn) net.Conn {
	t, err := m.rec.Tap(nc, capture.TapOptions{})
	if err != nil {
		m.mu.Lock()
		if m.err == nil {
			m.err = err
		}
		m.mu.Unlock()
		return nc
	}
	return t
}

// Close flushes and closes the file and returns the first error met
// recording. Close the connections first, for their FINs to be recorded.
func (m *pcapMux) Close() error {
	err := m.rec.Close()
	if m.file != nil {
		if cerr := m.file.Close(); err == nil {
			err = cerr
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return m.err
	}
	return err
}

// snapWriter cuts the packets of a pcap stream (the classic format, in
// the byte order its header says) to snap bytes, as a capture with that
// snap length keeps them: the record's captured length shrinks, its
// original length stays, and the file header carries the snap length. The
// Recorder writes whole records in any chunks; the writer follows them.
type snapWriter struct {
	w    io.Writer
	snap uint32

	order  binary.ByteOrder
	hdr    []byte // the header being gathered: the file's, then a record's
	keep   uint32 // bytes of the current record's data still to write
	skip   uint32 // bytes of it to drop after those
	inData bool
}

func (s *snapWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if s.inData {
			k := min(uint32(len(p)), s.keep)
			if k > 0 {
				if _, err := s.w.Write(p[:k]); err != nil {
					return 0, err
				}
				s.keep -= k
				p = p[k:]
			}
			d := min(uint32(len(p)), s.skip)
			s.skip -= d
			p = p[d:]
			if s.keep == 0 && s.skip == 0 {
				s.inData = false
			}
			continue
		}
		want := 16
		if s.order == nil {
			want = 24
		}
		t := min(want-len(s.hdr), len(p))
		s.hdr = append(s.hdr, p[:t]...)
		p = p[t:]
		if len(s.hdr) < want {
			continue
		}
		if err := s.header(); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// header handles a complete file or record header in s.hdr.
func (s *snapWriter) header() error {
	h := s.hdr
	s.hdr = s.hdr[:0]
	if s.order == nil {
		switch binary.LittleEndian.Uint32(h) {
		case 0xa1b2c3d4, 0xa1b23c4d:
			s.order = binary.LittleEndian
		case 0xd4c3b2a1, 0x4d3cb2a1:
			s.order = binary.BigEndian
		default:
			return fmt.Errorf("snap length: not a pcap stream (magic %x)", h[:4])
		}
		s.order.PutUint32(h[16:], s.snap)
		_, err := s.w.Write(h)
		return err
	}
	incl := s.order.Uint32(h[8:])
	s.keep = min(incl, s.snap)
	s.skip = incl - s.keep
	s.order.PutUint32(h[8:], s.keep)
	s.inData = incl > 0
	_, err := s.w.Write(h)
	return err
}
