package session

import (
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

// keepalive answers target pings and sends a NOP-Out when the connection has
// been idle for NOPInterval, failing it if no NOP-In comes in NOPTimeout. It
// also watches the writes: one that has not ended for NOPTimeout means the
// target stopped reading (a zero window; it may still send, pings
// included), and fails the connection, which ends the write. It never
// writes itself (post), so that such a write cannot hold it.
func (c *Conn) keepalive() {
	defer c.goroutineDone()
	interval := c.s.cfg.nopInterval()
	stall := c.s.cfg.nopTimeout()
	period := stall / 2
	if interval > 0 {
		period = min(period, interval/2)
	}
	ticker := time.NewTicker(period)
	defer ticker.Stop()
	var watch writeWatch
	var pending *task
	var pendingSince time.Time
	for {
		select {
		case <-c.closing:
			return
		case p := <-c.nopReplies:
			out := &pdu.NOPOut{Immediate: true, LUN: p.lun, ITT: pdu.ReservedTag, TTT: p.ttt,
				CmdSN: c.s.currentCmdSN(), ExpStatSN: c.expStatSN.Load()}
			if err := c.post(out, p.data); err != nil {
				return
			}
		case now := <-ticker.C:
			if watch.stalled(c, now, stall) {
				c.log.Debug("a write took no data for NOPTimeout: the target stopped reading")
				c.fail(ErrWriteStalled)
				return
			}
			if interval <= 0 {
				continue
			}
			if pending != nil {
				select {
				case <-pending.done:
					pending = nil
				default:
					// Any PDU since the NOP-Out shows the target alive;
					// the deadline runs from the last sign of life.
					since := max(pendingSince.UnixNano(), c.lastRecv.Load())
					if time.Duration(now.UnixNano()-since) > stall {
						c.log.Debug("NOP-Out unanswered: target is dead")
						c.fail(ErrDeadPeer)
						return
					}
					continue
				}
			}
			if time.Duration(now.UnixNano()-c.lastRecv.Load()) < interval {
				continue
			}
			t := c.s.newTask(taskNOP)
			if err := c.register(t, false); err != nil {
				continue
			}
			out := &pdu.NOPOut{Immediate: true, ITT: t.itt, TTT: pdu.ReservedTag, CmdSN: c.s.currentCmdSN(), ExpStatSN: c.expStatSN.Load()}
			t.setRequest(out.CmdSN)
			if err := c.post(out, nil); err != nil {
				return
			}
			pending, pendingSince = t, now
		}
	}
}

// writeWatch is the keepalive's view of the connection's writes: the same
// batch still being written at ticks stall apart means no write ended in
// that time.
type writeWatch struct {
	seq   uint64
	since time.Time
}

// stalled reports a write in progress, the same one, since stall before now.
func (w *writeWatch) stalled(c *Conn, now time.Time, stall time.Duration) bool {
	c.wmu.Lock()
	flushing, seq := c.flushing, c.wseq
	c.wmu.Unlock()
	if !flushing || seq != w.seq {
		w.seq, w.since = seq, now
		return false
	}
	return now.Sub(w.since) >= stall
}
