package iscsitest

import (
	"bufio"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/goiscsi/iscsi/internal/sockio"
	"github.com/goiscsi/iscsi/pdu"
)

// drainTimeout bounds how long a connection the target has closed (FIN)
// waits for the initiator to close its side.
const drainTimeout = 5 * time.Second

// errConnClosed is returned by sends on a connection whose sending side is
// closed.
var errConnClosed = errors.New("iscsitest: connection closed")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Conn is one connection as the target serves it. Hooks and tests use it to
// send arbitrary PDUs and to close or reset the connection.
type Conn struct {
	t   *Target
	nc  net.Conn
	br  *bufio.Reader
	r   *pdu.Reader
	in  inPDU
	buf []byte

	// Set by the login before the connection is published in a session.
	cid        uint16
	isid       [6]byte
	hdig, ddig bool
	maxSend    int // the initiator's MaxRecvDataSegmentLength
	sess       atomic.Pointer[session]

	outMu      sync.Mutex
	outCond    *sync.Cond
	outQ       []outItem
	stopping   bool
	wclosed    bool // no more writes: FIN sent, reset or a write failed
	statSN     uint32
	loginExp   uint32   // ExpCmdSN during a leading login
	loginSess  *session // the session a non-leading login joins
	writerDone chan struct{}

	draining  atomic.Bool
	loggedOut atomic.Bool
	done      chan struct{} // closed when the reader has ended

	// kept is what the connection sent that a SNACK may ask for again,
	// at ErrorRecoveryLevel 1; guarded by outMu (snack.go).
	kept retained

	nopMu      sync.Mutex
	nopTTT     uint32
	nopPending bool
	nopSent    time.Time
}

// inPDU is a received PDU; ahs and data are valid until the next read.
type inPDU struct {
	h    pdu.BHS
	ahs  []byte
	data []byte
	// badDigest reports a data segment whose digest did not match.
	badDigest bool
}

type itemKind uint8

const (
	itemPDU itemKind = iota
	itemDigests
	itemFIN
	itemSync // nothing to write: done reports what was queued before is written
)

type outItem struct {
	kind       itemKind
	h          pdu.BHS
	ahs, data  []byte
	hdig, ddig bool
	done       chan error
	// release, when set, is released once the item is written or dropped.
	release *lunView
	// resend marks a PDU sent again for a SNACK (snack.go).
	resend bool
}

func newConn(t *Target, nc net.Conn) *Conn {
	c := &Conn{
		t:          t,
		nc:         nc,
		br:         bufio.NewReaderSize(nc, 64<<10),
		statSN:     t.Config.InitialStatSN,
		maxSend:    pdu.DefaultMaxRecvDataSegmentLength,
		writerDone: make(chan struct{}),
		done:       make(chan struct{}),
	}
	c.outCond = sync.NewCond(&c.outMu)
	// The data digest is checked here, not by the Reader: a Reader fails for
	// good on a data digest error, which RFC 7143 §7.8 makes recoverable.
	c.r = pdu.NewReader(c.br, pdu.ReaderConfig{From: pdu.FromInitiator})
	return c
}

// CID returns the connection's CID (0 before the login says it).
func (c *Conn) CID() uint16 { return c.cid }

// TSIH returns the TSIH of the connection's session, 0 before full feature phase.
func (c *Conn) TSIH() uint16 {
	if s := c.sess.Load(); s != nil {
		return s.tsih
	}
	return 0
}

// RemoteAddr returns the initiator's address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// Send writes p with data as its data segment, filling in the StatSN,
// ExpCmdSN and MaxCmdSN of p as the target does for its own PDUs (StatSN
// advances when p carries status). It returns once p is written.
func (c *Conn) Send(p pdu.PDU, data []byte) error {
	return c.enqueue(p, nil, data, true)
}

// SendRaw writes a header exactly as given, whatever its fields and length
// fields say, followed by ahs and data (then padding, and digests when
// negotiated), to build malformed PDUs. It returns once they are written.
func (c *Conn) SendRaw(h *pdu.BHS, ahs, data []byte) error {
	done := make(chan error, 1)
	it := outItem{kind: itemPDU, h: *h, ahs: ahs, data: data, done: done}
	if err := c.push(it); err != nil {
		return err
	}
	c.t.count(func(s *Stats) { s.Sent[h.Opcode()]++ })
	return c.wait(done)
}

