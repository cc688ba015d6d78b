package pdu_test

import (
	"strings"
	"testing"

	"github.com/goiscsi/iscsi/pdu"
)

func TestSerialLess(t *testing.T) {
	const half = 1 << 31
	for _, c := range []struct {
		a, b uint32
		less bool
	}{
		{0, 1, true},
		{1, 0, false},
		{5, 5, false},
		{0xffffffff, 0, true}, // wraps
		{0, 0xffffffff, false},
		{0xfffffff0, 0x10, true},
		{0x10, 0xfffffff0, false},
		{0, half - 1, true}, // the farthest b still after a
		{half - 1, 0, false},
		{1, half, true},
		{half + 1, 0, true},
		{0, half + 1, false},
		// RFC 1982 leaves a and a+2^31 undefined: neither is less.
		{0, half, false},
		{half, 0, false},
		{0x12345678, 0x12345678 + half, false},
		{0x12345678 + half, 0x12345678, false},
	} {
		if got := pdu.SerialLess(c.a, c.b); got != c.less {
			t.Errorf("SerialLess(%#x, %#x) = %v", c.a, c.b, got)
		}
		if got := pdu.SerialLessEq(c.a, c.b); got != (c.less || c.a == c.b) {
			t.Errorf("SerialLessEq(%#x, %#x) = %v", c.a, c.b, got)
		}
	}
}

func TestLUN(t *testing.T) {
	for n := range 16384 {
		l := pdu.MakeLUN(n)
		if l.Number() != n {
			t.Fatalf("MakeLUN(%d).Number() = %d", n, l.Number())
		}
		if uint64(l)&(1<<48-1) != 0 {
			t.Fatalf("MakeLUN(%d) = %#x: bytes 2-7 not zero", n, uint64(l))
		}
	}
	for _, c := range []struct {
		n   int
		lun pdu.LUN
	}{
		{0, 0},
		{1, 0x0001_0000_0000_0000},
		{255, 0x00ff_0000_0000_0000},
		{256, 0x4100_0000_0000_0000},
		{16383, 0x7fff_0000_0000_0000},
	} {
		if got := pdu.MakeLUN(c.n); got != c.lun {
			t.Errorf("MakeLUN(%d) = %#016x, want %#016x", c.n, uint64(got), uint64(c.lun))
		}
	}
}

func TestStatusStrings(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{pdu.LoginStatus(0x0201).String(), "authentication failure (0x0201)"},
		{pdu.LoginSuccess.String(), "success (0x0000)"},
		{pdu.LoginStatus(0x0103).String(), "redirection (0x0103)"},
		{pdu.LoginStatus(0x02ff).String(), "initiator error (0x02ff)"},
		{pdu.LoginStatus(0x03ff).String(), "target error (0x03ff)"},
		{pdu.LoginStatus(0x0400).String(), "unknown login status (0x0400)"},
		{(&pdu.LoginResponse{StatusClass: 2, StatusDetail: 3}).Status().String(), "target not found (0x0203)"},
		{pdu.RejectWaitingForLogout.String(), "waiting for logout (0x0c)"},
		{pdu.RejectReason(0x42).String(), "reason 0x42"},
		{pdu.LogoutCIDNotFound.String(), "CID not found"},
		{pdu.LogoutResponseCode(9).String(), "response 9"},
		{pdu.AsyncLogoutRequest.String(), "target requests logout"},
		{pdu.AsyncVendorSpecific.String(), "vendor-specific event"},
		{pdu.AsyncEvent(9).String(), "event 9"},
		{pdu.TMFRejected.String(), "function rejected"},
		{pdu.TMResponse(9).String(), "response 9"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	if pdu.LoginAuthFailed.Class() != 2 {
		t.Error("Class")
	}
}

func TestErrorStrings(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{&pdu.ProtocolError{Op: pdu.OpLogoutResponse, Field: "DataSegmentLength", Value: 4, Reason: "this PDU carries no data segment"},
			"iscsi: Logout Response: DataSegmentLength 4 (0x4): this PDU carries no data segment"},
		{&pdu.ProtocolError{Op: 0x3c, Field: "Opcode", Value: 0x3c, Reason: "undefined opcode"}, "iscsi: Opcode 60 (0x3c): undefined opcode"},
		{&pdu.ProtocolError{Op: pdu.OpNOPIn, Field: "Opcode", Value: 0x20, Reason: "expected NOP-Out"}, "iscsi: NOP-In: Opcode 32 (0x20): expected NOP-Out"},
		{&pdu.DigestError{Op: pdu.OpSCSIDataIn, Data: true, Got: 1, Want: 2}, "iscsi: SCSI Data-In: data digest mismatch: received 0x00000001, computed 0x00000002"},
		{&pdu.DigestError{Op: pdu.OpNOPIn, Got: 1, Want: 2}, "iscsi: NOP-In: header digest mismatch: received 0x00000001, computed 0x00000002"},
		{&pdu.TextError{Offset: 4, Key: "A", Reason: "key repeated"}, `iscsi: text key "A" at offset 4: key repeated`},
		{&pdu.TextError{Offset: 4, Reason: "pair has no '='"}, "iscsi: text at offset 4: pair has no '='"},
	} {
		if got := c.err.Error(); got != c.want {
			t.Errorf("got %q, want %q", got, c.want)
		}
	}
	if !strings.Contains(pdu.ErrShortPDU.Error(), "inside a PDU") {
		t.Error("ErrShortPDU")
	}
}
