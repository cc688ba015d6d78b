package main

import (
	"github.com/spf13/pflag"

	"github.com/goiscsi/iscsi/agent/api"
	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/session"
)

// recoveryFlag registers --replacement-timeout on the commands that do I/O
// (perf, read, write): how long a session that lost its connections (a
// target restart) tries to reinstate itself while its I/O waits; 0 fails
// the I/O at once.
func (t *targetFlags) recoveryFlag(fs *pflag.FlagSet) {
	t.hasRecoveryFlag = true
	fs.DurationVar(&t.replacementTimeout, "replacement-timeout", session.DefaultReplacementTimeout,
		"how long I/O waits for a session that lost its connections to reconnect (session reinstatement); 0 fails it at once")
}

// applyRecovery sets cfg's replacement timeout from --replacement-timeout,
// on the commands that have the flag.
func (t *targetFlags) applyRecovery(cfg *initiator.Config) {
	if !t.hasRecoveryFlag {
		return
	}
	cfg.ReplacementTimeout = t.replacementTimeout
	if t.replacementTimeout <= 0 {
		cfg.ReplacementTimeout = -1 // fail at once (initiator.RecoveryConfig)
	}
}

// recoveryCounts is what a command's session recovery did, in the
// agent's encoding (the session list prints the same).
type recoveryCounts = api.Recovery

func countRecovery(s *session.Session) recoveryCounts { return api.NewRecovery(s) }
