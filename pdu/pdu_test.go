package pdu_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math/rand"
	"reflect"
	"strings"
	"testing"
	"testing/quick"

	"github.com/goiscsi/iscsi/pdu"
)

// hx decodes hex written as the RFC draws a BHS: one 4-byte row per string.
func hx(t testing.TB, rows ...string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(strings.Join(rows, ""), " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Distinct field values, so that a field written at the wrong offset shows.
const (
	lun    = pdu.LUN(0x0102030405060708)
	itt    = 0x11121314
	ttt    = 0x21222324
	sn3    = 0x31323334
	sn4    = 0x41424344
	sn5    = 0x51525354
	sn6    = 0x61626364
	sn7    = 0x71727374
	sn8    = 0x81828384
	lunHex = "01020304 05060708"
)

var seq = pdu.SeqNums{StatSN: sn3, ExpCmdSN: sn4, MaxCmdSN: sn5}

var isid = [6]byte{0x80, 0x12, 0x34, 0x56, 0x78, 0x9a}

var cdb = [16]byte{0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf}

type golden struct {
	name string
	p    pdu.PDU
	// rows are the 12 four-byte rows of the BHS, from the field tables of
	// RFC 7143 §11.3-§11.19, written by hand.
	rows []string
}

func goldens() []golden {
	return []golden{
		{"NOP-Out §11.18", &pdu.NOPOut{Immediate: true, LUN: lun, ITT: itt, TTT: ttt, CmdSN: sn3, ExpStatSN: sn4},
			[]string{"40 80 00 00", "00 000000", lunHex, "11121314", "21222324", "31323334", "41424344", "00000000", "00000000", "00000000", "00000000"}},
		{"SCSI Command §11.3", &pdu.SCSICommand{Immediate: true, Final: true, Read: true, Write: true, Attr: pdu.AttrHeadOfQueue,
			LUN: lun, ITT: itt, ExpectedDataTransferLength: ttt, CmdSN: sn3, ExpStatSN: sn4, CDB: cdb},
			[]string{"41 e3 00 00", "00 000000", lunHex, "11121314", "21222324", "31323334", "41424344", "a0a1a2a3", "a4a5a6a7", "a8a9aaab", "acadaeaf"}},
		{"SCSI Command, read only, ACA", &pdu.SCSICommand{Final: true, Read: true, Attr: pdu.AttrACA, LUN: lun, ITT: itt, CDB: cdb},
			[]string{"01 c4 00 00", "00 000000", lunHex, "11121314", "00000000", "00000000", "00000000", "a0a1a2a3", "a4a5a6a7", "a8a9aaab", "acadaeaf"}},
		{"Task Management Function Request §11.5", &pdu.TaskMgmtRequest{Immediate: true, Function: pdu.TMFLogicalUnitReset, LUN: lun, ITT: itt,
			RefTaskTag: ttt, CmdSN: sn3, ExpStatSN: sn4, RefCmdSN: sn5, ExpDataSN: sn6},
			[]string{"42 85 00 00", "00 000000", lunHex, "11121314", "21222324", "31323334", "41424344", "51525354", "61626364", "00000000", "00000000"}},
		{"Login Request §11.12", &pdu.LoginRequest{Transit: true, CSG: pdu.StageOperational, NSG: pdu.StageFullFeature, VersionMax: 7, VersionMin: 6,
			ISID: isid, TSIH: 0xbcde, ITT: itt, CID: 0x2122, CmdSN: sn3, ExpStatSN: sn4},
			[]string{"43 87 07 06", "00 000000", "80123456", "789abcde", "11121314", "21220000", "31323334", "41424344", "00000000", "00000000", "00000000", "00000000"}},
		{"Login Request, continue", &pdu.LoginRequest{Continue: true, CSG: pdu.StageSecurity, NSG: pdu.StageOperational, ISID: isid, ITT: itt},
			[]string{"43 41 00 00", "00 000000", "80123456", "789a0000", "11121314", "00000000", "00000000", "00000000", "00000000", "00000000", "00000000", "00000000"}},
		{"Text Request §11.10", &pdu.TextRequest{Immediate: true, Continue: true, LUN: lun, ITT: itt, TTT: ttt, CmdSN: sn3, ExpStatSN: sn4},
			[]string{"44 40 00 00", "00 000000", lunHex, "11121314", "21222324", "31323334", "41424344", "00000000", "00000000", "00000000", "00000000"}},
		{"Text Request, final", &pdu.TextRequest{Final: true, ITT: itt, TTT: 0xffffffff},
			[]string{"04 80 00 00", "00 000000", "00000000 00000000", "11121314", "ffffffff", "00000000", "00000000", "00000000", "00000000", "00000000", "00000000"}},
		{"SCSI Data-Out §11.7", &pdu.DataOut{Final: true, LUN: lun, ITT: itt, TTT: ttt, ExpStatSN: sn4, DataSN: sn5, BufferOffset: sn6},
			[]string{"05 80 00 00", "00 000000", lunHex, "11121314", "21222324", "00000000", "41424344", "00000000", "51525354", "61626364", "00000000"}},
		{"Logout Request §11.14", &pdu.LogoutRequest{Immediate: true, ReasonCode: pdu.LogoutRemoveForRecovery, ITT: itt, CID: 0x2122, CmdSN: sn3, ExpStatSN: sn4},
			[]string{"46 82 00 00", "00 000000", "00000000 00000000", "11121314", "21220000", "31323334", "41424344", "00000000", "00000000", "00000000", "00000000"}},
		{"SNACK Request §11.16", &pdu.SNACKRequest{Type: pdu.SNACKRDataSNACK, LUN: lun, ITT: itt, TTT: ttt, ExpStatSN: sn4, BegRun: sn5, RunLength: sn6},
			[]string{"10 83 00 00", "00 000000", lunHex, "11121314", "21222324", "00000000", "41424344", "00000000", "00000000", "51525354", "61626364"}},
		{"NOP-In §11.19", &pdu.NOPIn{LUN: lun, ITT: itt, TTT: ttt, SeqNums: seq},
			[]string{"20 80 00 00", "00 000000", lunHex, "11121314", "21222324", "31323334", "41424344", "51525354", "00000000", "00000000", "00000000"}},
		{"SCSI Response §11.4", &pdu.SCSIResponse{BidiOverflow: true, Underflow: true, Response: pdu.RespTargetFailure, Status: pdu.StatusCheckCondition,
			ITT: itt, SNACKTag: ttt, SeqNums: seq, ExpDataSN: sn6, BidiReadResidualCount: sn7, ResidualCount: sn8},
			[]string{"21 92 01 02", "00 000000", "00000000 00000000", "11121314", "21222324", "31323334", "41424344", "51525354", "61626364", "71727374", "81828384"}},
		{"SCSI Response, u and O", &pdu.SCSIResponse{BidiUnderflow: true, Overflow: true, Status: pdu.StatusTaskAborted, ITT: itt},
			[]string{"21 8c 00 40", "00 000000", "00000000 00000000", "11121314", "00000000", "00000000", "00000000", "00000000", "00000000", "00000000", "00000000"}},
		{"Task Management Function Response §11.6", &pdu.TaskMgmtResponse{Response: pdu.TMFNotSupported, ITT: itt, SeqNums: seq},
			[]string{"22 80 05 00", "00 000000", "00000000 00000000", "11121314", "00000000", "31323334", "41424344", "51525354", "00000000", "00000000", "00000000"}},
		{"Login Response §11.13", &pdu.LoginResponse{Continue: true, CSG: pdu.StageOperational, NSG: pdu.StageFullFeature, VersionMax: 7, VersionActive: 6,
			ISID: isid, TSIH: 0xbcde, ITT: itt, SeqNums: seq, StatusClass: 2, StatusDetail: 1},
			[]string{"23 47 07 06", "00 000000", "80123456", "789abcde", "11121314", "00000000", "31323334", "41424344", "51525354", "02010000", "00000000", "00000000"}},
		{"Text Response §11.11", &pdu.TextResponse{Final: true, LUN: lun, ITT: itt, TTT: ttt, SeqNums: seq},
			[]string{"24 80 00 00", "00 000000", lunHex, "11121314", "21222324", "31323334", "41424344", "51525354", "00000000", "00000000", "00000000"}},
		{"Text Response, continue", &pdu.TextResponse{Continue: true, ITT: itt, TTT: ttt},
			[]string{"24 40 00 00", "00 000000", "00000000 00000000", "11121314", "21222324", "00000000", "00000000", "00000000", "00000000", "00000000", "00000000"}},
		{"SCSI Data-In §11.7", &pdu.DataIn{Final: true, Acknowledge: true, Overflow: true, HasStatus: true, Status: pdu.StatusCheckCondition,
			LUN: lun, ITT: itt, TTT: ttt, SeqNums: seq, DataSN: sn6, BufferOffset: sn7, ResidualCount: sn8},
			[]string{"25 c5 00 02", "00 000000", lunHex, "11121314", "21222324", "31323334", "41424344", "51525354", "61626364", "71727374", "81828384"}},
		{"SCSI Data-In, underflow", &pdu.DataIn{Final: true, Underflow: true, HasStatus: true, ITT: itt, DataSN: sn6},
			[]string{"25 83 00 00", "00 000000", "00000000 00000000", "11121314", "00000000", "00000000", "00000000", "00000000", "61626364", "00000000", "00000000"}},
		{"Logout Response §11.15", &pdu.LogoutResponse{Response: pdu.LogoutCleanupFailed, ITT: itt, SeqNums: seq, Time2Wait: 0x7172, Time2Retain: 0x7374},
			[]string{"26 80 03 00", "00 000000", "00000000 00000000", "11121314", "00000000", "31323334", "41424344", "51525354", "00000000", "71727374", "00000000"}},
		{"Ready To Transfer §11.8", &pdu.R2T{LUN: lun, ITT: itt, TTT: ttt, SeqNums: seq, R2TSN: sn6, BufferOffset: sn7, DesiredDataTransferLength: sn8},
			[]string{"31 80 00 00", "00 000000", lunHex, "11121314", "21222324", "31323334", "41424344", "51525354", "61626364", "71727374", "81828384"}},
		{"Asynchronous Message §11.9", &pdu.AsyncMessage{LUN: lun, ITT: 0xffffffff, SeqNums: seq, AsyncEvent: pdu.AsyncNegotiationRequest, AsyncVCode: 5,
			Parameter1: 0x6162, Parameter2: 0x6364, Parameter3: 0x6566},
			[]string{"32 80 00 00", "00 000000", lunHex, "ffffffff", "00000000", "31323334", "41424344", "51525354", "04056162", "63646566", "00000000"}},
		{"Reject §11.17", &pdu.Reject{Reason: pdu.RejectInvalidPDUField, ITT: 0xffffffff, SeqNums: seq, DataSN: sn6},
			[]string{"3f 80 09 00", "00 000000", "00000000 00000000", "ffffffff", "00000000", "31323334", "41424344", "51525354", "61626364", "00000000", "00000000"}},
	}
}

func TestGoldenBHS(t *testing.T) {
	seen := map[pdu.Opcode]bool{}
	for _, g := range goldens() {
		t.Run(g.name, func(t *testing.T) {
			want := hx(t, g.rows...)
			if len(want) != pdu.BHSLen {
				t.Fatalf("golden is %d bytes", len(want))
			}
			var h pdu.BHS
			h[7] = 0xee // MarshalBHS must overwrite everything
			g.p.MarshalBHS(&h)
			if !bytes.Equal(h[:], want) {
				t.Fatalf("MarshalBHS:\n got %x\nwant %x", h[:], want)
			}
			if h.Opcode() != g.p.Opcode() {
				t.Errorf("Opcode() = %v, BHS says %v", g.p.Opcode(), h.Opcode())
			}
			got, err := pdu.Decode(&h)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, g.p) {
				t.Fatalf("Decode:\n got %+v\nwant %+v", got, g.p)
			}
			// UnmarshalBHS resets the value it fills.
			dirty := pdu.New(g.p.Opcode())
			fill(dirty)
			if err := dirty.UnmarshalBHS(&h); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(dirty, g.p) {
				t.Fatalf("UnmarshalBHS into a used value:\n got %+v\nwant %+v", dirty, g.p)
			}
			seen[g.p.Opcode()] = true
		})
	}
	for op := pdu.Opcode(0); op < 64; op++ {
		if op.Valid() && !seen[op] {
			t.Errorf("no golden bytes for %v", op)
		}
	}
}

// fill sets every field of p to something non-zero.
func fill(p pdu.PDU) {
	v := reflect.ValueOf(p).Elem()
	var f func(v reflect.Value)
	f = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.Bool:
			v.SetBool(true)
		case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			v.SetUint(0x5a)
		case reflect.Array:
			for i := range v.Len() {
				f(v.Index(i))
			}
		case reflect.Struct:
			for i := range v.NumField() {
				f(v.Field(i))
			}
		}
	}
	f(v)
}

