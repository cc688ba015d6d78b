package session

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/goiscsi/iscsi/pdu"
)

func newWindowSession(exp, maxSN uint32) *Session {
	return &Session{cmdSN: exp, expCmdSN: exp, maxCmdSN: maxSN, window: make(chan struct{}), ended: make(chan struct{})}
}

func windowClosedNow(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestUpdateWindow(t *testing.T) {
	tests := []struct {
		name             string
		exp, maxSN       uint32 // before
		uExp, uMax       uint32 // the update
		wantExp, wantMax uint32
		wantWake         bool
	}{
		{"opens", 10, 20, 11, 30, 11, 30, true},
		{"closed window is legal", 10, 20, 21, 20, 21, 20, false},
		{"MaxCmdSN < ExpCmdSN-1 ignored", 10, 20, 25, 23, 10, 20, false},
		{"MaxCmdSN does not move back", 10, 20, 12, 15, 12, 20, false},
		{"ExpCmdSN does not move back", 10, 20, 5, 20, 10, 20, false},
		{"wraps", 0xfffffff0, 0xfffffff8, 0xfffffffa, 0x00000005, 0xfffffffa, 0x00000005, true},
		{"wrapped ignore rule", 0xfffffff0, 0xfffffff8, 0x00000002, 0xffffffff, 0xfffffff0, 0xfffffff8, false},
		{"2^31 apart is undefined: ignored", 10, 20, 10, 10 + 1<<31, 10, 20, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newWindowSession(tt.exp, tt.maxSN)
			w := s.window
			s.windowWaited = true // as takeCmdSN does for a command that waits
			s.updateWindow(tt.uExp, tt.uMax)
			if s.expCmdSN != tt.wantExp || s.maxCmdSN != tt.wantMax {
				t.Errorf("ExpCmdSN %#x MaxCmdSN %#x, want %#x %#x", s.expCmdSN, s.maxCmdSN, tt.wantExp, tt.wantMax)
			}
			if windowClosedNow(w) != tt.wantWake {
				t.Errorf("waiters woken: %v, want %v", windowClosedNow(w), tt.wantWake)
			}
		})
	}
}

// TestUpdateWindowNoWaiter: while nobody waits for room, a MaxCmdSN that
// moves replaces no channel; a command that then finds the window full
// waits on one that the next move closes.
func TestUpdateWindowNoWaiter(t *testing.T) {
	s := newWindowSession(10, 11)
	w := s.window
	s.updateWindow(11, 12)
	if s.window != w || windowClosedNow(w) {
		t.Fatal("the window channel was replaced with nobody waiting")
	}
	for range 3 { // CmdSN 10, 11, 12
		if _, _, ok := s.takeCmdSN(); !ok {
			t.Fatal("no room in an open window")
		}
	}
	_, wait, ok := s.takeCmdSN()
	if ok || wait == nil {
		t.Fatal("room in a full window")
	}
	s.updateWindow(12, 13)
	if !windowClosedNow(wait) {
		t.Fatal("the waiter was not woken when MaxCmdSN moved")
	}
	if _, _, ok := s.takeCmdSN(); !ok {
		t.Fatal("no room once MaxCmdSN moved")
	}
}

func TestTakeCmdSNWraps(t *testing.T) {
	s := newWindowSession(0xfffffffe, 0x00000001)
	for _, want := range []uint32{0xfffffffe, 0xffffffff, 0, 1} {
		sn, _, ok := s.takeCmdSN()
		if !ok || sn != want {
			t.Fatalf("takeCmdSN %#x %v, want %#x", sn, ok, want)
		}
	}
	_, wait, ok := s.takeCmdSN()
	if ok {
		t.Fatal("window full but takeCmdSN succeeded")
	}
	s.updateWindow(2, 2)
	if !windowClosedNow(wait) {
		t.Fatal("window opened but the waiter was not woken")
	}
	if sn, _, ok := s.takeCmdSN(); !ok || sn != 2 {
		t.Fatalf("takeCmdSN %#x %v after the window opened", sn, ok)
	}
}

