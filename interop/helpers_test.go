package interop

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/capture"
	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

const (
	// blockSize is the logical block size of LIO's rd_mcp LUNs.
	blockSize = 512
	// subtestTimeout bounds each subtest's logins, I/O and logouts.
	subtestTimeout = 3 * time.Minute
	// lioSessionWait bounds the wait for LIO's session list to change: LIO
	// removes a session when its last connection closes, a little after the
	// Logout Response.
	lioSessionWait = 15 * time.Second
)

// initiatorName returns an initiator name of its own for a test case, so
// that LIO's session list tells the cases apart and each gets a fresh
// dynamic ACL (with the UNIT ATTENTIONs of a new I_T nexus).
func initiatorName(t testing.TB) string {
	name := strings.ToLower(t.Name())
	name = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
			return r
		}
		return '-'
	}, name)
	return "iqn.2026-01.org.goiscsi:" + name
}

// testCtx is a context bounded by subtestTimeout and canceled when t ends.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), subtestTimeout)
	t.Cleanup(cancel)
	return ctx
}

// fmtParams writes negotiated parameters as the RFC 7143 keys.
func fmtParams(p session.Params) string {
	yn := func(b bool) string { return pdu.FormatBool(b) }
	dg := func(b bool) string {
		if b {
			return "CRC32C"
		}
		return "None"
	}
	return fmt.Sprintf("HeaderDigest=%s DataDigest=%s MaxConnections=%d InitialR2T=%s ImmediateData=%s "+
		"MaxRecvDataSegmentLength=%d (target's %d) MaxBurstLength=%d FirstBurstLength=%d "+
		"DefaultTime2Wait=%d DefaultTime2Retain=%d MaxOutstandingR2T=%d DataPDUInOrder=%s "+
		"DataSequenceInOrder=%s ErrorRecoveryLevel=%d TargetPortalGroupTag=%d TargetAlias=%q",
		dg(p.HeaderDigest), dg(p.DataDigest), p.MaxConnections, yn(p.InitialR2T), yn(p.ImmediateData),
		p.MaxRecvDataSegmentLength, p.TargetMaxRecvDataSegmentLength, p.MaxBurstLength, p.FirstBurstLength,
		p.DefaultTime2Wait, p.DefaultTime2Retain, p.MaxOutstandingR2T, yn(p.DataPDUInOrder),
		yn(p.DataSequenceInOrder), p.ErrorRecoveryLevel, p.TargetPortalGroupTag, p.TargetAlias)
}

// logParams puts a session's negotiated parameters in the test log.
func logParams(t testing.TB, what string, s *session.Session) {
	t.Helper()
	t.Logf("negotiated (%s): %s", what, fmtParams(s.Params()))
}

// pattern returns n bytes of data that depend on seed.
func pattern(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24),
		byte(seed >> 32), byte(seed >> 40), byte(seed >> 48), byte(seed >> 56), 'g', 'o', 'i', 's', 'c', 's', 'i'})
	r.Read(b)
	return b
}

// writeVerify writes data at lba of lun, reads it back and compares byte for
// byte.
func writeVerify(ctx context.Context, s *session.Session, lun int, lba uint64, data []byte) error {
	if err := s.Write(ctx, lun, lba, blockSize, data); err != nil {
		return fmt.Errorf("write %d bytes at LUN %d LBA %d: %w", len(data), lun, lba, err)
	}
	got := make([]byte, len(data))
	if err := s.Read(ctx, lun, lba, blockSize, got); err != nil {
		return fmt.Errorf("read %d bytes at LUN %d LBA %d: %w", len(data), lun, lba, err)
	}
	if !bytes.Equal(got, data) {
		i := 0
		for i < len(got) && got[i] == data[i] {
			i++
		}
		return fmt.Errorf("LUN %d LBA %d: %d bytes read back differ from those written, first at offset %d", lun, lba, len(data), i)
	}
	return nil
}

// waitLIOSessions polls LIO's own session list (tpgt_1/dynamic_sessions)
// until the sessions of initiator name (every session when name is "")
// number want.
func waitLIOSessions(t testing.TB, l *peers.LIO, name string, want int) {
	t.Helper()
	waitLIOSessionsFor(t, l, name, want, lioSessionWait)
}

