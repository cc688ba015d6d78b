package session

import (
	"context"
	"net"
	"time"

	"github.com/goiscsi/iscsi/pdu"
	"go.uber.org/zap"
)

// Config describes a session to log in.
type Config struct {
	// InitiatorName is our iSCSI name (iqn., eui. or naa.).
	InitiatorName  string
	InitiatorAlias string
	// TargetName is the target to log in to; empty for a discovery session.
	TargetName string
	// Portal is the target's address, host:port.
	Portal string
	// ISID identifies the session on the initiator side together with
	// InitiatorName; zero means a random ISID of the RFC 7143 random format.
	ISID [6]byte
	// CHAP, when set, authenticates with CHAP; otherwise AuthMethod=None.
	CHAP *CHAP
	// Params are the values to offer; nil means DefaultParams().
	Params *Params
	// LoginTimeout bounds each connection's login as a whole: the dial and
	// every PDU of it, redirects and retries included; default 15 s.
	LoginTimeout time.Duration
	// NOPInterval is how long a connection may be idle before a NOP-Out
	// checks the target is alive; 0 means 10 s, negative turns it off.
	NOPInterval time.Duration
	// NOPTimeout is how long a NOP-Out may wait for its NOP-In before the
	// connection is declared dead; 0 means 15 s.
	NOPTimeout time.Duration
	// Dial opens connections; nil uses a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// WrapConn, when set, wraps each new TCP connection, e.g. to record it
	// with capture.Tap.
	WrapConn func(c net.Conn) net.Conn
	// Logger receives debug lines per login and connection; nil logs nothing.
	Logger *zap.Logger
	// OnAsync receives the target's asynchronous messages, from the
	// connection's reader goroutine: it must not block. For event 1 (the
	// target asks for a logout) returning true means the caller handles the
	// logout; false lets the session log the connection out by itself
	// before the target's deadline.
	OnAsync func(c *Conn, ev AsyncEvent) bool
	// SNACKTimeout bounds how long a SNACK (ErrorRecoveryLevel 1) waits
	// for the PDUs it asked for before the connection is failed with
	// ErrRecoveryFailed; 0 means 5 s.
	SNACKTimeout time.Duration
	// MaxRedirects bounds login redirections followed; default 4.
	MaxRedirects int
	// Recovery, when set, makes the session recover from the loss of its
	// last connection (ERL 0 session reinstatement, see RecoveryConfig);
	// nil leaves a lost session lost (SessionLost), its commands failing.
	Recovery *RecoveryConfig
	// OnState, if set, receives every change of the session's state
	// (SessionState), in order, once the session's lock is released: from
	// the goroutine that made the change (a connection's reader, the
	// recovery, the caller of Close or Logout). It must not block; it may
	// call the session's methods.
	OnState func(s *Session, ev StateEvent)
}

func (c *Config) params() Params {
	if c.Params != nil {
		return *c.Params
	}
	return DefaultParams()
}

func (c *Config) loginTimeout() time.Duration {
	if c.LoginTimeout > 0 {
		return c.LoginTimeout
	}
	return 15 * time.Second
}

func (c *Config) nopInterval() time.Duration {
	if c.NOPInterval == 0 {
		return 10 * time.Second
	}
	return c.NOPInterval
}

func (c *Config) nopTimeout() time.Duration {
	if c.NOPTimeout > 0 {
		return c.NOPTimeout
	}
	return 15 * time.Second
}

func (c *Config) dial(ctx context.Context, addr string) (net.Conn, error) {
	var nc net.Conn
	var err error
	if c.Dial != nil {
		nc, err = c.Dial(ctx, "tcp", addr)
	} else {
		var d net.Dialer
		nc, err = d.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	if c.WrapConn != nil {
		nc = c.WrapConn(nc)
	}
	return nc, nil
}

// AsyncEvent is an Asynchronous Message from the target (RFC 7143 §11.9).
type AsyncEvent struct {
	Event      pdu.AsyncEvent // pdu.AsyncLogoutRequest, pdu.AsyncConnectionDrop, ...
	VCode      uint8
	Parameter1 uint16
	Parameter2 uint16
	Parameter3 uint16
	LUN        uint64
	// SenseData is the SCSI sense data of a SCSI async event (event 0).
	SenseData []byte
}