func TestSenseParsing(t *testing.T) {
	fixed := make([]byte, 18)
	fixed[0], fixed[2], fixed[7], fixed[12], fixed[13] = 0x70, 0x06, 10, 0x29, 0x00
	desc := []byte{0x72, 0x05, 0x24, 0x00, 0, 0, 0, 0}
	tests := []struct {
		name     string
		sense    []byte
		key      int
		asc      uint8
		ascq     uint8
		ascOK    bool
		contains string
	}{
		{"fixed", fixed, 6, 0x29, 0, true, "sense key 0x6, ASC/ASCQ 29/00"},
		{"fixed deferred", append([]byte{0x71}, fixed[1:]...), 6, 0x29, 0, true, "29/00"},
		{"descriptor", desc, 5, 0x24, 0, true, "sense key 0x5, ASC/ASCQ 24/00"},
		{"fixed, key only", fixed[:8], 6, 0, 0, false, "sense key 0x6"},
		{"one byte", []byte{0x70}, -1, 0, 0, false, "SCSI status 0x02"},
		{"descriptor, two bytes", desc[:2], 5, 0, 0, false, "sense key 0x5"},
		{"unknown format", []byte{0x00, 0x06, 0x29, 0x00}, -1, 0, 0, false, "SCSI status 0x02"},
		{"none", nil, -1, 0, 0, false, "SCSI status 0x02"},
	}
	for _, tt := range tests {
		e := &SCSIError{Status: pdu.StatusCheckCondition, Sense: tt.sense}
		if k := e.SenseKey(); k != tt.key {
			t.Errorf("%s: SenseKey %d, want %d", tt.name, k, tt.key)
		}
		asc, ascq, ok := e.ASC()
		if ok != tt.ascOK || asc != tt.asc || ascq != tt.ascq {
			t.Errorf("%s: ASC %02x/%02x %v", tt.name, asc, ascq, ok)
		}
		if !strings.Contains(e.Error(), tt.contains) {
			t.Errorf("%s: %q does not say %q", tt.name, e.Error(), tt.contains)
		}
	}
	if !IsUnitAttention(&SCSIError{Status: pdu.StatusCheckCondition, Sense: fixed}) {
		t.Error("UNIT ATTENTION not recognised")
	}
	if IsUnitAttention(&SCSIError{Status: pdu.StatusCheckCondition, Sense: desc}) || IsUnitAttention(errors.New("x")) {
		t.Error("UNIT ATTENTION where there is none")
	}
	if s := (&SCSIError{Response: pdu.RespTargetFailure}).Error(); !strings.Contains(s, "response 0x01") {
		t.Errorf("target failure: %q", s)
	}
}

// The sense segment of a SCSI Response: a 2-byte SenseLength, then the sense
// data. A segment shorter than it says is cut, not read past.
func TestSCSIResponseSense(t *testing.T) {
	tests := []struct {
		name string
		data []byte
		want []byte
	}{
		{"none", nil, nil},
		{"one byte", []byte{0x00}, nil},
		{"exact", []byte{0, 3, 0x70, 0, 6}, []byte{0x70, 0, 6}},
		{"SenseLength too long", []byte{0, 200, 0x70, 0}, []byte{0x70, 0}},
		{"SenseLength 0", []byte{0, 0, 1, 2}, nil},
	}
	for _, tt := range tests {
		tk := &task{done: make(chan struct{})}
		tk.scsiResponse(&pdu.SCSIResponse{Status: pdu.StatusCheckCondition}, tt.data)
		if string(tk.sense) != string(tt.want) || (tt.want == nil) != (tk.sense == nil) {
			t.Errorf("%s: sense %x, want %x", tt.name, tk.sense, tt.want)
		}
	}
}

func TestPortalAddr(t *testing.T) {
	tests := []struct{ in, want string }{
		{"10.0.0.1:3260,1", "10.0.0.1:3260"},
		{"10.0.0.1:3261", "10.0.0.1:3261"},
		{"10.0.0.1", "10.0.0.1:3260"},
		{"10.0.0.1,2", "10.0.0.1:3260"},
		{"[fe80::1]:3262,5", "[fe80::1]:3262"},
		{"[::1]", "[::1]:3260"},
		{"fe80::1", "[fe80::1]:3260"},
		{"target.example.com:860,1", "target.example.com:860"},
	}
	for _, tt := range tests {
		if got := portalAddr(tt.in); got != tt.want {
			t.Errorf("portalAddr(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if got, err := checkPortal(tt.in); err != nil || got != tt.want {
			t.Errorf("checkPortal(%q) = %q, %v", tt.in, got, err)
		}
	}
	for _, bad := range []string{"", ",1", ":3260", "host:0", "host:65536", "host:port", "a b:3260", "host/x:3260"} {
		if got, err := checkPortal(bad); err == nil {
			t.Errorf("checkPortal(%q) = %q, want an error", bad, got)
		}
	}
	dt := DiscoveredTarget{Name: "iqn.x", Portals: []string{"127.0.0.1:3260,1", "[::1]:3260,1"}}
	if a := dt.Addresses(); len(a) != 2 || a[0] != "127.0.0.1:3260" || a[1] != "[::1]:3260" {
		t.Errorf("Addresses %v", a)
	}
}

func TestReadWriteBlocks(t *testing.T) {
	s := newWindowSession(1, 1)
	ctx := context.Background()
	if err := s.Read(ctx, 1, 0, 512, make([]byte, 1000)); err == nil || !strings.Contains(err.Error(), "blocks") {
		t.Errorf("Read of a partial block: %v", err)
	}
	if err := s.Write(ctx, 1, 0, 0, make([]byte, 512)); err == nil || !strings.Contains(err.Error(), "blocks") {
		t.Errorf("Write with block size 0: %v", err)
	}
	cdb := rw16(0x88, 0x0102030405060708, 4096, 512)
	want := []byte{0x88, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 8, 0, 0}
	if string(cdb) != string(want) {
		t.Errorf("READ(16) CDB % x", cdb)
	}
}
