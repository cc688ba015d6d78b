package capture

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/goiscsi/iscsi/pdu"
)

// sent is one PDU as a test sent it: header, AHS and data segment.
type sent struct {
	Header pdu.BHS
	AHS    []byte
	Data   []byte
}

// msg is a PDU to send: its header fields, AHS and data segment.
type msg struct {
	p    pdu.PDU
	ahs  []byte
	data []byte
}

// pattern returns n bytes that look like file data but not like PDU headers.
func pattern(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.IntN(256))
	}
	return b
}

func text(kv ...string) []byte {
	return []byte(strings.Join(kv, "\x00") + "\x00")
}

// initiatorMsgs and targetMsgs are a conversation covering every opcode,
// AHS, odd data lengths (padding) and empty data segments.
func initiatorMsgs() []msg {
	var cdb, wcdb [16]byte
	cdb[0], cdb[8] = 0x28, 8                                 // READ(10) of 8 blocks
	wcdb[0] = 0x7f                                           // variable length CDB, continued in the AHS
	ext := append([]byte{0, 13, 0x01, 0}, pattern(12, 1)...) // Extended CDB AHS: length 13 (incl. reserved byte), 12 bytes of CDB
	return []msg{
		{p: &pdu.LoginRequest{Transit: true, CSG: pdu.StageOperational, NSG: pdu.StageFullFeature, ISID: [6]byte{0x80, 1, 2, 3, 4, 5}, ITT: 1, CID: 0, CmdSN: 1},
			data: text("InitiatorName=iqn.2026-01.com.example:ini", "TargetName=iqn.2026-01.com.example:tgt", "SessionType=Normal", "HeaderDigest=None")},
		{p: &pdu.TextRequest{Final: true, ITT: 2, TTT: 0xffffffff, CmdSN: 2, ExpStatSN: 1}, data: text("SendTargets=All")},
		{p: &pdu.SCSICommand{Final: true, Read: true, Attr: pdu.AttrSimple, LUN: pdu.MakeLUN(0), ITT: 3, ExpectedDataTransferLength: 4096, CmdSN: 3, ExpStatSN: 2, CDB: cdb}},
		{p: &pdu.SCSICommand{Final: true, Write: true, Attr: pdu.AttrSimple, LUN: pdu.MakeLUN(1), ITT: 4, ExpectedDataTransferLength: 70001, CmdSN: 4, ExpStatSN: 3, CDB: wcdb},
			ahs: ext, data: pattern(1001, 2)},
		{p: &pdu.DataOut{Final: true, LUN: pdu.MakeLUN(1), ITT: 4, TTT: 77, ExpStatSN: 3, DataSN: 0, BufferOffset: 1001}, data: pattern(69000, 3)},
		{p: &pdu.NOPOut{Immediate: true, ITT: 5, TTT: 0xffffffff, CmdSN: 5, ExpStatSN: 4}, data: []byte("ping")},
		{p: &pdu.TaskMgmtRequest{Immediate: true, Function: pdu.TMFAbortTask, ITT: 6, RefTaskTag: 3, CmdSN: 5, ExpStatSN: 4, RefCmdSN: 3}},
		{p: &pdu.SNACKRequest{Type: pdu.SNACKStatus, ITT: 0xffffffff, TTT: 0xffffffff, ExpStatSN: 4, BegRun: 2, RunLength: 1}},
		{p: &pdu.LogoutRequest{Immediate: true, ReasonCode: pdu.LogoutCloseSession, ITT: 7, CmdSN: 6, ExpStatSN: 5}},
	}
}

