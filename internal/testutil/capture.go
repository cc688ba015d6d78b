package testutil

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/goiscsi/iscsi/capture"
	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/pdu"
)

// Recorder records connections to a real peer with capture.Tap, one pcap
// file each, and checks afterwards that tshark decodes them with no
// malformed packet. A failed test keeps its captures in a directory it
// names in the log.
type Recorder struct {
	t    testing.TB
	dir  string
	port int

	mu    sync.Mutex
	paths []string
	taps  []*capture.TapConn
}

// NewRecorder returns a Recorder for connections to a peer's port.
func NewRecorder(t testing.TB, port int) *Recorder {
	r := &Recorder{t: t, dir: t.TempDir(), port: port}
	t.Cleanup(r.keepIfFailed)
	return r
}

// keepIfFailed copies the captures of a failed test out of its TempDir,
// which goes with the test.
func (r *Recorder) keepIfFailed() {
	if !r.t.Failed() {
		return
	}
	keep, err := os.MkdirTemp("", "goiscsi-pcap-")
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.paths {
		if b, err := os.ReadFile(p); err == nil {
			os.WriteFile(filepath.Join(keep, filepath.Base(p)), b, 0o644)
		}
	}
	r.t.Logf("captures kept in %s", keep)
}

// Wrap records c; it is a Config.WrapConn.
func (r *Recorder) Wrap(c net.Conn) net.Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	path := filepath.Join(r.dir, fmt.Sprintf("conn%02d.pcap", len(r.paths)))
	tap, err := capture.NewFileTap(c, path, capture.TapOptions{})
	if err != nil {
		r.t.Errorf("capture: %v", err)
		return c
	}
	r.paths = append(r.paths, path)
	r.taps = append(r.taps, tap)
	return tap
}

// Paths returns the files recorded so far, one per connection.
func (r *Recorder) Paths() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.paths...)
}

// Check runs once every recorded connection is closed: no tap failed, and
// tshark finds no malformed packet in any file. It returns false when
// tshark is missing (an error under CI=true, a log line otherwise).
func (r *Recorder) Check() bool {
	r.t.Helper()
	r.mu.Lock()
	for _, tap := range r.taps {
		if err := tap.Err(); err != nil {
			r.t.Errorf("capture: %v", err)
		}
	}
	r.mu.Unlock()
	if missing := peers.Missing("tshark"); len(missing) > 0 {
		if peers.InCI() {
			r.t.Errorf("tshark missing: captures not checked")
		} else {
			r.t.Logf("tshark missing: captures not checked")
		}
		return false
	}
	for _, p := range r.Paths() {
		n, err := peers.TsharkMalformed(p, r.port)
		if err != nil {
			r.t.Errorf("tshark %s: %v", p, err)
		} else if n != 0 {
			r.t.Errorf("tshark finds %d malformed packets in %s", n, p)
		}
	}
	return true
}

// Opcodes counts the iSCSI opcodes (the immediate bit masked) tshark sees
// in the recorded files, all together; it is empty without tshark.
func (r *Recorder) Opcodes() map[pdu.Opcode]int {
	r.t.Helper()
	out := map[pdu.Opcode]int{}
	for _, m := range r.OpcodesPerFile() {
		for op, n := range m {
			out[op] += n
		}
	}
	return out
}

// OpcodesPerFile is Opcodes per recorded file, in the order of the
// connections; it is nil without tshark.
func (r *Recorder) OpcodesPerFile() []map[pdu.Opcode]int {
	r.t.Helper()
	if len(peers.Missing("tshark")) > 0 {
		return nil
	}
	var out []map[pdu.Opcode]int
	for _, p := range r.Paths() {
		m := map[pdu.Opcode]int{}
		out = append(out, m)
		rows, err := peers.TsharkFields(p, r.port, "iscsi.opcode")
		if err != nil {
			r.t.Errorf("tshark %s: %v", p, err)
			continue
		}
		for _, row := range rows {
			for _, v := range strings.Split(row[0], ",") {
				var op uint64
				if _, err := fmt.Sscanf(v, "0x%x", &op); err == nil {
					m[pdu.Opcode(op&0x3f)]++
				}
			}
		}
	}
	return out
}
