package iscsitest

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

func TestSCSICommands(t *testing.T) {
	tg := newTarget(t, Config{LUNs: []int64{64 << 20, 1 << 20}})
	i := dial(t, tg)
	i.login(loginOpts{})
	type check func(t *testing.T, r scsiRes)
	good := func(n int) check {
		return func(t *testing.T, r scsiRes) {
			if r.status != pdu.StatusGood || len(r.data) != n {
				k, a, q := r.senseKey()
				t.Fatalf("status %#x sense %x/%x/%x, %d bytes, want GOOD with %d", r.status, k, a, q, len(r.data), n)
			}
		}
	}
	fails := func(key, asc, ascq byte) check {
		return func(t *testing.T, r scsiRes) {
			if k, a, q := r.senseKey(); r.status != pdu.StatusCheckCondition || k != key || a != asc || q != ascq {
				t.Fatalf("status %#x sense %x/%x/%x, want CHECK CONDITION %x/%x/%x", r.status, k, a, q, key, asc, ascq)
			}
		}
	}
	both := func(cs ...check) check {
		return func(t *testing.T, r scsiRes) {
			for _, c := range cs {
				c(t, r)
			}
		}
	}
	blocks := uint64(64 << 20 / BlockSize)
	for _, tc := range []struct {
		name string
		lun  int
		cdb  []byte
		edtl uint32
		ok   check
	}{
		{"TEST UNIT READY", 0, []byte{opTestUnitReady, 0, 0, 0, 0, 0}, 0, good(0)},
		{"INQUIRY", 0, []byte{opInquiry, 0, 0, 0, 96, 0}, 96, both(good(66), func(t *testing.T, r scsiRes) {
			if r.data[0] != 0 || string(r.data[8:16]) != "GOISCSI " || !r.under || r.resid != 30 {
				t.Fatalf("INQUIRY %q, underflow %v residual %d", r.data, r.under, r.resid)
			}
		})},
		{"INQUIRY short", 0, []byte{opInquiry, 0, 0, 0, 36, 0}, 36, good(36)},
		{"INQUIRY VPD 0x00", 0, []byte{opInquiry, 1, 0x00, 0, 255, 0}, 255, both(good(9), func(t *testing.T, r scsiRes) {
			if !bytes.Equal(r.data[4:], []byte{0x00, 0x80, 0x83, 0xb0, 0xb1}) {
				t.Fatalf("pages % x", r.data[4:])
			}
		})},
		{"INQUIRY VPD 0x80", 1, []byte{opInquiry, 1, 0x80, 0, 255, 0}, 255, func(t *testing.T, r scsiRes) {
			if r.status != 0 || r.data[1] != 0x80 || !bytes.HasSuffix(r.data, []byte("0001")) {
				t.Fatalf("serial %q", r.data)
			}
		}},
		{"INQUIRY VPD 0x83", 0, []byte{opInquiry, 1, 0x83, 1, 0, 0}, 256, func(t *testing.T, r scsiRes) {
			if r.status != 0 || !bytes.Contains(r.data, []byte(DefaultName)) || r.data[4+4]>>4 != 6 {
				t.Fatalf("device identification % x", r.data)
			}
		}},
		{"INQUIRY VPD 0x42", 0, []byte{opInquiry, 1, 0x42, 0, 255, 0}, 255, fails(5, 0x24, 0)},
		{"INQUIRY page without EVPD", 0, []byte{opInquiry, 0, 0x80, 0, 255, 0}, 255, fails(5, 0x24, 0)},
		{"INQUIRY no LUN", 7, []byte{opInquiry, 0, 0, 0, 36, 0}, 36, both(good(36), func(t *testing.T, r scsiRes) {
			if r.data[0] != 0x7f {
				t.Fatalf("peripheral %#x, want 0x7f", r.data[0])
			}
		})},
		{"TEST UNIT READY no LUN", 7, []byte{opTestUnitReady, 0, 0, 0, 0, 0}, 0, fails(5, 0x25, 0)},
		{"READ CAPACITY(10)", 0, []byte{opReadCapacity10, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 8, both(good(8), func(t *testing.T, r scsiRes) {
			if binary.BigEndian.Uint32(r.data) != uint32(blocks-1) || binary.BigEndian.Uint32(r.data[4:]) != 512 {
				t.Fatalf("capacity % x", r.data)
			}
		})},
		{"READ CAPACITY(16)", 1, []byte{opServiceActionIn16, saReadCapacity16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, 32,
			both(good(32), func(t *testing.T, r scsiRes) {
				if binary.BigEndian.Uint64(r.data) != 2047 || binary.BigEndian.Uint32(r.data[8:]) != 512 {
					t.Fatalf("capacity % x", r.data)
				}
			})},
		{"REPORT LUNS", 0, []byte{opReportLUNs, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, 256, both(good(24), func(t *testing.T, r scsiRes) {
			if binary.BigEndian.Uint32(r.data) != 16 || binary.BigEndian.Uint64(r.data[16:]) != uint64(pdu.MakeLUN(1)) {
				t.Fatalf("REPORT LUNS % x", r.data)
			}
		})},
		{"REPORT LUNS too short", 0, []byte{opReportLUNs, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0}, 8, fails(5, 0x24, 0)},
		{"MODE SENSE(6)", 0, []byte{opModeSense6, 0, 0x3f, 0, 255, 0}, 255, both(good(44), func(t *testing.T, r scsiRes) {
			if r.data[0] != 43 || r.data[3] != 8 || r.data[12] != 0x08 || r.data[32] != 0x0a {
				t.Fatalf("MODE SENSE % x", r.data)
			}
		})},
		{"MODE SENSE(10) saved", 0, []byte{opModeSense10, 0, 0xff, 0, 0, 0, 0, 1, 0, 0}, 256, fails(5, 0x39, 0)},
		{"SYNCHRONIZE CACHE", 0, []byte{opSynchronizeCache, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0, good(0)},
		{"REQUEST SENSE", 0, []byte{opRequestSense, 0, 0, 0, 18, 0}, 18, good(18)},
		{"unknown opcode", 0, []byte{0xc5, 0, 0, 0, 0, 0}, 0, fails(5, 0x20, 0)},
		{"READ past the end", 0, read10(uint32(blocks-1), 2), 1024, fails(5, 0x21, 0)},
		{"READ with RDPROTECT", 0, []byte{opRead10, 0x20, 0, 0, 0, 0, 0, 0, 1, 0}, 512, fails(5, 0x24, 0)},
		{"READ short EDTL", 0, read10(0, 2), 512, both(good(512), func(t *testing.T, r scsiRes) {
			if !r.over || r.resid != 512 {
				t.Fatalf("overflow %v residual %d", r.over, r.resid)
			}
		})},
		{"READ(16)", 1, []byte{opRead16, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 4, 0, 0}, 2048, good(2048)},
		{"READ(6)", 0, []byte{opRead6, 0, 0, 1, 1, 0}, 512, good(512)},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.ok(t, i.cmd(tc.lun, tc.cdb, nil, tc.edtl)) })
	}
}

func TestWriteResiduals(t *testing.T) {
	tg := newTarget(t, Config{ImmediateData: true})
	i := dial(t, tg)
	i.login(loginOpts{})
	data := pattern(2048, 5)
	i.write(0, 0, bytes.Repeat([]byte{'a'}, 2048))
	// EDTL above the transfer length: one block written, underflow.
	if r := i.cmd(0, write10(0, 1), data[:1024], 0); r.status != 0 || !r.under || r.resid != 512 {
		t.Fatalf("EDTL 2 blocks for 1: %+v", r)
	}
	// EDTL below it: what EDTL covers is written, overflow.
	if r := i.cmd(0, write10(2, 2), data[:512], 0); r.status != 0 || !r.over || r.resid != 512 {
		t.Fatalf("EDTL 1 block for 2: %+v", r)
	}
	got := tg.LUNData(0)[:2048]
	if !bytes.Equal(got[:512], data[:512]) || !bytes.Equal(got[512:1024], bytes.Repeat([]byte{'a'}, 512)) ||
		!bytes.Equal(got[1024:1536], data[:512]) || !bytes.Equal(got[1536:], bytes.Repeat([]byte{'a'}, 512)) {
		t.Fatal("residual writes wrote the wrong blocks")
	}
	// Not whole blocks.
	if r := i.cmd(0, write10(0, 1), data[:200], 0); r.status != pdu.StatusCheckCondition || !r.over || r.resid != 312 {
		t.Fatalf("EDTL 200 for 1 block: %+v", r)
	}
	// A write without data writes nothing.
	if r := i.cmd(0, write10(0, 1), nil, 0); r.status != 0 || !r.over || r.resid != 512 {
		t.Fatalf("EDTL 0 for 1 block: %+v", r)
	}
}

func TestCmdSNWindow(t *testing.T) {
	tg := newTarget(t, Config{QueueDepth: 4})
	i := dial(t, tg)
	i.login(loginOpts{})
	nop := func(itt, cmdSN uint32, immediate bool) {
		i.send(&pdu.NOPOut{Immediate: immediate, ITT: itt, TTT: 0xffffffff, CmdSN: cmdSN}, nil)
	}
	exp := *i.cmdSN
	if i.maxCmdSN != exp+3 {
		t.Fatalf("MaxCmdSN %d with ExpCmdSN %d and QueueDepth 4", i.maxCmdSN, exp)
	}
	// Beyond MaxCmdSN, and already received: ignored (RFC 7143 §4.2.2.1).
	nop(1, exp+4, false)
	nop(2, exp-1, false)
	i.expectSilence(100 * time.Millisecond)
	if st := tg.Stats(); st.Dropped != 2 {
		t.Fatalf("Stats().Dropped = %d", st.Dropped)
	}
	// Out of order within the window: answered in CmdSN order.
	nop(3, exp+2, false)
	nop(4, exp+1, false)
	i.expectSilence(50 * time.Millisecond)
	nop(5, exp+77, true) // immediate: at once, whatever its CmdSN
	if p, _ := i.recv(); p.(*pdu.NOPIn).ITT != 5 || p.(*pdu.NOPIn).ExpCmdSN != exp {
		t.Fatalf("immediate NOP: %+v", p)
	}
	nop(6, exp, false)
	for n, itt := range []uint32{6, 4, 3} {
		p, _ := i.recv()
		if in := p.(*pdu.NOPIn); in.ITT != itt || in.ExpCmdSN != exp+uint32(n)+1 || in.MaxCmdSN != exp+uint32(n)+4 {
			t.Fatalf("NOP-In %d: %+v, want ITT %d", n, in, itt)
		}
	}
}

func TestTaskManagement(t *testing.T) {
	tg := newTarget(t, Config{InitialR2T: true, LUNs: []int64{1 << 20}})
	i := dial(t, tg)
	i.login(loginOpts{op: []pdu.KV{{Key: "ImmediateData", Value: "No"}}})
	other := dial(t, tg)
	other.isid[5] = 2
	other.login(loginOpts{})
	tmf := func(fn pdu.TMFunction, lun int, ref, refCmdSN uint32) pdu.TMResponse {
		t.Helper()
		itt := i.nextITT()
		p := i.sendExpect(&pdu.TaskMgmtRequest{Immediate: true, Function: fn, LUN: pdu.MakeLUN(lun), ITT: itt,
			RefTaskTag: ref, CmdSN: *i.cmdSN, RefCmdSN: refCmdSN}, nil)
		r, ok := p.(*pdu.TaskMgmtResponse)
		if !ok || r.ITT != itt {
			t.Fatalf("got %s %+v, want a TMF response", p.Opcode(), p)
		}
		return r.Response
	}

	// Abort a write waiting for its data: no response for it, its Data-Out
	// is ignored.
	itt := i.nextITT()
	c := &pdu.SCSICommand{Final: true, Write: true, ITT: itt, ExpectedDataTransferLength: 4096, CmdSN: *i.cmdSN}
	copy(c.CDB[:], write10(0, 8))
	r2t, ok := i.sendExpect(c, nil).(*pdu.R2T)
	*i.cmdSN++
	if !ok {
		t.Fatal("no R2T")
	}
	if r := tmf(pdu.TMFAbortTask, 0, itt, *i.cmdSN-1); r != pdu.TMFComplete {
		t.Fatalf("ABORT TASK: %s", r.String())
	}
	i.send(&pdu.DataOut{Final: true, ITT: itt, TTT: r2t.TTT}, make([]byte, 4096))
	i.nop(nil)
	if r := tmf(pdu.TMFAbortTask, 0, 0x999, *i.cmdSN-1); r != pdu.TMFNoSuchTask {
		t.Fatalf("ABORT TASK of nothing: %s", r.String())
	}

	// Abort a command that never came: its CmdSN counts as received.
	if r := tmf(pdu.TMFAbortTask, 0, 0x777, *i.cmdSN); r != pdu.TMFNoSuchTask {
		t.Fatalf("ABORT TASK of the current CmdSN: %s", r.String())
	}
	lost := *i.cmdSN
	*i.cmdSN++
	if r := tmf(pdu.TMFAbortTask, 0, 0x778, lost); r != pdu.TMFComplete {
		t.Fatalf("ABORT TASK of a lost command: %s", r.String())
	}
	i.send(&pdu.NOPOut{ITT: 0x55, TTT: 0xffffffff, CmdSN: *i.cmdSN}, nil)
	*i.cmdSN++
	if p, _ := i.recv(); p.(*pdu.NOPIn).ITT != 0x55 {
		t.Fatalf("NOP after the lost command: %+v", p)
	}

	// LUN RESET: a unit attention for the other session.
	if r := tmf(pdu.TMFLogicalUnitReset, 0, 0, 0); r != pdu.TMFComplete {
		t.Fatalf("LUN RESET: %s", r.String())
	}
	if r := tmf(pdu.TMFLogicalUnitReset, 3, 0, 0); r != pdu.TMFNoSuchLUN {
		t.Fatalf("LUN RESET of LUN 3: %s", r.String())
	}
	tur := []byte{opTestUnitReady, 0, 0, 0, 0, 0}
	if r := other.cmd(0, tur, nil, 0); r.status != pdu.StatusCheckCondition {
		t.Fatalf("TUR after a LUN RESET from another session: %+v", r)
	} else if k, a, q := r.senseKey(); k != 6 || a != 0x29 || q != 3 {
		t.Fatalf("sense %x/%x/%x", k, a, q)
	}
	if r := other.cmd(0, tur, nil, 0); r.status != 0 {
		t.Fatalf("second TUR: %+v", r)
	}
	if r := i.cmd(0, tur, nil, 0); r.status != 0 {
		t.Fatalf("TUR of the resetting session: %+v", r)
	}
	if r := tmf(pdu.TMFTaskReassign, 0, 1, 0); r != pdu.TMFReassignUnsupported {
		t.Fatalf("TASK REASSIGN: %s", r.String())
	}
	if r := tmf(42, 0, 0, 0); r != pdu.TMFNotSupported {
		t.Fatalf("function 42: %s", r.String())
	}
}

func TestUnitAttentionOnLogin(t *testing.T) {
	tg := newTarget(t, Config{UnitAttentionOnLogin: true})
	i := dial(t, tg)
	i.login(loginOpts{})
	if r := i.cmd(0, []byte{opInquiry, 0, 0, 0, 36, 0}, nil, 36); r.status != 0 {
		t.Fatalf("INQUIRY: %+v", r)
	}
	tur := []byte{opTestUnitReady, 0, 0, 0, 0, 0}
	if r := i.cmd(0, tur, nil, 0); r.status != pdu.StatusCheckCondition {
		t.Fatalf("first TUR: %+v", r)
	} else if k, a, _ := r.senseKey(); k != 6 || a != 0x29 {
		t.Fatalf("sense %x/%x", k, a)
	}
	if r := i.cmd(0, tur, nil, 0); r.status != 0 {
		t.Fatalf("second TUR: %+v", r)
	}
}
