package iscsitest

import (
	"errors"
	"hash/crc32"
	"io"
	"time"

	"go.uber.org/zap"

	"github.com/goiscsi/iscsi/pdu"
)

// readLoop runs the login, then full feature phase, until the connection ends.
func (c *Conn) readLoop() {
	defer c.t.wg.Done()
	defer c.cleanup()
	c.nc.SetReadDeadline(time.Now().Add(c.t.Config.LoginTimeout))
	if !c.login() {
		if c.draining.Load() {
			c.drain()
		}
		return
	}
	if !c.draining.Load() {
		c.nc.SetReadDeadline(time.Time{})
	}
	if c.t.Config.NopInInterval > 0 {
		c.t.wg.Add(1)
		go c.pinger()
	}
	for !c.draining.Load() {
		in, err := c.readPDU()
		if c.draining.Load() {
			break
		}
		if err != nil {
			c.readFailed(err)
			break
		}
		c.received(in)
	}
	if c.draining.Load() {
		c.drain()
	}
}

// received handles one PDU of full feature phase.
func (c *Conn) received(in *inPDU) {
	op := in.h.Opcode()
	c.t.count(func(s *Stats) { s.Received[op]++ })
	p, err := pdu.Decode(&in.h)
	if err != nil {
		c.protocolError(&in.h, pdu.RejectInvalidPDUField, err.Error())
		return
	}
	if c.runHook(in, p) {
		return
	}
	s := c.sess.Load()
	if in.badDigest && op != pdu.OpSCSIDataOut {
		c.t.count(func(s *Stats) { s.DigestErrors++ })
		c.reject(pdu.RejectDataDigestError, &in.h)
		return
	}
	s.submit(c, in, p, nil)
}

// readFailed handles a read error, after which the connection ends.
func (c *Conn) readFailed(err error) {
	var re *readError
	if !errors.As(err, &re) {
		if err != io.EOF {
			c.t.log.Debug("connection read ended", zap.Uint16("cid", c.cid), zap.Error(err))
		}
		return
	}
	var de *pdu.DigestError
	if errors.As(re.err, &de) {
		// A bad header digest leaves nothing to trust, not even the length:
		// at ERL 0 the connection is dropped.
		c.t.count(func(s *Stats) { s.DigestErrors++; s.ProtocolErrors++ })
		c.t.log.Debug("header digest error", zap.Uint16("cid", c.cid), zap.Error(re.err))
		c.finish()
		return
	}
	var pe *pdu.ProtocolError
	if errors.As(re.err, &pe) {
		c.t.count(func(s *Stats) { s.Received[re.hdr.Opcode()]++ })
		reason := pdu.RejectProtocolError
		if pe.Field == "Opcode" && !re.hdr.Opcode().Valid() {
			reason = pdu.RejectCommandNotSupported
		}
		c.protocolError(&re.hdr, reason, pe.Error())
		return
	}
}

// readError is a failure to read a PDU whose header was received.
type readError struct {
	hdr pdu.BHS
	err error
}

func (e *readError) Error() string { return e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// readPDU reads one PDU. A data digest mismatch is not an error: it is
// reported in badDigest, since the stream is still in step.
func (c *Conn) readPDU() (*inPDU, error) {
	peek, err := c.br.Peek(pdu.BHSLen)
	if err != nil {
		if err == io.EOF && len(peek) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	in := &c.in
	copy(in.h[:], peek)
	h, err := c.r.Next()
	if err != nil {
		var pe *pdu.ProtocolError
		var de *pdu.DigestError
		if errors.As(err, &pe) || errors.As(err, &de) {
			return nil, &readError{hdr: in.h, err: err}
		}
		return nil, err
	}
	in.h = *h
	in.ahs = c.r.AHS()
	in.data = nil
	in.badDigest = false
	n := h.DataSegmentLength()
	if n == 0 {
		return in, nil
	}
	if cap(c.buf) < n {
		c.buf = make([]byte, n)
	}
	data := c.buf[:n]
	if err := c.r.ReadData(data); err != nil {
		return nil, err
	}
	in.data = data
	if c.ddig {
		var d [4]byte
		if _, err := io.ReadFull(c.br, d[:]); err != nil {
			return nil, io.ErrUnexpectedEOF
		}
		var zero [3]byte
		crc := crc32.Update(crc32.Checksum(data, castagnoli), castagnoli, zero[:-n&3])
		got := uint32(d[0]) | uint32(d[1])<<8 | uint32(d[2])<<16 | uint32(d[3])<<24
		in.badDigest = got != crc
	}
	return in, nil
}

// drain discards input until the initiator closes or the drain deadline.
func (c *Conn) drain() {
	c.nc.SetReadDeadline(time.Now().Add(drainTimeout))
	io.Copy(io.Discard, c.br)
}

// cleanup runs when the reader ends: it lets the writer flush, closes the
// connection and takes it out of its session.
func (c *Conn) cleanup() {
	c.outMu.Lock()
	c.stopping = true
	c.outCond.Signal()
	c.outMu.Unlock()
	<-c.writerDone
	c.outMu.Lock()
	c.wclosed = true
	for _, it := range c.outQ {
		it.release.release()
	}
	c.outQ = nil
	c.outMu.Unlock()
	c.nc.Close()
	close(c.done)
	if s := c.sess.Load(); s != nil {
		s.connGone(c)
	}
	c.t.forget(c)
}
