package testutil

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

// PDUConn wraps the initiator's connection to a real peer (a
// Config.WrapConn) for the tests that must know, or steer, what goes over
// it PDU by PDU, where the peer has no hook:
//
//   - it splits what the initiator writes into PDUs and shows each one's
//     Basic Header Segment to OnPDU;
//   - Drop, if set, swallows the PDUs it chooses: the peer never sees them
//     (a Logout Request that gets no answer, say);
//   - Hold stops the initiator's reads until released: nothing the peer
//     sends is seen meanwhile, so no command completes, and the commands
//     written are exactly those in flight.
//
// It parses PDUs without digests: the connection must negotiate
// HeaderDigest=None and DataDigest=None (the login phase has none).
type PDUConn struct {
	net.Conn
	// OnPDU, if set, gets each PDU's BHS as the initiator writes it, and
	// whether Drop swallowed it. It runs on the writer's goroutine with
	// the connection's write lock held: keep it short.
	OnPDU func(bhs []byte, dropped bool)
	// Drop, if set, is asked about each PDU before it is written.
	Drop func(bhs []byte) bool

	wmu      sync.Mutex
	hdr      []byte // the BHS being collected
	rest     int    // bytes of the current PDU after its BHS still to come
	dropping bool   // the current PDU is swallowed

	gate      atomic.Pointer[chan struct{}]
	closed    chan struct{}
	closeOnce sync.Once
}

// NewPDUConn wraps c; set OnPDU and Drop before the first write.
func NewPDUConn(c net.Conn) *PDUConn {
	return &PDUConn{Conn: c, closed: make(chan struct{}), hdr: make([]byte, 0, pdu.BHSLen)}
}

// Write passes b on less the PDUs Drop swallows, as one write.
func (c *PDUConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	out := make([]byte, 0, len(b))
	for p := b; len(p) > 0; {
		if c.rest == 0 {
			n := min(pdu.BHSLen-len(c.hdr), len(p))
			c.hdr, p = append(c.hdr, p[:n]...), p[n:]
			if len(c.hdr) < pdu.BHSLen {
				break
			}
			ahs := int(c.hdr[4]) * 4
			dsl := int(c.hdr[5])<<16 | int(c.hdr[6])<<8 | int(c.hdr[7])
			c.rest = ahs + dsl + (4-dsl%4)%4
			c.dropping = c.Drop != nil && c.Drop(c.hdr)
			if c.OnPDU != nil {
				c.OnPDU(c.hdr, c.dropping)
			}
			if !c.dropping {
				out = append(out, c.hdr...)
			}
			c.hdr = c.hdr[:0]
			continue
		}
		n := min(c.rest, len(p))
		if !c.dropping {
			out = append(out, p[:n]...)
		}
		c.rest, p = c.rest-n, p[n:]
	}
	if len(out) > 0 {
		if _, err := c.Conn.Write(out); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}

// Hold stops the initiator's reads until the returned release is called
// (or max has passed, so that a test that fails never hangs; or the
// connection is closed). A read already waiting for data when Hold is
// called still returns what the peer sends first: one read's worth. Hold
// and release are safe to call from any goroutine; release more than once
// is a no-op.
func (c *PDUConn) Hold(max time.Duration) (release func()) {
	g := make(chan struct{})
	c.gate.Store(&g)
	var once sync.Once
	open := func() {
		once.Do(func() {
			c.gate.CompareAndSwap(&g, nil)
			close(g)
		})
	}
	t := time.AfterFunc(max, open)
	return func() {
		t.Stop()
		open()
	}
}

// Read waits while the connection is held, then reads.
func (c *PDUConn) Read(b []byte) (int, error) {
	if g := c.gate.Load(); g != nil {
		select {
		case <-*g:
		case <-c.closed:
			return 0, net.ErrClosed
		}
	}
	return c.Conn.Read(b)
}

// Close releases a held read and closes the connection.
func (c *PDUConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// Opcode is the opcode of a BHS that OnPDU or Drop gets.
func Opcode(bhs []byte) pdu.Opcode { return pdu.Opcode(bhs[0] & 0x3f) }

// LogoutReason is the reason code of a Logout Request's BHS.
func LogoutReason(bhs []byte) pdu.LogoutReason { return pdu.LogoutReason(bhs[1] & 0x7f) }