func TestUnmarshalWrongOpcode(t *testing.T) {
	for _, g := range goldens() {
		var h pdu.BHS
		g.p.MarshalBHS(&h)
		other := pdu.New(pdu.OpNOPIn)
		if g.p.Opcode() == pdu.OpNOPIn {
			other = pdu.New(pdu.OpNOPOut)
		}
		err := other.UnmarshalBHS(&h)
		var pe *pdu.ProtocolError
		if !errors.As(err, &pe) || pe.Field != "Opcode" || pe.Value != uint64(g.p.Opcode()) || pe.Op != g.p.Opcode() {
			t.Errorf("%s into %T: %v", g.name, other, err)
		}
	}
}

func TestDecodeUndefinedOpcode(t *testing.T) {
	for _, op := range []byte{0x07, 0x0f, 0x1c, 0x1e, 0x27, 0x30, 0x3c, 0x3e} {
		var h pdu.BHS
		h[0] = op
		p, err := pdu.Decode(&h)
		var pe *pdu.ProtocolError
		if p != nil || !errors.As(err, &pe) || pe.Field != "Opcode" || pe.Value != uint64(op) || pe.Op != pdu.Opcode(op) {
			t.Errorf("opcode 0x%02x: %v, %v", op, p, err)
		}
		if pdu.Opcode(op).Valid() || pdu.New(pdu.Opcode(op)) != nil || pdu.Opcode(op).Direction() != 0 {
			t.Errorf("opcode 0x%02x taken as defined", op)
		}
	}
}

