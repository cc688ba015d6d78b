package session

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/goiscsi/iscsi/pdu"
	"go.uber.org/zap"
)

// Session is one logged-in iSCSI session: one or more connections to a
// target, sharing the CmdSN window.
type Session struct {
	cfg    Config
	log    *zap.Logger
	isid   [6]byte
	tsih   uint16
	params Params
	// portal is where the session's connections go (after any redirect).
	portal string

	mu       sync.Mutex
	cmdSN    uint32
	expCmdSN uint32
	maxCmdSN uint32
	// window is closed and replaced whenever MaxCmdSN moves or the session
	// ends, waking commands that wait for room; only once one has been
	// handed to a waiter (windowWaited), so that a MaxCmdSN moving with
	// every response costs no channel while the window is open.
	window       chan struct{}
	windowWaited bool
	conns        []*Conn
	// all are every connection ever started, for Close to wait for.
	all       []*Conn
	nextCID   uint16
	state     SessionState  // state.go
	logoutRes LogoutResult  // the logout that ended the session
	ended     chan struct{} // closed when the last connection has ended
	// challenges are the CHAP challenges this session sent, on any
	// connection, so that a target reflecting one is refused.
	challenges [][]byte
	// chapAvoid is a CHAP algorithm the target got wrong (tgtd's 7).
	chapAvoid int

	// rec is the recovery's bookkeeping (recovery.go); events are the
	// state changes OnState has yet to get, delivering is set while one
	// goroutine delivers them (flushEvents).
	rec        recovery
	events     []StateEvent
	delivering bool

	// crec is the ERL 2 connection recovery's bookkeeping
	// (connrecovery.go), under mu; erl2 is set once ErrorRecoveryLevel 2
	// is in force.
	crec connRecoveries
	erl2 atomic.Bool

	itt atomic.Uint32
	rr  atomic.Uint32
	wg  sync.WaitGroup // goroutines the session itself starts
}

// Login opens a session: it connects to cfg.Portal, logs in (following
// redirects) and returns the session in full feature phase.
func Login(ctx context.Context, cfg Config) (*Session, error) {
	if cfg.InitiatorName == "" {
		return nil, errors.New("iscsi: Config.InitiatorName is required")
	}
	if cfg.CHAP != nil {
		if err := cfg.CHAP.check(); err != nil {
			return nil, err
		}
	}
	s := &Session{cfg: cfg, isid: cfg.ISID, portal: cfg.Portal, window: make(chan struct{}), ended: make(chan struct{})}
	s.log = cfg.Logger
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.isid == ([6]byte{}) {
		s.isid = RandomISID()
	}
	s.log = s.log.With(zap.String("target", cfg.TargetName), zap.String("isid", fmt.Sprintf("%x", s.isid)))
	var b [4]byte
	rand.Read(b[:])
	s.cmdSN = uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	s.expCmdSN, s.maxCmdSN = s.cmdSN, s.cmdSN
	c, err := s.connect(ctx, 0, true)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.conns = append(s.conns, c)
	s.all = append(s.all, c)
	s.nextCID = 1
	s.rec.want = 1
	s.rec.changed = make(chan struct{})
	s.mu.Unlock()
	c.start()
	s.log.Debug("session logged in", zap.Uint16("tsih", s.tsih))
	return s, nil
}

// RandomISID returns an ISID of the random format (T=10b, RFC 7143 §11.12.5).
func RandomISID() [6]byte {
	var id [6]byte
	rand.Read(id[:])
	id[0] = 0x80
	return id
}

// AddConnection logs a new connection in to the session (MC/S) and returns it.
func (s *Session) AddConnection(ctx context.Context) (*Conn, error) {
	s.mu.Lock()
	if s.state != sessionUp {
		st := s.state
		s.mu.Unlock()
		if st == sessionRecovering || st == sessionFailed || st == sessionLost {
			return nil, fmt.Errorf("iscsi: session is %s: %w", st, ErrClosed)
		}
		return nil, ErrClosed
	}
	if len(s.conns) >= s.params.MaxConnections {
		s.mu.Unlock()
		return nil, fmt.Errorf("iscsi: session allows %d connections (MaxConnections)", s.params.MaxConnections)
	}
	cid := s.nextCID
	s.nextCID++
	s.mu.Unlock()
	c, err := s.connect(ctx, cid, false)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.state != sessionUp {
		s.mu.Unlock()
		c.Close()
		return nil, ErrClosed
	}
	s.conns = append(s.conns, c)
	s.rec.want = max(s.rec.want, len(s.conns))
	s.notifyLocked()
	// Close waits for the connections whose goroutines may still run;
	// forget those that are over, or a session that replaces its
	// connections for months would keep them all.
	s.all = append(slices.DeleteFunc(s.all, connExited), c)
	c.start() // under mu, as in reinstated
	s.mu.Unlock()
	return c, nil
}

// TSIH returns the target's session handle; a reinstatement (recovery)
// changes it.
func (s *Session) TSIH() uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tsih
}

// ISID returns the initiator's session ID.
func (s *Session) ISID() [6]byte { return s.isid }

// TargetName returns the name of the session's target ("" for discovery).
func (s *Session) TargetName() string { return s.cfg.TargetName }

// Portal returns the address the session's connections go to.
func (s *Session) Portal() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.portal
}

// Params returns the negotiated parameters.
func (s *Session) Params() Params {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.params
}

// Conns returns the session's connections that are still up.
func (s *Session) Conns() []*Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Conn(nil), s.conns...)
}

// Ended is closed when the session has no connection left and will get
// none by itself: lost, failed (a recovery that gave up), logged out or
// closed. A session that recovers (SessionRecovering) has not ended.
func (s *Session) Ended() <-chan struct{} { return s.ended }

