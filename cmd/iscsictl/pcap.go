package main

import (
	"net"
	"sync"

	"github.com/goiscsi/iscsi/capture"
)

// pcapMux records every connection of a command into one pcap file, each
// through its own capture.TapConn of one capture.Recorder.
type pcapMux struct {
	rec *capture.Recorder

	mu  sync.Mutex
	err error // the first Tap that could not be made
}

func newPcapMux(path string) (*pcapMux, error) {
	rec, err := capture.NewFileRecorder(path)
	if err != nil {
		return nil, err
	}
	return &pcapMux{rec: rec}, nil
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
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return m.err
	}
	return err
}