// waitLIOSessionsFor is waitLIOSessions with its own deadline.
func waitLIOSessionsFor(t testing.TB, l *peers.LIO, name string, want int, wait time.Duration) {
	t.Helper()
	var got []string
	var err error
	deadline := time.Now().Add(wait)
	for {
		var all []string
		all, err = l.Sessions()
		got = nil
		for _, s := range all {
			if name == "" || s == name {
				got = append(got, s)
			}
		}
		if err == nil && len(got) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("LIO lists %d sessions of %q after %v, want %d: %q (err %v)", len(got), name, wait, want, all, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lioSessionsWithin reports whether LIO lists no session of initiator name
// within wait.
func lioSessionsWithin(l *peers.LIO, name string, wait time.Duration) bool {
	for deadline := time.Now().Add(wait); ; time.Sleep(50 * time.Millisecond) {
		all, err := l.Sessions()
		if err == nil && !slices.Contains(all, name) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// tapSet records connections into pcap files, one per connection, and
// checks them with tshark.
type tapSet struct {
	dir  string
	port int

	mu    sync.Mutex
	paths []string
	taps  []*capture.TapConn
}

func newTapSet(t testing.TB, port int) *tapSet {
	return &tapSet{dir: t.TempDir(), port: port}
}

// wrap records c; it is a WrapConn.
func (ts *tapSet) wrap(t testing.TB, c net.Conn) net.Conn {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	path := filepath.Join(ts.dir, fmt.Sprintf("conn%02d.pcap", len(ts.paths)))
	tap, err := capture.NewFileTap(c, path, capture.TapOptions{})
	if err != nil {
		t.Errorf("capture: %v", err)
		return c
	}
	ts.paths = append(ts.paths, path)
	ts.taps = append(ts.taps, tap)
	return tap
}

// logouts checks each recorded connection (all closed by now) with tshark:
// no malformed packet, and returns per file how many Logout Requests and
// Responses it carries.
func (ts *tapSet) logouts(t testing.TB) (req, resp []int) {
	t.Helper()
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for _, tap := range ts.taps {
		if err := tap.Err(); err != nil {
			t.Errorf("capture: %v", err)
		}
	}
	if missing := peers.Missing("tshark"); len(missing) > 0 {
		if peers.InCI() {
			t.Errorf("tshark missing: captures not checked")
		} else {
			t.Logf("tshark missing: captures not checked")
		}
		return nil, nil
	}
	for _, p := range ts.paths {
		bad, err := peers.TsharkMalformed(p, ts.port)
		if err != nil {
			t.Fatalf("tshark %s: %v", p, err)
		}
		if bad != 0 {
			t.Errorf("tshark finds %d malformed packets in %s", bad, p)
		}
		rows, err := peers.TsharkFields(p, ts.port, "iscsi.opcode")
		if err != nil {
			t.Fatalf("tshark %s: %v", p, err)
		}
		var q, r int
		for _, row := range rows {
			for _, op := range strings.Split(row[0], ",") {
				switch op {
				case "0x06", "0x46": // Logout Request, immediate or not
					q++
				case "0x26":
					r++
				}
			}
		}
		req, resp = append(req, q), append(resp, r)
	}
	return req, resp
}

// countConn counts the bytes the initiator writes on a connection.
type countConn struct {
	net.Conn
	written atomic.Int64
}

func (c *countConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.written.Add(int64(n))
	return n, err
}

// rawConn keeps the first bytes the target sends on a connection, to look at
// the login PDUs as they were on the wire, padding included.
type rawConn struct {
	net.Conn
	mu  sync.Mutex
	buf []byte
}

const rawLimit = 64 << 10

func (c *rawConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.mu.Lock()
	if room := rawLimit - len(c.buf); room > 0 {
		c.buf = append(c.buf, b[:min(n, room)]...)
	}
	c.mu.Unlock()
	return n, err
}

// loginPDU is one Login Response as the target sent it.
type loginPDU struct {
	dsl     int
	data    []byte // DataSegmentLength bytes
	padding []byte // the 0-3 bytes after them
}

// loginResponses splits the bytes the target sent into its Login Responses
// (no digests in the login phase), up to the first PDU of another kind.
func (c *rawConn) loginResponses() []loginPDU {
	c.mu.Lock()
	b := slices.Clone(c.buf)
	c.mu.Unlock()
	var out []loginPDU
	for len(b) >= pdu.BHSLen {
		if pdu.Opcode(b[0]&0x3f) != pdu.OpLoginResponse {
			break
		}
		ahs := int(b[4]) * 4
		dsl := int(b[5])<<16 | int(b[6])<<8 | int(b[7])
		pad := (4 - dsl%4) % 4
		end := pdu.BHSLen + ahs + dsl + pad
		if len(b) < end {
			break
		}
		out = append(out, loginPDU{dsl: dsl, data: b[pdu.BHSLen+ahs : pdu.BHSLen+ahs+dsl], padding: b[pdu.BHSLen+ahs+dsl : end]})
		b = b[end:]
	}
	return out
}