// Close closes every connection at once, without logging out, stops a
// recovery, and waits for every goroutine of the session, those of
// connections that ended before too. Commands still running fail. Close
// must not be called from Config.OnAsync, which runs on a connection's
// reader, nor from Config.OnState.
func (s *Session) Close() error {
	s.mu.Lock()
	s.moveTo(sessionClosed)
	s.stopConnRecoveryLocked()
	s.rec.off = true
	if r := s.rec.run; r != nil {
		r.cancel()
	}
	if len(s.conns) == 0 {
		s.endLocked()
	}
	conns := append([]*Conn(nil), s.all...)
	s.mu.Unlock()
	s.flushEvents()
	for _, c := range conns {
		c.Close()
	}
	s.wg.Wait()
	return nil
}

// connEnded removes a connection that has ended from the session. The end
// of the last connection without a logout loses the session, or, with
// Config.Recovery, starts its recovery; with recovery, the unexpected loss
// of any connection does (ERL 0 recovers the whole session: its other
// connections are closed, and their commands go again after the
// reinstatement), but for one the target said it drops (async event 2).
func (s *Session) connEnded(c *Conn) {
	c.mu.Lock()
	err, own := c.err, c.ownLogout
	c.mu.Unlock()
	s.mu.Lock()
	removed := false
	for i, x := range s.conns {
		if x == c {
			// Copy: pickConn reads the old slice without the lock.
			s.conns = slices.Delete(slices.Clone(s.conns), i, i+1)
			if own || errors.Is(err, ErrClosed) || errors.Is(err, ErrLoggedOut) {
				// Ended on purpose: a reinstatement does not bring it back.
				s.rec.want = max(1, s.rec.want-1)
			}
			s.notifyLocked()
			removed = true
			break
		}
	}
	var others []*Conn
	switch {
	case removed && s.startConnRecoveryLocked(c, err):
		// ERL 2: the session stays up; c's commands move to another
		// connection (connrecovery.go).
	case removed && s.recoverable(c, err, own) && (len(s.conns) == 0 || !errors.Is(err, ErrTargetDropped)):
		// ERL 0: the session reinstates itself (recovery.go); it has
		// not ended. Commands waiting for room in the window go and
		// wait for the recovery instead. A connection lost while
		// others are up takes them along: at ERL 0 the old tasks are
		// only surely gone after a reinstatement. Not one the target
		// said it drops (async event 2): the session goes on without it.
		others = slices.Clone(s.conns)
		s.startRecoveryLocked(err)
		close(s.window)
		s.window = make(chan struct{})
	case len(s.conns) == 0 && s.state != sessionRecovering:
		select {
		case <-s.ended:
		default:
			switch {
			case c.state() == connLoggedOut && s.state != sessionLoggedOut:
				// The last connection logged out (reason 1 on each, say):
				// the session is gone at the target too. Say so before
				// Ended does.
				s.moveTo(sessionLoggedOut)
				s.logoutRes = LogoutResult{CID: c.cid, Reason: pdu.LogoutCloseConnection, Responded: true}
			case s.state == sessionUp:
				s.moveTo(sessionLost)
			}
			close(s.ended)
			close(s.window)
			s.window = make(chan struct{})
		}
	}
	s.mu.Unlock()
	s.flushEvents()
	for _, o := range others {
		o.fail(fmt.Errorf("iscsi: connection %d of the session was lost (%v); ERL 0 recovers the whole session: %w", c.cid, err, ErrConnReset))
	}
}

func (s *Session) newTask(kind taskKind) *task {
	itt := s.itt.Add(1)
	if itt == pdu.ReservedTag {
		itt = s.itt.Add(1)
	}
	return &task{itt: itt, kind: kind, done: make(chan struct{})}
}

// updateWindow applies a target's ExpCmdSN and MaxCmdSN (RFC 7143 §4.2.2.1):
// an update with MaxCmdSN < ExpCmdSN-1 is ignored, and neither moves back.
func (s *Session) updateWindow(exp, maxSN uint32) {
	if pdu.SerialLess(maxSN, exp-1) {
		return
	}
	s.mu.Lock()
	moved := false
	if pdu.SerialLess(s.expCmdSN, exp) {
		s.expCmdSN = exp
	}
	if pdu.SerialLess(s.maxCmdSN, maxSN) {
		s.maxCmdSN = maxSN
		moved = true
	}
	if moved && s.windowWaited {
		close(s.window)
		s.window, s.windowWaited = make(chan struct{}), false
	}
	s.mu.Unlock()
}

// currentCmdSN is the CmdSN an immediate PDU carries: the next one, not
// advanced.
func (s *Session) currentCmdSN() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmdSN
}

// takeCmdSN assigns the next CmdSN if the window has room. Otherwise it
// returns a channel that is closed when the window may have moved.
func (s *Session) takeCmdSN() (uint32, <-chan struct{}, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pdu.SerialLessEq(s.cmdSN, s.maxCmdSN) {
		sn := s.cmdSN
		s.cmdSN++
		return sn, nil, true
	}
	s.windowWaited = true
	return 0, s.window, false
}

// pickConn returns an active connection, spreading commands over them.
func (s *Session) pickConn() (*Conn, error) {
	s.mu.Lock()
	conns := s.conns
	n := len(conns)
	loggedOut := s.state == sessionLoggedOut
	s.mu.Unlock()
	if n == 0 {
		if loggedOut {
			return nil, errLoggingOut
		}
		return nil, ErrClosed
	}
	start := int(s.rr.Add(1))
	for i := 0; i < n; i++ {
		c := conns[(start+i)%n]
		if c.Active() {
			return c, nil
		}
	}
	return nil, errLoggingOut
}
