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
	state     sessionState  // state.go
	logoutRes LogoutResult  // the logout that ended the session
	ended     chan struct{} // closed when the last connection has ended
	// challenges are the CHAP challenges this session sent, on any
	// connection, so that a target reflecting one is refused.
	challenges [][]byte
	// chapAvoid is a CHAP algorithm the target got wrong (tgtd's 7).
	chapAvoid int

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
	s.conns = append(s.conns, c)
	s.all = append(s.all, c)
	s.nextCID = 1
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
	if s.state == sessionClosed || s.state == sessionLoggedOut {
		s.mu.Unlock()
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
	if s.state == sessionClosed || s.state == sessionLoggedOut {
		s.mu.Unlock()
		c.Close()
		return nil, ErrClosed
	}
	s.conns = append(s.conns, c)
	// Close waits for the connections whose goroutines may still run;
	// forget those that are over, or a session that replaces its
	// connections for months would keep them all.
	s.all = slices.DeleteFunc(s.all, func(o *Conn) bool {
		select {
		case <-o.exited:
			return true
		default:
			return false
		}
	})
	s.all = append(s.all, c)
	s.mu.Unlock()
	c.start()
	return c, nil
}

// TSIH returns the target's session handle.
func (s *Session) TSIH() uint16 { return s.tsih }

// ISID returns the initiator's session ID.
func (s *Session) ISID() [6]byte { return s.isid }

// TargetName returns the name of the session's target ("" for discovery).
func (s *Session) TargetName() string { return s.cfg.TargetName }

// Portal returns the address the session's connections go to.
func (s *Session) Portal() string { return s.portal }

// Params returns the negotiated parameters.
func (s *Session) Params() Params { return s.params }

// Conns returns the session's connections that are still up.
func (s *Session) Conns() []*Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Conn(nil), s.conns...)
}

// Ended is closed when the session has no connection left.
func (s *Session) Ended() <-chan struct{} { return s.ended }

// Close closes every connection at once, without logging out, and waits for
// every goroutine of the session, those of connections that ended before
// too. Commands still running fail. Close must not be called from
// Config.OnAsync, which runs on a connection's reader.
func (s *Session) Close() error {
	s.mu.Lock()
	s.moveTo(sessionClosed)
	conns := append([]*Conn(nil), s.all...)
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	s.wg.Wait()
	return nil
}

// connEnded removes a connection that has ended from the session.
func (s *Session) connEnded(c *Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, x := range s.conns {
		if x == c {
			// Copy: pickConn reads the old slice without the lock.
			s.conns = slices.Delete(slices.Clone(s.conns), i, i+1)
			break
		}
	}
	if len(s.conns) == 0 {
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
