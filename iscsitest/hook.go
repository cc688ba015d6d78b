package iscsitest

import (
	"encoding/binary"
	"hash/crc32"
	"slices"
	"sync/atomic"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

// Hook sees every PDU the target receives, login included, before the
// target handles it, and says what to do with it. It runs on the
// connection's reader goroutine: while it runs, the connection reads nothing.
type Hook func(ev *Event) Action

// Event is one received PDU as a Hook sees it.
type Event struct {
	// TSIH is the session's TSIH: during a leading login, 0 or what the
	// Login Request says.
	TSIH uint16
	CID  uint16
	ISID [6]byte
	// Header is a copy of the PDU's Basic Header Segment.
	Header *pdu.BHS
	// PDU is the header decoded into its type (*pdu.LogoutRequest, ...).
	PDU pdu.PDU
	// Data is the data segment, valid only during the call.
	Data []byte
	// Conn is the connection the PDU came on, to send PDUs on or close.
	Conn *Conn
}

type actionKind uint8

const (
	actContinue actionKind = iota
	actDrop
	actClose
	actReset
	actDelay
	actRespond
	actLogout
	actReject
	actBadData
)

// Action is what the target does with a PDU a Hook saw.
type Action struct {
	kind   actionKind
	delay  time.Duration
	p      pdu.PDU
	data   []byte
	code   pdu.LogoutResponseCode
	t2w    uint16
	t2r    uint16
	reason pdu.RejectReason
	// after is actClose or actReset to end the connection once the action's
	// PDU is written.
	after actionKind
}

// Actions a Hook returns.
var (
	// Continue handles the PDU normally.
	Continue = Action{}
	// Drop ignores the PDU as if it was lost: nothing is sent and a
	// non-immediate command leaves a hole in the CmdSN sequence.
	Drop = Action{kind: actDrop}
	// Close closes the connection gracefully (FIN) without handling the PDU.
	Close = Action{kind: actClose}
	// Reset resets the connection (RST) without handling the PDU.
	Reset = Action{kind: actReset}
)

// Delay waits d (or until the target closes), then handles the PDU normally.
func Delay(d time.Duration) Action { return Action{kind: actDelay, delay: d} }

// Respond sends a copy of p with data instead of handling the PDU; the
// target fills in the copy's sequence numbers as Conn.Send does. A
// non-immediate command still takes its CmdSN.
func Respond(p pdu.PDU, data []byte) Action { return Action{kind: actRespond, p: p, data: data} }

// LogoutResponse answers a Logout Request with response code and
// Time2Wait/Time2Retain. With code 0 the logout then takes effect as usual
// (connection or session closed, FIN); with any other code nothing else
// happens and the connection stays in full feature phase. Other PDUs are
// handled normally.
func LogoutResponse(code pdu.LogoutResponseCode, time2Wait, time2Retain uint16) Action {
	return Action{kind: actLogout, code: code, t2w: time2Wait, t2r: time2Retain}
}

// RejectWith answers the PDU with a Reject of the given reason carrying its
// header, instead of handling it. A non-immediate command still takes its
// CmdSN, so the window moves on.
func RejectWith(reason pdu.RejectReason) Action { return Action{kind: actReject, reason: reason} }

// ThenClose returns a copy of a that closes the connection (FIN) after what a
// sends.
func (a Action) ThenClose() Action { a.after = actClose; return a }

// ThenReset returns a copy of a that resets the connection (RST) after what
// a sends.
func (a Action) ThenReset() Action { a.after = actReset; return a }

// runHook calls the target's hook for a received PDU and carries out its
// action; it returns whether the PDU is consumed.
func (c *Conn) runHook(in *inPDU, p pdu.PDU) bool {
	hook := c.t.Config.Hook
	if hook == nil {
		return false
	}
	hdr := in.h
	ev := &Event{TSIH: c.TSIH(), CID: c.cid, ISID: c.isid, Header: &hdr, PDU: p, Data: in.data, Conn: c}
	if lr, ok := p.(*pdu.LoginRequest); ok && ev.TSIH == 0 {
		ev.TSIH, ev.CID, ev.ISID = lr.TSIH, lr.CID, lr.ISID
	}
	return c.apply(hook(ev), in, p)
}

func (c *Conn) apply(a Action, in *inPDU, p pdu.PDU) bool {
	switch a.kind {
	case actContinue:
		return false
	case actBadData:
		in.badDigest = true
		return false
	case actDrop:
		return true
	case actClose:
		c.Close()
		return true
	case actReset:
		c.Reset()
		return true
	case actDelay:
		tm := time.NewTimer(a.delay)
		defer tm.Stop()
		select {
		case <-tm.C:
		case <-c.t.done:
		}
		return false
	case actLogout:
		req, ok := p.(*pdu.LogoutRequest)
		if !ok {
			return false
		}
		if s := c.sess.Load(); s != nil {
			s.submit(c, in, p, func(s *session, c *Conn, _ *inPDU, _ pdu.PDU) {
				s.logout(c, req, &a)
			})
		}
	case actRespond:
		c.consume(in, p, func() { c.enqueue(clonePDU(a.p), nil, a.data, false) })
	case actReject:
		c.consume(in, p, func() { c.reject(a.reason, &in.h) })
	}
	switch a.after {
	case actClose:
		c.Close()
	case actReset:
		// Let the writer send what the action queued before the RST.
		c.flushed()
		c.Reset()
	}
	return true
}

// clonePDU returns a copy of p, so that filling its sequence numbers does
// not write to a value hooks on several connections share.
func clonePDU(p pdu.PDU) pdu.PDU {
	var h pdu.BHS
	p.MarshalBHS(&h)
	if q, err := pdu.Decode(&h); err == nil {
		return q
	}
	return p
}

// consume runs f in place of handling a PDU, in CmdSN order for a
// non-immediate command in full feature phase.
func (c *Conn) consume(in *inPDU, p pdu.PDU, f func()) {
	s := c.sess.Load()
	if s == nil {
		f()
		return
	}
	s.submit(c, in, p, func(*session, *Conn, *inPDU, pdu.PDU) { f() })
}

// Match selects the PDUs a ready-made Hook acts on; a nil Match selects
// every PDU.
type Match func(ev *Event) bool

// AnySession matches every PDU.
func AnySession() Match { return func(*Event) bool { return true } }

// SessionTSIH matches PDUs of the session tsih.
func SessionTSIH(tsih uint16) Match { return func(ev *Event) bool { return ev.TSIH == tsih } }

// SessionISID matches PDUs of the sessions with ISID isid.
func SessionISID(isid [6]byte) Match { return func(ev *Event) bool { return ev.ISID == isid } }

// ConnCID matches PDUs received on connections with CID cid.
func ConnCID(cid uint16) Match { return func(ev *Event) bool { return ev.CID == cid } }

// OpcodeIs matches PDUs of opcode op.
func OpcodeIs(op pdu.Opcode) Match { return func(ev *Event) bool { return ev.Header.Opcode() == op } }

// LogoutReason matches Logout Requests with reason code r.
func LogoutReason(r pdu.LogoutReason) Match {
	return func(ev *Event) bool {
		lr, ok := ev.PDU.(*pdu.LogoutRequest)
		return ok && lr.ReasonCode == r
	}
}

// And matches when every m matches; nil entries match everything.
func And(ms ...Match) Match {
	return func(ev *Event) bool {
		for _, m := range ms {
			if m != nil && !m(ev) {
				return false
			}
		}
		return true
	}
}

// When returns a Hook that answers a on every PDU m matches (nil matches all).
func When(m Match, a Action) Hook {
	return func(ev *Event) Action {
		if m == nil || m(ev) {
			return a
		}
		return Continue
	}
}

// OnLogout returns a Hook that answers a on the Logout Requests m matches.
func OnLogout(m Match, a Action) Hook { return When(And(OpcodeIs(pdu.OpLogoutRequest), m), a) }

// FailLogout answers the Logout Requests m matches with response code (1
// CID not found, 2 recovery not supported, 3 cleanup failed) and the given
// Time2Wait and Time2Retain; the connection stays open.
func FailLogout(m Match, code pdu.LogoutResponseCode, time2Wait, time2Retain uint16) Hook {
	return OnLogout(m, LogoutResponse(code, time2Wait, time2Retain))
}

// NoLogoutResponse ignores the Logout Requests m matches: no response, the
// connection stays open until the initiator closes it.
func NoLogoutResponse(m Match) Hook { return OnLogout(m, Drop) }

// ResetOnLogout resets the connection (RST) on the Logout Requests m matches.
func ResetOnLogout(m Match) Hook { return OnLogout(m, Reset) }

// CloseOnLogout closes the connection (FIN) without a response on the
// Logout Requests m matches.
func CloseOnLogout(m Match) Hook { return OnLogout(m, Close) }

// RejectLogout answers the Logout Requests m matches with a Reject of the
// given reason carrying the request's header.
func RejectLogout(m Match, reason pdu.RejectReason) Hook { return OnLogout(m, RejectWith(reason)) }

// DelayLogout handles the Logout Requests m matches normally after d.
func DelayLogout(m Match, d time.Duration) Hook { return OnLogout(m, Delay(d)) }

// Chain runs hooks in order and returns the first action other than
// Continue; nil hooks are skipped.
func Chain(hooks ...Hook) Hook {
	return func(ev *Event) Action {
		for _, h := range hooks {
			if h == nil {
				continue
			}
			if a := h(ev); a.kind != actContinue {
				return a
			}
		}
		return Continue
	}
}

// Once returns a Hook that lets h act only the first time it answers other
// than Continue.
func Once(h Hook) Hook {
	var fired atomic.Bool
	return func(ev *Event) Action {
		if fired.Load() {
			return Continue
		}
		a := h(ev)
		if a.kind != actContinue && fired.CompareAndSwap(false, true) {
			return a
		}
		return Continue
	}
}

// DigestFault selects outgoing PDUs whose digests the target corrupts, to
// test an initiator's recovery: it sees each PDU's header as it is about to
// be written (resend tells a PDU sent again for a SNACK) and answers which
// digest to corrupt. A digest not negotiated on the connection is not
// there to corrupt.
type DigestFault func(h *pdu.BHS, resend bool) Corrupt

// Corrupt says which digests of a PDU a DigestFault corrupts.
type Corrupt struct {
	Header, Data bool
}

// CorruptNth returns a DigestFault that corrupts c on the nth (from 1) PDU
// that m matches (nil matches every PDU), resends not counted, and on no
// other.
func CorruptNth(m func(h *pdu.BHS) bool, n int, c Corrupt) DigestFault {
	var seen atomic.Int64
	return func(h *pdu.BHS, resend bool) Corrupt {
		if resend || (m != nil && !m(h)) {
			return Corrupt{}
		}
		if seen.Add(1) == int64(n) {
			return c
		}
		return Corrupt{}
	}
}

// BadDataDigest is an Action that handles the PDU as if its data digest
// had not matched (the initiator's data corrupted on the way): a Data-Out
// is rejected with "data digest error" and, at ErrorRecoveryLevel 1, asked
// for again with a recovery R2T; at 0 its command ends with CHECK
// CONDITION.
var BadDataDigest = Action{kind: actBadData}

// appendOut queues one PDU on the writer, corrupting its digests as the
// target's DigestFault says.
func (c *Conn) appendOut(w *pdu.Writer, it *outItem, hdig, ddig bool) {
	f := c.t.Config.DigestFault
	var bad Corrupt
	if f != nil && c.sess.Load() != nil {
		bad = f(&it.h, it.resend)
	}
	bad.Header = bad.Header && hdig
	bad.Data = bad.Data && ddig && len(it.data) > 0
	if !bad.Header && !bad.Data {
		w.AppendRaw(&it.h, it.ahs, it.data)
		return
	}
	c.t.count(func(s *Stats) { s.DigestsCorrupted++ })
	// The writer computes the digests; the corrupt ones are written as
	// part of the AHS or the data instead, with that digest turned off.
	ahs, data := it.ahs, it.data
	if bad.Header {
		crc := crc32.Update(crc32.Checksum(it.h[:], castagnoli), castagnoli, it.ahs)
		ahs = binary.LittleEndian.AppendUint32(slices.Clone(it.ahs), ^crc)
	}
	if bad.Data {
		padded := append(slices.Clone(it.data), make([]byte, -len(it.data)&3)...)
		data = binary.LittleEndian.AppendUint32(padded, ^crc32.Checksum(padded, castagnoli))
	}
	w.SetDigests(hdig && !bad.Header, ddig && !bad.Data)
	w.AppendRaw(&it.h, ahs, data)
	w.SetDigests(hdig, ddig)
}
