package session

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/goiscsi/iscsi/pdu"
)

// The write side of a connection: PDUs are queued under wmu and go out in
// group commits (flushLocked); a write that does not end is bounded by its
// caller's context (watchWrite, Conn.cancel) or the keepalive's watch.

// send writes one PDU under the write lock.
func (c *Conn) send(p pdu.PDU, data []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.sendLocked(p, data)
}

// watchWrite bounds a write of a request op whose caller waits with ctx:
// if ctx ends before the returned stop is called (the target stopped
// reading and the write does not end), the connection is failed, which
// ends the write.
func (c *Conn) watchWrite(ctx context.Context, op pdu.Opcode) (stop func()) {
	if ctx.Done() == nil {
		return func() {}
	}
	var done atomic.Bool
	unwatch := context.AfterFunc(ctx, func() {
		if !done.Load() {
			c.fail(fmt.Errorf("iscsi: %s not written before its context ended (the target does not read): %w: %w", op, ErrConnReset, ctx.Err()))
		}
	})
	return func() {
		done.Store(true)
		unwatch()
	}
}

func (c *Conn) sendLocked(p pdu.PDU, data []byte) error {
	if err := c.w.Append(p, nil, data); err != nil {
		return err
	}
	if err := c.flushLocked(len(data) > 0); err != nil {
		c.fail(c.writeErr(err))
		return c.Err()
	}
	c.ensureReader()
	return nil
}

// flushLocked writes the queued PDUs; the caller holds wmu, which is
// released during the write. When another goroutine is writing, it writes
// the caller's PDUs after its own and flushLocked returns at once, unless
// wait is set because the PDUs point into the caller's memory: then it
// returns once they are written (or dropped by a write that failed, which
// fails the connection). Commands ready together thus go out in one
// vectored write, and none parks on wmu for a write in progress.
func (c *Conn) flushLocked(wait bool) error {
	if c.flushing {
		if !wait {
			return nil
		}
		// The caller's PDUs go out with the flusher's next batch: wait for
		// that batch, not for the flusher to stop, which under a steady
		// stream of commands it may not do for a long time (a canceled
		// write waiting so lost its connection: writeCancelGrace).
		mine := c.wseq + 1
		for c.flushing && c.wdoneSeq < mine {
			c.wdone.Wait()
		}
		if c.wdoneSeq >= mine || c.w.Buffered() == 0 {
			return nil
		}
	}
	c.flushing = true
	return c.flushLoop()
}

// flushLoop writes what is queued until nothing is, with wmu released
// during each write, then clears flushing. The caller holds wmu and has set
// flushing. What a write of the reader's could not send (connWriter.rest)
// goes first.
// batchWritten records that batch seq has left (or, written by the reader
// without waiting, been copied): its PDUs no longer point into their
// writers' memory. It wakes the writers waiting for it. The caller holds
// wmu.
func (c *Conn) batchWritten(seq uint64) {
	c.wdoneSeq = seq
	c.wdone.Broadcast()
}

func (c *Conn) flushLoop() error {
	var err error
	if cw := c.as.cw; cw != nil && len(cw.rest) > 0 {
		c.wseq++
		c.wmu.Unlock()
		err = cw.writeRest()
		c.wmu.Lock()
	}
	for err == nil && c.w.Buffered() > 0 {
		if c.wspare == nil {
			c.wspare = c.newShimWriter()
		}
		batch := c.w
		c.w, c.wspare = c.wspare, batch
		c.wseq++
		seq := c.wseq
		c.wmu.Unlock()
		err = batch.Flush()
		c.wmu.Lock()
		if err == nil {
			c.batchWritten(seq)
		}
		if err == nil && !c.isShim(c.wspare) {
			// The writer login made writes straight to the socket: the
			// reader's writes that do not wait need the connection's own.
			c.wspare = c.newShimWriter()
		}
	}
	if err != nil {
		c.w.Discard()
	}
	c.flushing = false
	c.wdone.Broadcast()
	return err
}

// writeErr names a failed write: the connection is gone, and the commands on
// it end as after a reset (their outcome unknown), not with the bare
// socket error.
func (c *Conn) writeErr(err error) error {
	select {
	case <-c.closing:
		return ErrClosed
	default:
	}
	return fmt.Errorf("iscsi: write on connection %d: %w: %w", c.cid, ErrConnReset, err)
}

// post queues a PDU of the keepalive's and returns without waiting for a
// write: a write in progress takes it with its next batch; with none, a
// goroutine of the connection writes it.
func (c *Conn) post(p pdu.PDU, data []byte) error {
	c.wmu.Lock()
	err := c.w.Append(p, nil, data)
	busy := c.flushing
	c.wmu.Unlock()
	if err != nil || busy {
		return err
	}
	// The goroutine is counted under c.mu, where fail marks the connection
	// ended before Close waits for the count: none starts after that.
	c.mu.Lock()
	if c.state().ended() {
		c.mu.Unlock()
		return c.closedErr()
	}
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		c.wmu.Lock()
		err := c.flushLocked(false)
		c.wmu.Unlock()
		if err != nil {
			c.fail(c.writeErr(err))
			return
		}
		c.ensureReader()
	}()
	return nil
}