func targetMsgs() []msg {
	return []msg{
		{p: &pdu.LoginResponse{Transit: true, CSG: pdu.StageOperational, NSG: pdu.StageFullFeature, ISID: [6]byte{0x80, 1, 2, 3, 4, 5}, TSIH: 9, ITT: 1,
			SeqNums: pdu.SeqNums{StatSN: 0, ExpCmdSN: 2, MaxCmdSN: 33}}, data: text("HeaderDigest=None", "MaxRecvDataSegmentLength=262144")},
		{p: &pdu.TextResponse{Final: true, ITT: 2, TTT: 0xffffffff, SeqNums: pdu.SeqNums{StatSN: 1, ExpCmdSN: 3, MaxCmdSN: 34}},
			data: text("TargetName=iqn.2026-01.com.example:tgt", "TargetAddress=127.0.0.1:3260,1")},
		{p: &pdu.DataIn{Final: true, HasStatus: true, ITT: 3, TTT: 0xffffffff, SeqNums: pdu.SeqNums{StatSN: 2, ExpCmdSN: 4, MaxCmdSN: 35}}, data: pattern(4095, 4)},
		{p: &pdu.R2T{LUN: pdu.MakeLUN(1), ITT: 4, TTT: 77, SeqNums: pdu.SeqNums{StatSN: 3, ExpCmdSN: 5, MaxCmdSN: 36}, BufferOffset: 1001, DesiredDataTransferLength: 69000}},
		{p: &pdu.SCSIResponse{Response: pdu.RespCommandCompleted, Status: pdu.StatusCheckCondition, ITT: 4, SeqNums: pdu.SeqNums{StatSN: 3, ExpCmdSN: 5, MaxCmdSN: 36}},
			data: append([]byte{0, 18}, append([]byte{0x70, 0, 5, 0, 0, 0, 0, 10}, make([]byte, 10)...)...)},
		{p: &pdu.NOPIn{ITT: 5, TTT: 0xffffffff, SeqNums: pdu.SeqNums{StatSN: 4, ExpCmdSN: 6, MaxCmdSN: 37}}, data: []byte("ping")},
		{p: &pdu.TaskMgmtResponse{Response: pdu.TMFNoSuchTask, ITT: 6, SeqNums: pdu.SeqNums{StatSN: 5, ExpCmdSN: 6, MaxCmdSN: 37}}},
		{p: &pdu.AsyncMessage{ITT: 0xffffffff, SeqNums: pdu.SeqNums{StatSN: 6, ExpCmdSN: 6, MaxCmdSN: 37}, AsyncEvent: pdu.AsyncLogoutRequest, Parameter3: 5},
			data: []byte{0, 0}},
		{p: &pdu.Reject{Reason: pdu.RejectProtocolError, ITT: 0xffffffff, SeqNums: pdu.SeqNums{StatSN: 6, ExpCmdSN: 6, MaxCmdSN: 37}}, data: make([]byte, 48)},
		{p: &pdu.LogoutResponse{Response: pdu.LogoutSuccess, ITT: 7, SeqNums: pdu.SeqNums{StatSN: 6, ExpCmdSN: 7, MaxCmdSN: 38}, Time2Wait: 2, Time2Retain: 20}},
	}
}

// encode writes ms with pdu.Writer, one Flush per PDU, and returns the bytes
// and the PDUs as sent.
func encode(t testing.TB, ms []msg, hd, dd bool) ([]byte, []sent) {
	t.Helper()
	var buf bytes.Buffer
	w := pdu.NewWriter(&buf)
	var out []sent
	for _, m := range ms {
		// Digests take effect after login.
		login := isLogin(m.p.Opcode())
		w.SetDigests(hd && !login, dd && !login)
		if err := w.Append(m.p, m.ahs, m.data); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		var h pdu.BHS
		m.p.MarshalBHS(&h)
		h.SetLengths(len(m.ahs), len(m.data))
		out = append(out, sent{Header: h, AHS: m.ahs, Data: m.data})
	}
	return buf.Bytes(), out
}

// split reads a byte stream of PDUs with pdu.Reader, an oracle independent
// of the package under test.
func split(t testing.TB, b []byte, from pdu.Direction, hd, dd bool) []sent {
	t.Helper()
	cfg := pdu.ReaderConfig{From: from, MaxDataSegmentLength: pdu.MaxDataSegmentLength}
	r := pdu.NewReader(bytes.NewReader(b), cfg)
	var out []sent
	for {
		// Digests take effect after the login PDU that moves to full
		// feature phase.
		if len(out) > 0 && loginEnds(&out[len(out)-1].Header) {
			cfg.HeaderDigest, cfg.DataDigest = hd, dd
			r.SetConfig(cfg)
		}
		h, err := r.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("pdu.Reader: %v", err)
		}
		s := sent{Header: *h, AHS: bytes.Clone(r.AHS())}
		d, err := r.Data()
		if err != nil {
			t.Fatalf("pdu.Reader: %v", err)
		}
		s.Data = bytes.Clone(d)
		out = append(out, s)
	}
}

