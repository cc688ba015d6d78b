package iscsitest

import (
	"maps"

	"github.com/goiscsi/iscsi/pdu"
)

// Stats are counters of what a Target saw and did since it started.
type Stats struct {
	// Logins counts connections that reached full feature phase.
	Logins int
	// LoginFailures counts logins the target ended with a non-zero status.
	LoginFailures int
	// Logouts counts Logout Requests answered with success, by reason code.
	Logouts map[pdu.LogoutReason]int
	// LogoutRequests counts every Logout Request handled, by reason code.
	LogoutRequests map[pdu.LogoutReason]int
	// Received and Sent count PDUs by opcode.
	Received map[pdu.Opcode]int
	Sent     map[pdu.Opcode]int
	// Dropped counts non-immediate commands outside the CmdSN window that
	// the target ignored (RFC 7143 §4.2.2.1).
	Dropped int
	// DigestErrors counts PDUs that failed a header or data digest.
	DigestErrors int
	// ProtocolErrors counts connections the target dropped for an error of
	// the initiator.
	ProtocolErrors int
	// DigestsCorrupted counts PDUs sent with a digest the DigestFault
	// corrupted; Resent PDUs sent again for a SNACK or a recovery R2T.
	DigestsCorrupted, Resent int
}

func newStats() Stats {
	return Stats{
		Logouts:        map[pdu.LogoutReason]int{},
		LogoutRequests: map[pdu.LogoutReason]int{},
		Received:       map[pdu.Opcode]int{},
		Sent:           map[pdu.Opcode]int{},
	}
}

// Stats returns a snapshot of the target's counters.
func (t *Target) Stats() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.stats
	s.Logouts = maps.Clone(s.Logouts)
	s.LogoutRequests = maps.Clone(s.LogoutRequests)
	s.Received = maps.Clone(s.Received)
	s.Sent = maps.Clone(s.Sent)
	return s
}

// count updates the counters under the target's lock.
func (t *Target) count(f func(s *Stats)) {
	t.mu.Lock()
	f(&t.stats)
	t.mu.Unlock()
}