// Close closes the connection gracefully: PDUs already queued are written,
// then a FIN; the target discards whatever the initiator still sends until
// it closes its side. The connection leaves its session at once.
func (c *Conn) Close() error {
	c.finish()
	if s := c.sess.Load(); s != nil {
		s.connGone(c)
	}
	return nil
}

// flushed waits until what is queued is written.
func (c *Conn) flushed() {
	done := make(chan error, 1)
	if c.push(outItem{kind: itemSync, done: done}) == nil {
		c.wait(done)
	}
}

// Reset closes the connection abruptly: an RST on TCP (SO_LINGER 0), a
// plain close on a pipe. Queued PDUs are not written.
func (c *Conn) Reset() error {
	c.outMu.Lock()
	c.wclosed = true
	c.outMu.Unlock()
	if tc, ok := c.nc.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	return c.nc.Close()
}

// abort closes the connection at once, for Target.Close.
func (c *Conn) abort() {
	c.outMu.Lock()
	c.wclosed = true
	c.outMu.Unlock()
	c.nc.Close()
}

// finish queues a FIN after what is queued and makes the reader discard
// input until the initiator closes.
func (c *Conn) finish() {
	c.draining.Store(true)
	c.outMu.Lock()
	if !c.wclosed {
		c.outQ = append(c.outQ, outItem{kind: itemFIN})
		c.outCond.Signal()
	}
	c.outMu.Unlock()
	c.nc.SetReadDeadline(time.Now().Add(drainTimeout))
}

// enqueue queues p for the writer, filling its sequence numbers; with wait
// it returns once p is written.
func (c *Conn) enqueue(p pdu.PDU, ahs, data []byte, wait bool) error {
	return c.enqueueItem(p, ahs, data, wait, nil)
}

// enqueueData queues p with data, then releases rel (which may be nil) once
// p is written or dropped.
func (c *Conn) enqueueData(p pdu.PDU, data []byte, rel *lunView) {
	c.enqueueItem(p, nil, data, false, rel)
}

func (c *Conn) enqueueItem(p pdu.PDU, ahs, data []byte, wait bool, rel *lunView) error {
	var done chan error
	if wait {
		done = make(chan error, 1)
	}
	c.outMu.Lock()
	if c.wclosed {
		c.outMu.Unlock()
		rel.release()
		return errConnClosed
	}
	c.fillLocked(p)
	it := outItem{kind: itemPDU, ahs: ahs, data: data, done: done, release: rel}
	p.MarshalBHS(&it.h)
	it.h.SetLengths(len(ahs), len(data))
	c.retainLocked(p, &it)
	c.outQ = append(c.outQ, it)
	c.outCond.Signal()
	c.outMu.Unlock()
	c.t.count(func(s *Stats) { s.Sent[p.Opcode()]++ })
	if !wait {
		return nil
	}
	return c.wait(done)
}

func (c *Conn) push(it outItem) error {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	if c.wclosed {
		return errConnClosed
	}
	c.outQ = append(c.outQ, it)
	c.outCond.Signal()
	return nil
}

func (c *Conn) wait(done chan error) error {
	select {
	case err := <-done:
		return err
	case <-c.writerDone:
		select {
		case err := <-done:
			return err
		default:
			return errConnClosed
		}
	}
}

// setDigests queues the switch to the negotiated digests: PDUs queued after
// it carry them.
func (c *Conn) setDigests(h, d bool) {
	c.push(outItem{kind: itemDigests, hdig: h, ddig: d})
}

// window returns ExpCmdSN and MaxCmdSN as the connection reports them.
func (c *Conn) windowLocked() (uint32, uint32) {
	if s := c.sess.Load(); s != nil {
		return s.window()
	}
	if c.loginSess != nil {
		return c.loginSess.window()
	}
	return c.loginExp, c.loginExp + uint32(c.t.Config.QueueDepth) - 1
}

// fillLocked sets the sequence numbers of a target PDU; StatSN advances for
// every PDU that carries status (RFC 7143 §4.2.2.2), which includes Reject
// and Asynchronous Message but not R2T, a NOP-In ping or a Data-In without S.
func (c *Conn) fillLocked(p pdu.PDU) {
	sn, status := pdu.TargetSeq(p)
	if sn == nil {
		return
	}
	sn.StatSN = c.statSN
	if status {
		c.statSN++
	}
	sn.ExpCmdSN, sn.MaxCmdSN = c.windowLocked()
}