// diff describes how records differ from the PDUs sent, or returns "".
func diff(rs []Record, want []sent) string {
	var b strings.Builder
	if len(rs) != len(want) {
		fmt.Fprintf(&b, "%d records, want %d\n", len(rs), len(want))
	}
	for i := range min(len(rs), len(want)) {
		r, w := rs[i], want[i]
		switch {
		case r.Header != w.Header:
			fmt.Fprintf(&b, "record %d: header\n got %x\nwant %x\n", i, r.Header, w.Header)
		case !bytes.Equal(r.AHS, w.AHS):
			fmt.Fprintf(&b, "record %d (%s): AHS %x, want %x\n", i, r.Header.Opcode(), r.AHS, w.AHS)
		case !bytes.Equal(r.Data, w.Data):
			fmt.Fprintf(&b, "record %d (%s): %d data bytes differ from the %d sent\n", i, r.Header.Opcode(), len(r.Data), len(w.Data))
		case r.Err != nil:
			fmt.Fprintf(&b, "record %d (%s): %v\n", i, r.Header.Opcode(), r.Err)
		case r.PDU == nil || r.PDU.Opcode() != w.Header.Opcode():
			fmt.Fprintf(&b, "record %d: PDU %v, want a %s\n", i, r.PDU, w.Header.Opcode())
		}
		if b.Len() > 2000 {
			break
		}
	}
	return b.String()
}

// pduOffsets returns the offset of every PDU in a stream encoded from ms.
func pduOffsets(ms []msg, hd, dd bool) []int {
	var offs []int
	off := 0
	for _, m := range ms {
		offs = append(offs, off)
		off += pduLen(m, hd, dd)
	}
	return offs
}

// pduLen returns the length of m on the wire.
func pduLen(m msg, hd, dd bool) int {
	if isLogin(m.p.Opcode()) {
		hd, dd = false, false
	}
	n := pdu.BHSLen + len(m.ahs) + len(m.data) + padLen(len(m.data))
	if hd {
		n += 4
	}
	if dd && len(m.data) > 0 {
		n += 4
	}
	return n
}

// chunks splits b into pieces of random lengths from 1 to max.
func chunks(b []byte, maxLen int, r *rand.Rand) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		n := 1
		if maxLen > 1 {
			n += r.IntN(maxLen)
		}
		n = min(n, len(b))
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

// asRecords turns PDUs as sent into records, to compare with diff.
func asRecords(ss []sent) []Record {
	rs := make([]Record, len(ss))
	for i, s := range ss {
		p, err := pdu.Decode(&s.Header)
		rs[i] = Record{Header: s.Header, AHS: s.AHS, Data: s.Data, PDU: p, Err: err}
	}
	return rs
}

// loginEnds reports whether h is a login PDU that moves to full feature
// phase, after which digests take effect.
func loginEnds(h *pdu.BHS) bool {
	return isLogin(h.Opcode()) && h[1]&0x80 != 0 && h[1]&3 == pdu.StageFullFeature
}

// negotiate rewrites the login PDUs of ms to negotiate the digests given,
// so that tshark, which follows the negotiation, expects them.
func negotiate(ms []msg, hd, dd bool) []msg {
	val := func(on bool) string {
		if on {
			return "CRC32C"
		}
		return "None"
	}
	out := slices.Clone(ms)
	for i, m := range out {
		if isLogin(m.p.Opcode()) {
			out[i].data = text("InitiatorName=iqn.2026-01.com.example:ini", "TargetName=iqn.2026-01.com.example:tgt",
				"SessionType=Normal", "HeaderDigest="+val(hd), "DataDigest="+val(dd))
		}
	}
	return out
}
