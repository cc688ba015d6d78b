package fuzz

import (
	"bytes"
	"testing"

	"github.com/goiscsi/iscsi/pdu"
)

type item struct {
	p         pdu.PDU
	ahs, data []byte
}

var seq = pdu.SeqNums{StatSN: 0x31323334, ExpCmdSN: 0x41424344, MaxCmdSN: 0x51525354}

// seedPDUs is one valid PDU of each opcode, some with AHS or data of odd
// length.
func seedPDUs() []item {
	cdb := [16]byte{0x28, 0, 0, 0, 0, 0x10, 0, 0, 8}
	isid := [6]byte{0x80, 0x12, 0x34, 0x56, 0x78, 0x9a}
	login := []byte("InitiatorName=iqn.2026-01.org.goiscsi:fuzz\x00SessionType=Normal\x00AuthMethod=CHAP,None\x00")
	return []item{
		{&pdu.NOPOut{Immediate: true, ITT: 1, TTT: 0xffffffff, CmdSN: 2, ExpStatSN: 3}, nil, []byte("ping")},
		{&pdu.SCSICommand{Final: true, Read: true, Attr: pdu.AttrSimple, LUN: pdu.MakeLUN(1), ITT: 2, ExpectedDataTransferLength: 4096, CmdSN: 3, ExpStatSN: 4, CDB: cdb},
			[]byte{0, 5, 1, 0, 1, 2, 3, 4}, []byte{1, 2, 3}},
		{&pdu.TaskMgmtRequest{Immediate: true, Function: pdu.TMFAbortTask, ITT: 3, RefTaskTag: 2, CmdSN: 4, RefCmdSN: 3}, nil, nil},
		{&pdu.LoginRequest{Transit: true, CSG: pdu.StageSecurity, NSG: pdu.StageOperational, ISID: isid, ITT: 4}, nil, login},
		{&pdu.TextRequest{Final: true, ITT: 5, TTT: 0xffffffff, CmdSN: 5}, nil, []byte("SendTargets=All\x00")},
		{&pdu.DataOut{Final: true, ITT: 2, TTT: 7, DataSN: 1, BufferOffset: 512}, nil, bytes.Repeat([]byte{0xa5}, 511)},
		{&pdu.LogoutRequest{Immediate: true, ReasonCode: pdu.LogoutCloseConnection, ITT: 6, CID: 1, CmdSN: 6}, nil, nil},
		{&pdu.SNACKRequest{Type: pdu.SNACKData, ITT: 2, BegRun: 1, RunLength: 1}, nil, nil},
		{&pdu.NOPIn{ITT: 0xffffffff, TTT: 8, SeqNums: seq}, nil, nil},
		{&pdu.SCSIResponse{Status: pdu.StatusCheckCondition, ITT: 2, SeqNums: seq, Underflow: true, ResidualCount: 10},
			nil, []byte{0, 18, 0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0}},
		{&pdu.TaskMgmtResponse{Response: pdu.TMFNoSuchTask, ITT: 3, SeqNums: seq}, nil, nil},
		{&pdu.LoginResponse{Transit: true, CSG: 1, NSG: 3, VersionActive: 0, ISID: isid, TSIH: 7, ITT: 4, SeqNums: seq}, nil,
			[]byte("HeaderDigest=None\x00DataDigest=None\x00MaxRecvDataSegmentLength=262144\x00")},
		{&pdu.TextResponse{Final: true, ITT: 5, TTT: 0xffffffff, SeqNums: seq}, nil,
			[]byte("TargetName=iqn.2003-01.org.linux-iscsi:t1\x00TargetAddress=127.0.0.1:3260,1\x00")},
		{&pdu.DataIn{Final: true, HasStatus: true, ITT: 2, TTT: 0xffffffff, SeqNums: seq, DataSN: 0}, nil, bytes.Repeat([]byte{0x5a}, 37)},
		{&pdu.LogoutResponse{ITT: 6, SeqNums: seq, Time2Wait: 2, Time2Retain: 20}, nil, nil},
		{&pdu.R2T{ITT: 2, TTT: 7, SeqNums: seq, R2TSN: 0, BufferOffset: 512, DesiredDataTransferLength: 512}, nil, nil},
		{&pdu.AsyncMessage{ITT: 0xffffffff, SeqNums: seq, AsyncEvent: pdu.AsyncLogoutRequest, Parameter3: 5}, nil, nil},
		{&pdu.Reject{Reason: pdu.RejectProtocolError, ITT: 0xffffffff, SeqNums: seq}, nil, make([]byte, 48)},
	}
}

func encode(tb testing.TB, items []item, hd, dd bool) []byte {
	var buf bytes.Buffer
	w := pdu.NewWriter(&buf)
	w.SetDigests(hd, dd)
	for _, it := range items {
		if err := w.Append(it.p, it.ahs, it.data); err != nil {
			tb.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// readerSeeds are FuzzReader inputs: a mode byte, then a stream.
func readerSeeds(tb testing.TB) [][]byte {
	var seeds [][]byte
	items := seedPDUs()
	var ini, tgt []item
	for _, it := range items {
		if it.p.Opcode().Direction() == pdu.FromInitiator {
			ini = append(ini, it)
		} else {
			tgt = append(tgt, it)
		}
	}
	for m := range 4 {
		hd, dd := m&1 != 0, m&2 != 0
		// Each PDU alone, in both read modes.
		for _, it := range items {
			for _, skip := range []mode{0, 4} {
				seeds = append(seeds, append([]byte{byte(m) | byte(skip)}, encode(tb, []item{it}, hd, dd)...))
			}
		}
		// Each side's whole stream, with the Reader taking that side.
		seeds = append(seeds, append([]byte{byte(m) | 1<<3}, encode(tb, ini, hd, dd)...))
		seeds = append(seeds, append([]byte{byte(m) | 2<<3}, encode(tb, tgt, hd, dd)...))
	}
	for _, s := range pcapSeeds(tb) {
		seeds = append(seeds, append([]byte{s.mode}, s.stream...))
	}
	return seeds
}

func textSeeds() []string {
	return []string{
		"",
		"InitiatorName=iqn.2026-01.org.goiscsi:fuzz\x00SessionType=Normal\x00AuthMethod=CHAP,None\x00",
		"TargetName=iqn.a\x00TargetAddress=10.0.0.1:3260,1\x00TargetAddress=[fe80::1]:3260,1\x00",
		"CHAP_A=5\x00CHAP_I=1\x00CHAP_C=0xabcdef0123456789abcdef0123456789\x00",
		"CHAP_N=user\x00CHAP_R=0bq83vASNFZ4mrze8BI0VniQ==\x00",
		"CHAP_C=0xabc\x00",
		"CHAP_C=0bAAEC\x00",
		"MaxBurstLength=0x40000\x00FirstBurstLength=65536\x00",
		"X#NodeArchitecture=goiscsi/0.1\x00X-com.example.Key=1~2\x00",
		"HeaderDigest=CRC32C,None\x00DataDigest=None\x00\x00\x00",
		"ErrorRecoveryLevel=0\x00InitialR2T=Yes\x00ImmediateData=No\x00",
		"A=1\x00A=2\x00",
		"Broken\x00",
		"A=1",
	}
}