// writeLoop writes queued items, batching what is ready into one writev.
func (c *Conn) writeLoop() {
	defer c.t.wg.Done()
	defer close(c.writerDone)
	w := pdu.NewWriter(sockio.WriterOf(c.nc))
	var waiters []chan error
	var releases []*lunView
	var hdig, ddig bool // the digests the writer is set to
	flush := func() error {
		c.nc.SetWriteDeadline(time.Now().Add(c.t.Config.WriteTimeout))
		err := w.Flush()
		for _, d := range waiters {
			d <- err
		}
		waiters = waiters[:0]
		for _, r := range releases {
			r.release()
		}
		clear(releases)
		releases = releases[:0]
		return err
	}
	for {
		c.outMu.Lock()
		for len(c.outQ) == 0 && !c.stopping {
			c.outCond.Wait()
		}
		items := c.outQ
		c.outQ = nil
		closed := c.wclosed
		c.outMu.Unlock()
		if len(items) == 0 {
			return
		}
		var err error
		for _, it := range items {
			if closed || err != nil {
				if it.done != nil {
					it.done <- errConnClosed
				}
				it.release.release()
				continue
			}
			switch it.kind {
			case itemPDU:
				c.appendOut(w, &it, hdig, ddig)
				if it.done != nil {
					waiters = append(waiters, it.done)
				}
				if it.release != nil {
					releases = append(releases, it.release)
				}
			case itemSync:
				waiters = append(waiters, it.done)
			case itemDigests:
				if err = flush(); err == nil {
					w.SetDigests(it.hdig, it.ddig)
					hdig, ddig = it.hdig, it.ddig
				}
			case itemFIN:
				err = flush()
				closed = true
				c.outMu.Lock()
				c.wclosed = true
				c.outMu.Unlock()
				if tc, ok := c.nc.(*net.TCPConn); ok && err == nil {
					tc.CloseWrite()
				} else {
					c.nc.Close()
				}
			}
		}
		if err == nil && !closed {
			err = flush()
		}
		if err != nil {
			c.outMu.Lock()
			c.wclosed = true
			c.outMu.Unlock()
			c.nc.Close()
		}
	}
}

// reject sends a Reject carrying the header of the rejected PDU.
func (c *Conn) reject(reason pdu.RejectReason, h *pdu.BHS) {
	hdr := *h
	c.enqueue(&pdu.Reject{Reason: reason, ITT: pdu.ReservedTag}, nil, hdr[:], false)
}

// protocolError rejects a PDU and drops the connection, as a target does at
// ERL 0 for an error it cannot recover from.
func (c *Conn) protocolError(h *pdu.BHS, reason pdu.RejectReason, why string) {
	c.t.log.Debug("protocol error, dropping connection", zap.Uint16("cid", c.cid),
		zap.Stringer("opcode", h.Opcode()), zap.String("why", why))
	c.t.count(func(s *Stats) { s.ProtocolErrors++ })
	c.reject(reason, h)
	c.finish()
}

// pinger sends NOP-In pings at the configured interval and drops the
// connection when one goes unanswered.
func (c *Conn) pinger() {
	defer c.t.wg.Done()
	tick := time.NewTicker(c.t.Config.NopInInterval)
	defer tick.Stop()
	var ttt uint32 = 0x4e4f5000
	for {
		select {
		case <-c.done:
			return
		case now := <-tick.C:
			c.nopMu.Lock()
			late := c.nopPending && now.Sub(c.nopSent) > c.t.Config.NopInTimeout
			send := !c.nopPending
			if send {
				ttt++
				c.nopTTT, c.nopPending, c.nopSent = ttt, true, now
			}
			c.nopMu.Unlock()
			if late {
				c.t.log.Debug("NOP-In unanswered, dropping connection", zap.Uint16("cid", c.cid))
				c.Reset()
				return
			}
			if send {
				c.enqueue(&pdu.NOPIn{ITT: pdu.ReservedTag, TTT: ttt}, nil, nil, false)
			}
		}
	}
}

// nopAnswered records the initiator's answer to a ping.
func (c *Conn) nopAnswered(ttt uint32) bool {
	c.nopMu.Lock()
	defer c.nopMu.Unlock()
	if !c.nopPending || c.nopTTT != ttt {
		return false
	}
	c.nopPending = false
	return true
}

// String describes the connection for logs: TSIH, CID and address.
func (c *Conn) String() string {
	return fmt.Sprintf("conn(tsih=%#x cid=%d %s)", c.TSIH(), c.cid, c.nc.RemoteAddr())
}
