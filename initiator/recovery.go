package initiator

import (
	"github.com/goiscsi/iscsi/session"
	"time"
)

// RecoveryConfig is how the initiator's sessions recover from the loss of
// their connections (ERL 0 session reinstatement, see
// session.RecoveryConfig); it is part of Config.
type RecoveryConfig struct {
	// ReplacementTimeout is how long a session that lost its connections
	// tries to reinstate itself, and its commands wait for it, before it
	// fails (open-iscsi's replacement_timeout). 0 means
	// session.DefaultReplacementTimeout (120 s); negative means commands
	// fail at once while the session recovers (it still reinstates itself
	// in the background, for the commands after).
	ReplacementTimeout time.Duration
	// NoRecovery turns recovery off: a session that loses its connections
	// is lost (session.SessionLost) and stays in the table, reported, until
	// a logout or Close removes it.
	NoRecovery bool
	// NoRetryWrites fails the writes in flight when the connection was lost
	// with their outcome unknown instead of sending them again on the
	// reinstated session (safe: the old session's tasks are gone at the
	// target then).
	NoRetryWrites bool
	// OnState, if set, gets every change of state of every session
	// (session.Config.OnState): up, recovering, failed, lost, logged out,
	// closed. It must not block.
	OnState func(s *session.Session, ev session.StateEvent)
}

// recovery is the session.RecoveryConfig of the initiator's sessions, nil
// when recovery is off.
func (in *Initiator) recovery() *session.RecoveryConfig {
	if in.cfg.NoRecovery {
		return nil
	}
	return &session.RecoveryConfig{ReplacementTimeout: in.cfg.ReplacementTimeout, NoRetryWrites: in.cfg.NoRetryWrites}
}

// onState passes a session's state changes on to Config.OnState.
func (in *Initiator) onState(s *session.Session, ev session.StateEvent) {
	if in.cfg.OnState != nil {
		in.cfg.OnState(s, ev)
	}
}
