package faketarget

import (
	"net"
	"os"
	"sync"
	"time"
)

// StallConn wraps a net.Conn so that a test can make it block as a peer
// that stopped reading makes a socket block (a TCP zero window): after
// Stall, Write blocks until Unstall, Close or the write deadline; after
// StallReads, Read blocks likewise until UnstallReads, Close or the read
// deadline, and the peer's writes pile up unread. Deadlines behave as on a
// net.Conn: a blocked call returns os.ErrDeadlineExceeded once its
// deadline passes, and setting a deadline in the past wakes it.
type StallConn struct {
	net.Conn

	mu            sync.Mutex
	writes, reads bool // stalled
	closed        bool
	wdl, rdl      time.Time
	// changed is closed and replaced whenever something a blocked call
	// waits on changes.
	changed chan struct{}
	// blocked is closed when a Write blocks after Stall (for the test to
	// know the initiator is stuck), readBlocked when a Read does after
	// StallReads; each call makes a new one.
	blocked, readBlocked         chan struct{}
	blockedDone, readBlockedDone bool
}

// NewStallConn wraps c; it passes everything through until Stall or
// StallReads.
func NewStallConn(c net.Conn) *StallConn {
	return &StallConn{Conn: c, changed: make(chan struct{}), blocked: make(chan struct{}), readBlocked: make(chan struct{})}
}

// Inner returns the wrapped connection.
func (s *StallConn) Inner() net.Conn { return s.Conn }

func (s *StallConn) changedLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Stall makes every Write from now on block.
func (s *StallConn) Stall() {
	s.mu.Lock()
	s.writes = true
	s.blocked, s.blockedDone = make(chan struct{}), false
	s.changedLocked()
	s.mu.Unlock()
}

// Unstall lets writes through again.
func (s *StallConn) Unstall() {
	s.mu.Lock()
	s.writes = false
	s.changedLocked()
	s.mu.Unlock()
}

// StallReads makes every Read from now on block.
func (s *StallConn) StallReads() {
	s.mu.Lock()
	s.reads = true
	s.readBlocked, s.readBlockedDone = make(chan struct{}), false
	s.changedLocked()
	s.mu.Unlock()
}

// UnstallReads lets reads through again.
func (s *StallConn) UnstallReads() {
	s.mu.Lock()
	s.reads = false
	s.changedLocked()
	s.mu.Unlock()
}

// Blocked is closed once a Write has blocked since the last Stall.
func (s *StallConn) Blocked() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.blocked
}

// ReadBlocked is closed once a Read has blocked since the last StallReads.
func (s *StallConn) ReadBlocked() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.readBlocked
}

// wait blocks while the direction is stalled; it returns nil when the call
// may go on, or why it may not.
func (s *StallConn) wait(write bool) error {
	for {
		s.mu.Lock()
		stalled, dl := s.reads, s.rdl
		if write {
			stalled, dl = s.writes, s.wdl
		}
		switch {
		case s.closed:
			s.mu.Unlock()
			return net.ErrClosed
		case !stalled:
			s.mu.Unlock()
			return nil
		case !dl.IsZero() && !time.Now().Before(dl):
			s.mu.Unlock()
			return os.ErrDeadlineExceeded
		}
		if write && !s.blockedDone {
			s.blockedDone = true
			close(s.blocked)
		}
		if !write && !s.readBlockedDone {
			s.readBlockedDone = true
			close(s.readBlocked)
		}
		changed := s.changed
		s.mu.Unlock()
		var timeout <-chan time.Time
		if !dl.IsZero() {
			t := time.NewTimer(time.Until(dl))
			timeout = t.C
			select {
			case <-changed:
			case <-timeout:
			}
			t.Stop()
			continue
		}
		<-changed
	}
}

func opErr(op string, c net.Conn, err error) error {
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// Write writes b to the wrapped connection, first waiting out a stall.
func (s *StallConn) Write(b []byte) (int, error) {
	if err := s.wait(true); err != nil {
		return 0, opErr("write", s.Conn, err)
	}
	return s.Conn.Write(b)
}

// Read reads from the wrapped connection, first waiting out a stall.
func (s *StallConn) Read(b []byte) (int, error) {
	if err := s.wait(false); err != nil {
		return 0, opErr("read", s.Conn, err)
	}
	return s.Conn.Read(b)
}

// SetDeadline sets both deadlines, here and on the wrapped connection.
func (s *StallConn) SetDeadline(t time.Time) error {
	s.mu.Lock()
	s.wdl, s.rdl = t, t
	s.changedLocked()
	s.mu.Unlock()
	return s.Conn.SetDeadline(t)
}

// SetWriteDeadline sets the write deadline, here and on the wrapped
// connection.
func (s *StallConn) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	s.wdl = t
	s.changedLocked()
	s.mu.Unlock()
	return s.Conn.SetWriteDeadline(t)
}

// SetReadDeadline sets the read deadline, here and on the wrapped
// connection.
func (s *StallConn) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	s.rdl = t
	s.changedLocked()
	s.mu.Unlock()
	return s.Conn.SetReadDeadline(t)
}

// Close closes the wrapped connection and wakes every blocked call.
func (s *StallConn) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		s.changedLocked()
	}
	s.mu.Unlock()
	return s.Conn.Close()
}
