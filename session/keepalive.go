package session

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

// The keepalive sends a NOP-Out when the connection has been idle for
// NOPInterval, failing it if no NOP-In comes in NOPTimeout. It also watches
// the writes: one that has not ended for NOPTimeout means the target stopped
// reading (a zero window; it may still send, pings included), and fails the
// connection, which ends the write. It never writes itself (post), so that
// such a write cannot hold it.
//
// It holds no goroutine: each check runs on a timer (time.AfterFunc), every
// min(NOPTimeout, NOPInterval)/2, and sets the timer again as it ends, so
// that checks never overlap; an idle connection costs a timer, not a parked
// goroutine and its stack. Target pings are answered by the reader as they
// come (answerPing), through post, so it does not write either.

// keepalive is the state of a connection's keepalive checks. Only the check
// running (one at a time: the timer is set again at its end) touches watch,
// pending and pendingSince; mu guards timer and stopped.
type keepalive struct {
	mu      sync.Mutex
	timer   *time.Timer
	stopped bool

	interval, stall, period time.Duration
	watch                   writeWatch
	pending                 *task
	pendingSince            time.Time
	// idleSeq is the write batch count at the previous check; releases
	// counts the checks that found no write since it and released the
	// writers' buffers (releaseIdleWriters).
	idleSeq  uint64
	releases atomic.Int64
}

// maxPingBacklog is how many PDUs may be queued behind a write in progress
// before a target ping is no longer answered: a target that pings and does
// not read must not make the queue grow without bound until the keepalive's
// watch fails the connection.
const maxPingBacklog = 16

// startKeepalive sets the keepalive's first check.
func (c *Conn) startKeepalive() {
	ka := &c.ka
	ka.interval = c.s.cfg.nopInterval()
	ka.stall = c.s.cfg.nopTimeout()
	ka.period = ka.stall / 2
	if ka.interval > 0 {
		ka.period = min(ka.period, ka.interval/2)
	}
	ka.mu.Lock()
	if !ka.stopped {
		ka.timer = time.AfterFunc(ka.period, c.keepaliveCheck)
	}
	ka.mu.Unlock()
}

// stopKeepalive ends the checks: none starts after it returns, and one
// running does not set the timer again.
func (c *Conn) stopKeepalive() {
	ka := &c.ka
	ka.mu.Lock()
	ka.stopped = true
	if ka.timer != nil {
		ka.timer.Stop()
	}
	ka.mu.Unlock()
}

// keepaliveCheck is one check of the keepalive, on its timer. It counts in
// the connection's goroutines (wg) while it runs, so that Close waits for
// it; it does not run once the connection has ended.
func (c *Conn) keepaliveCheck() {
	c.mu.Lock()
	if c.state().ended() {
		c.mu.Unlock()
		return
	}
	c.wg.Add(1)
	c.mu.Unlock()
	defer c.wg.Done()
	if !c.keepaliveStep(time.Now()) {
		return
	}
	ka := &c.ka
	ka.mu.Lock()
	if !ka.stopped {
		ka.timer.Reset(ka.period)
	}
	ka.mu.Unlock()
}

// keepaliveStep is what a check does at now; false once it failed the
// connection (or could not post), which ends the checks.
func (c *Conn) keepaliveStep(now time.Time) bool {
	ka := &c.ka
	if ka.watch.stalled(c, now, ka.stall) {
		c.log.Debug("a write took no data for NOPTimeout: the target stopped reading")
		c.fail(ErrWriteStalled)
		return false
	}
	c.releaseIdleWriters()
	if ka.interval <= 0 {
		return true
	}
	if ka.pending != nil {
		select {
		case <-ka.pending.done:
			ka.pending = nil
		default:
			// Any PDU since the NOP-Out shows the target alive; the
			// deadline runs from the last sign of life.
			since := max(ka.pendingSince.UnixNano(), c.lastRecv.Load())
			if time.Duration(now.UnixNano()-since) > ka.stall {
				c.log.Debug("NOP-Out unanswered: target is dead")
				c.fail(ErrDeadPeer)
				return false
			}
			return true
		}
	}
	if time.Duration(now.UnixNano()-c.lastRecv.Load()) < ka.interval {
		return true
	}
	t := c.s.newTask(taskNOP)
	if err := c.register(t, false); err != nil {
		return true
	}
	out := &pdu.NOPOut{Immediate: true, ITT: t.itt, TTT: pdu.ReservedTag, CmdSN: c.s.currentCmdSN(), ExpStatSN: c.expStatSN.Load()}
	t.setRequest(out.CmdSN)
	if err := c.post(out, nil); err != nil {
		return false
	}
	ka.pending, ka.pendingSince = t, now
	return true
}

// releaseIdleWriters drops the buffers of the connection's pdu.Writers when
// nothing was written since the previous check (a whole check period) and
// nothing is queued: a connection that did I/O and went idle should not keep
// them (1 KiB of arena each); the next write allocates them again.
func (c *Conn) releaseIdleWriters() {
	ka := &c.ka
	c.wmu.Lock()
	defer c.wmu.Unlock()
	seq := c.wseq
	idle := seq == ka.idleSeq
	ka.idleSeq = seq
	if !idle || c.flushing || c.w.Buffered() > 0 {
		return
	}
	c.w.Release()
	if c.wspare != nil {
		c.wspare.Release()
	}
	ka.releases.Add(1)
}

// answerPing answers a target ping (a NOP-In with a TTT) with a NOP-Out
// queued for the next write (post): the reader calls it and does not wait
// for a write. A ping is dropped when a write in progress has more than
// maxPingBacklog PDUs queued behind it.
func (c *Conn) answerPing(p nopPing) {
	c.wmu.Lock()
	backlog := c.flushing && c.w.Buffered() > maxPingBacklog
	c.wmu.Unlock()
	if backlog {
		c.log.Debug("dropping a NOP-In ping: a write is stalled with answers queued")
		return
	}
	out := &pdu.NOPOut{Immediate: true, LUN: p.lun, ITT: pdu.ReservedTag, TTT: p.ttt,
		CmdSN: c.s.currentCmdSN(), ExpStatSN: c.expStatSN.Load()}
	c.post(out, p.data)
}

// writeWatch is the keepalive's view of the connection's writes: the same
// batch still being written at checks stall apart means no write ended in
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
