package session

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/capture"
	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/pdu"
)

// Helpers shared by the interop tests against real targets.

const initiatorIQN = "iqn.2026-01.org.goiscsi:session-test"

// ioSizes are the transfer sizes every target is checked with: around the
// immediate-data, first-burst and burst limits, and large.
var ioSizes = []int{512, 4 << 10, 64 << 10, 64<<10 + 512, 256 << 10, 1<<20 + 512, 8 << 20}

// recorder records every connection of the sessions a test opens with
// capture.Tap, and checks afterwards that tshark decodes the traffic with
// no malformed packet.
type recorder struct {
	t    testing.TB
	dir  string
	port int

	mu    sync.Mutex
	paths []string
	taps  []*capture.TapConn
}

func newRecorder(t testing.TB, port int) *recorder {
	r := &recorder{t: t, dir: t.TempDir(), port: port}
	t.Cleanup(func() {
		// A failed test keeps its captures (t.TempDir's go with it).
		if !t.Failed() {
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
		t.Logf("captures kept in %s", keep)
	})
	return r
}

// wrap is a Config.WrapConn.
func (r *recorder) wrap(c net.Conn) net.Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	path := filepath.Join(r.dir, fmt.Sprintf("conn%d.pcap", len(r.paths)))
	tap, err := capture.NewFileTap(c, path, capture.TapOptions{})
	if err != nil {
		r.t.Errorf("capture: %v", err)
		return c
	}
	r.paths = append(r.paths, path)
	r.taps = append(r.taps, tap)
	return tap
}

// check runs once every recorded connection is closed. It returns the
// recorded files.
func (r *recorder) check() []string {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, tap := range r.taps {
		if err := tap.Err(); err != nil {
			r.t.Errorf("capture: %v", err)
		}
	}
	if missing := peers.Missing("tshark"); len(missing) > 0 {
		if peers.InCI() {
			r.t.Errorf("tshark missing: captures not checked")
		} else {
			r.t.Logf("tshark missing: captures not checked")
		}
		return r.paths
	}
	for _, p := range r.paths {
		n, err := peers.TsharkMalformed(p, r.port)
		if err != nil {
			r.t.Errorf("tshark %s: %v", p, err)
		} else if n != 0 {
			r.t.Errorf("tshark finds %d malformed packets in %s", n, p)
		}
	}
	return r.paths
}

// opcodes counts the iSCSI opcodes tshark sees in the recorded files.
func (r *recorder) opcodes() map[pdu.Opcode]int {
	r.t.Helper()
	out := map[pdu.Opcode]int{}
	if len(peers.Missing("tshark")) > 0 {
		return out
	}
	for _, p := range r.paths {
		rows, err := peers.TsharkFields(p, r.port, "iscsi.opcode")
		if err != nil {
			r.t.Errorf("tshark %s: %v", p, err)
			continue
		}
		for _, row := range rows {
			for _, v := range strings.Split(row[0], ",") {
				var op uint64
				if _, err := fmt.Sscanf(v, "0x%x", &op); err == nil {
					out[pdu.Opcode(op)]++
				}
			}
		}
	}
	return out
}

func interopCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// mustLogin logs in and makes sure the session ends with the test.
func mustLogin(t testing.TB, ctx context.Context, cfg Config) *Session {
	t.Helper()
	s, err := Login(ctx, cfg)
	if err != nil {
		t.Fatalf("Login to %s at %s: %v", cfg.TargetName, cfg.Portal, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustLogout(t testing.TB, ctx context.Context, s *Session) {
	t.Helper()
	res, err := s.Logout(ctx, LogoutOptions{DrainTimeout: 5 * time.Second, Timeout: 10 * time.Second})
	if err != nil || !res.OK() {
		t.Fatalf("Logout: %+v %v", res, err)
	}
	if !s.LoggedOut() || len(s.Conns()) != 0 {
		t.Fatalf("after logout: LoggedOut %v, %d connections", s.LoggedOut(), len(s.Conns()))
	}
}

func randomData(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// verifyIO writes random data of each size at lba and reads it back.
func verifyIO(t testing.TB, ctx context.Context, s *Session, lun int, lba uint64, blockSize int, sizes []int) {
	t.Helper()
	for _, n := range sizes {
		data := randomData(t, n)
		if err := s.Write(ctx, lun, lba, blockSize, data); err != nil {
			t.Fatalf("write %d bytes: %v", n, err)
		}
		got := make([]byte, n)
		if err := s.Read(ctx, lun, lba, blockSize, got); err != nil {
			t.Fatalf("read %d bytes: %v", n, err)
		}
		if i := firstDiff(got, data); i >= 0 {
			t.Fatalf("%d bytes: read differs from write at byte %d", n, i)
		}
	}
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// concurrentIO runs n commands at once, each writing then reading back its
// own region.
func concurrentIO(t testing.TB, ctx context.Context, s *Session, lun int, blockSize, n, size int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lba := uint64(i * size / blockSize)
			data := make([]byte, size)
			rand.Read(data)
			if err := s.Write(ctx, lun, lba, blockSize, data); err != nil {
				errs <- fmt.Errorf("command %d write: %w", i, err)
				return
			}
			got := make([]byte, size)
			if err := s.Read(ctx, lun, lba, blockSize, got); err != nil {
				errs <- fmt.Errorf("command %d read: %w", i, err)
				return
			}
			if !bytes.Equal(got, data) {
				errs <- fmt.Errorf("command %d: data differs", i)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// logParams prints what a target negotiated.
func logParams(t testing.TB, target string, p Params) {
	t.Helper()
	t.Logf("%s negotiated: HeaderDigest=%v DataDigest=%v MaxConnections=%d InitialR2T=%v ImmediateData=%v "+
		"MaxRecvDataSegmentLength=%d (target's %d) MaxBurstLength=%d FirstBurstLength=%d DefaultTime2Wait=%d "+
		"DefaultTime2Retain=%d MaxOutstandingR2T=%d DataPDUInOrder=%v DataSequenceInOrder=%v ErrorRecoveryLevel=%d "+
		"TargetPortalGroupTag=%d TargetAlias=%q",
		target, p.HeaderDigest, p.DataDigest, p.MaxConnections, p.InitialR2T, p.ImmediateData,
		p.MaxRecvDataSegmentLength, p.TargetMaxRecvDataSegmentLength, p.MaxBurstLength, p.FirstBurstLength,
		p.DefaultTime2Wait, p.DefaultTime2Retain, p.MaxOutstandingR2T, p.DataPDUInOrder, p.DataSequenceInOrder,
		p.ErrorRecoveryLevel, p.TargetPortalGroupTag, p.TargetAlias)
}

// eventually polls cond until it holds or the deadline passes: for a peer's
// own view, which changes in another process with no signal to wait on.
func eventually(t testing.TB, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, detail)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
