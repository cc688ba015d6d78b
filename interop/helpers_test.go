package interop

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/internal/testutil"
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

// logouts checks the recorded connections (all closed by now): no tap
// failed, no malformed packet; it returns per connection how many Logout
// Requests and Responses it carries, nil without tshark.
func logouts(rec *testutil.Recorder) (req, resp []int) {
	if !rec.Check() {
		return nil, nil
	}
	for _, ops := range rec.OpcodesPerFile() {
		req, resp = append(req, ops[pdu.OpLogoutRequest]), append(resp, ops[pdu.OpLogoutResponse])
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