// TestFlagConflicts checks the bit combinations RFC 7143 forbids.
func TestFlagConflicts(t *testing.T) {
	for _, c := range []struct {
		name string
		row0 string
	}{
		{"Login Request T and C", "43 c7 00 00"},
		{"Login Response T and C", "23 c7 00 00"},
		{"Text Request F and C", "04 c0 00 00"},
		{"Text Response F and C", "24 c0 00 00"},
		{"SCSI Response O and U", "21 86 00 00"},
		{"SCSI Response o and u", "21 98 00 00"},
		{"Data-In S without F", "25 01 00 00"},
		{"Data-In O and U", "25 87 00 00"},
	} {
		var h pdu.BHS
		copy(h[:], hx(t, c.row0))
		_, err := pdu.Decode(&h)
		var pe *pdu.ProtocolError
		if !errors.As(err, &pe) || pe.Field != "Flags" || pe.Value != uint64(h[1]) || pe.Op != h.Opcode() {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	var h pdu.BHS
	(&pdu.R2T{TTT: 0xffffffff}).MarshalBHS(&h)
	var pe *pdu.ProtocolError
	if _, err := pdu.Decode(&h); !errors.As(err, &pe) || pe.Field != "TargetTransferTag" {
		t.Errorf("R2T with reserved TTT: %v", err)
	}
}

// normalize clears what a PDU's wire form cannot hold: bits beyond a
// field's width and flag combinations the RFC forbids.
func normalize(p pdu.PDU) {
	switch p := p.(type) {
	case *pdu.SCSICommand:
		p.Attr &= 7
	case *pdu.TaskMgmtRequest:
		p.Function &= 0x7f
	case *pdu.LoginRequest:
		p.CSG &= 3
		p.NSG &= 3
		p.Continue = p.Continue && !p.Transit
	case *pdu.LoginResponse:
		p.CSG &= 3
		p.NSG &= 3
		p.Continue = p.Continue && !p.Transit
	case *pdu.TextRequest:
		p.Continue = p.Continue && !p.Final
	case *pdu.TextResponse:
		p.Continue = p.Continue && !p.Final
	case *pdu.LogoutRequest:
		p.ReasonCode &= 0x7f
	case *pdu.SNACKRequest:
		p.Type &= 0x0f
	case *pdu.SCSIResponse:
		p.Underflow = p.Underflow && !p.Overflow
		p.BidiUnderflow = p.BidiUnderflow && !p.BidiOverflow
	case *pdu.DataIn:
		p.Final = p.Final || p.HasStatus
		p.Underflow = p.Underflow && !p.Overflow
	case *pdu.R2T:
		if p.TTT == 0xffffffff {
			p.TTT = 0
		}
	}
}

func TestRandomRoundTrip(t *testing.T) {
	rnd := rand.New(rand.NewSource(7143))
	for op := pdu.Opcode(0); op < 64; op++ {
		if !op.Valid() {
			continue
		}
		typ := reflect.TypeOf(pdu.New(op)).Elem()
		for range 2000 {
			v, ok := quick.Value(typ, rnd)
			if !ok {
				t.Fatalf("%v: quick.Value failed", op)
			}
			p := v.Addr().Interface().(pdu.PDU)
			normalize(p)
			var h pdu.BHS
			p.MarshalBHS(&h)
			got, err := pdu.Decode(&h)
			if err != nil {
				t.Fatalf("%v: %+v: %v", op, p, err)
			}
			if !reflect.DeepEqual(got, p) {
				t.Fatalf("%v:\n got %+v\nwant %+v", op, got, p)
			}
		}
	}
}

// TestRandomBHSRoundTrip decodes random headers: whatever decodes must
// encode to a header that decodes to the same value.
func TestRandomBHSRoundTrip(t *testing.T) {
	rnd := rand.New(rand.NewSource(3720))
	decoded := 0
	for range 100000 {
		var h pdu.BHS
		rnd.Read(h[:])
		p, err := pdu.Decode(&h)
		if err != nil {
			continue
		}
		decoded++
		var h2 pdu.BHS
		p.MarshalBHS(&h2)
		q, err := pdu.Decode(&h2)
		if err != nil || !reflect.DeepEqual(p, q) {
			t.Fatalf("%x: %+v re-encoded as %x: %+v, %v", h[:], p, h2[:], q, err)
		}
	}
	if decoded < 10000 {
		t.Errorf("only %d random headers decoded", decoded)
	}
}

func TestOpcodeNames(t *testing.T) {
	for _, c := range []struct {
		op   pdu.Opcode
		name string
		dir  pdu.Direction
	}{
		{pdu.OpSCSIDataIn, "SCSI Data-In", pdu.FromTarget},
		{pdu.OpLoginRequest, "Login Request", pdu.FromInitiator},
		{pdu.OpReject, "Reject", pdu.FromTarget},
		{pdu.OpSNACKRequest, "SNACK Request", pdu.FromInitiator},
		{0x07, "Opcode(0x07)", 0},
	} {
		if c.op.String() != c.name || c.op.Direction() != c.dir {
			t.Errorf("%#x: %q %v", uint8(c.op), c.op.String(), c.op.Direction())
		}
	}
	n := 0
	for op := pdu.Opcode(0); op < 64; op++ {
		if op.Valid() {
			n++
			if p := pdu.New(op); p.Opcode() != op {
				t.Errorf("New(%v).Opcode() = %v", op, p.Opcode())
			}
		}
	}
	if n != 18 {
		t.Errorf("%d opcodes defined, RFC 7143 has 18", n)
	}
}

func TestOpcodeCarries(t *testing.T) {
	noData := map[pdu.Opcode]bool{pdu.OpTaskMgmtRequest: true, pdu.OpTaskMgmtResponse: true,
		pdu.OpLogoutRequest: true, pdu.OpLogoutResponse: true, pdu.OpSNACKRequest: true, pdu.OpR2T: true}
	for op := pdu.Opcode(0); op < 64; op++ {
		if want := op.Valid() && !noData[op]; op.MayCarryData() != want {
			t.Errorf("%v.MayCarryData() = %v, want %v", op, op.MayCarryData(), want)
		}
		if want := op == pdu.OpSCSICommand; op.MayCarryAHS() != want {
			t.Errorf("%v.MayCarryAHS() = %v, want %v", op, op.MayCarryAHS(), want)
		}
	}
	b := []byte("header and data")
	if got := pdu.UpdateCRC32C(pdu.CRC32C(b[:6]), b[6:]); got != pdu.CRC32C(b) {
		t.Errorf("UpdateCRC32C = %#x, want %#x", got, pdu.CRC32C(b))
	}
}

// RFC 7143 §6.1 wants keys to begin with a capital letter, but §13.24
// defines iSCSIProtocolLevel: that one key is the exception.
func TestTextProtocolLevelKey(t *testing.T) {
	kvs, err := pdu.ParseText([]byte("iSCSIProtocolLevel=1\x00"), pdu.TextLimits{})
	if err != nil || len(kvs) != 1 || kvs[0].Key != "iSCSIProtocolLevel" {
		t.Fatalf("iSCSIProtocolLevel: %v %v", kvs, err)
	}
	if _, err := pdu.ParseText([]byte("iSCSIOther=1\x00"), pdu.TextLimits{}); err == nil {
		t.Fatal("a key beginning with a small letter other than iSCSIProtocolLevel was accepted")
	}
}

// TestTargetSeq: which PDUs carry sequence numbers, and which of them carry
// status (advance StatSN).
func TestTargetSeq(t *testing.T) {
	tests := []struct {
		p              pdu.PDU
		hasSeq, status bool
	}{
		{&pdu.NOPIn{ITT: 1}, true, true},
		{&pdu.NOPIn{ITT: 0xffffffff}, true, false},
		{&pdu.SCSIResponse{}, true, true},
		{&pdu.TaskMgmtResponse{}, true, true},
		{&pdu.LoginResponse{}, true, true},
		{&pdu.TextResponse{}, true, true},
		{&pdu.DataIn{HasStatus: true}, true, true},
		{&pdu.DataIn{}, true, false},
		{&pdu.LogoutResponse{}, true, true},
		{&pdu.R2T{}, true, false},
		{&pdu.AsyncMessage{}, true, true},
		{&pdu.Reject{}, true, true},
		{&pdu.SCSICommand{}, false, false},
		{&pdu.NOPOut{}, false, false},
	}
	for _, tt := range tests {
		sn, status := pdu.TargetSeq(tt.p)
		if (sn != nil) != tt.hasSeq || status != tt.status {
			t.Errorf("%s: sequence numbers %v, status %v; want %v, %v", tt.p.Opcode(), sn != nil, status, tt.hasSeq, tt.status)
		}
		// The raw header says the same, and reads the same numbers.
		var h pdu.BHS
		tt.p.MarshalBHS(&h)
		want := pdu.SeqNums{StatSN: 0x11, ExpCmdSN: 0x22, MaxCmdSN: 0x33}
		if tt.hasSeq {
			*sn = want
			tt.p.MarshalBHS(&h)
		}
		raw, rawStatus, ok := h.TargetSeq()
		if ok != tt.hasSeq || rawStatus != tt.status || (ok && raw != want) {
			t.Errorf("%s: BHS.TargetSeq %+v, status %v, ok %v; want %+v, %v, %v", tt.p.Opcode(), raw, rawStatus, ok, want, tt.status, tt.hasSeq)
		}
	}
}
