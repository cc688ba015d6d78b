package capture

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/bits"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

// requireTshark skips the test when tshark is not installed, or fails it
// in CI (CI=true), where it must be.
func requireTshark(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("tshark"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("tshark is required in CI: %v", err)
		}
		t.Skipf("tshark not on PATH (apt-get install tshark): %v", err)
	}
}

// tshark runs tshark on a capture, dissecting the given TCP ports as iSCSI,
// and returns its standard output.
func tshark(t *testing.T, path string, ports []uint16, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	all := []string{"-r", path, "-n"}
	for _, p := range ports {
		if p != DefaultPort {
			all = append(all, "-d", fmt.Sprintf("tcp.port==%d,iscsi", p))
		}
	}
	cmd := exec.CommandContext(ctx, "tshark", append(all, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark %s: %v\n%s", strings.Join(cmd.Args[1:], " "), err, stderr.Bytes())
	}
	return out
}

// tsharkPDU is one iSCSI PDU as tshark dissects it: its top-level fields,
// without the subtrees (such as a Reject's copy of the rejected header).
type tsharkPDU map[string]string

// tsharkPDUs returns the iSCSI PDUs tshark finds in a capture, by frame.
func tsharkPDUs(t *testing.T, path string, ports []uint16) map[int][]tsharkPDU {
	t.Helper()
	out := tshark(t, path, ports, "-T", "json", "--no-duplicate-keys", "-J", "frame iscsi", "-Y", "iscsi")
	var frames []struct {
		Source struct {
			Layers map[string]json.RawMessage `json:"layers"`
		} `json:"_source"`
	}
	if err := json.Unmarshal(out, &frames); err != nil {
		t.Fatalf("tshark JSON: %v", err)
	}
	byFrame := make(map[int][]tsharkPDU)
	for _, f := range frames {
		var frame map[string]any
		if err := json.Unmarshal(f.Source.Layers["frame"], &frame); err != nil {
			t.Fatal(err)
		}
		n, err := strconv.Atoi(fmt.Sprint(frame["frame.number"]))
		if err != nil {
			t.Fatalf("frame.number %v", frame["frame.number"])
		}
		raw := f.Source.Layers["iscsi"]
		var list []map[string]any
		if len(raw) > 0 && raw[0] == '[' {
			if err := json.Unmarshal(raw, &list); err != nil {
				t.Fatal(err)
			}
		} else {
			var one map[string]any
			if err := json.Unmarshal(raw, &one); err != nil {
				t.Fatal(err)
			}
			list = []map[string]any{one}
		}
		for _, m := range list {
			p := tsharkPDU{}
			for k, v := range m {
				if s, ok := v.(string); ok && strings.HasPrefix(k, "iscsi.") {
					p[k] = s
				}
			}
			byFrame[n] = append(byFrame[n], p)
		}
	}
	return byFrame
}

// tsharkProblems returns the frames tshark finds malformed or flags with an
// expert info of the given severity or worse ("error", "warning").
func tsharkProblems(t *testing.T, path string, ports []uint16, severity string) string {
	t.Helper()
	filter := "_ws.malformed || _ws.expert.severity >= " + severity
	return strings.TrimSpace(string(tshark(t, path, ports, "-Y", filter)))
}

// fieldOffsets says where in the header tshark's fields are, by the side
// that sends the PDU; "" for fields both sides carry at one place.
var fieldOffsets = map[string]map[pdu.Direction]int{
	"iscsi.initiatortasktag":  {0: 16},
	"iscsi.targettransfertag": {0: 20},
	"iscsi.cmdsn":             {pdu.FromInitiator: 24},
	"iscsi.expstatsn":         {pdu.FromInitiator: 28},
	"iscsi.statsn":            {pdu.FromTarget: 24},
	"iscsi.expcmdsn":          {pdu.FromTarget: 28},
	"iscsi.maxcmdsn":          {pdu.FromTarget: 32},
	"iscsi.datasn":            {0: 36},
	"iscsi.r2tsn":             {pdu.FromTarget: 36},
	"iscsi.bufferOffset":      {0: 40},
}

// compareTshark checks that tshark found the same PDUs in the same frames,
// with the same opcode, lengths, digests and, wherever it shows them, the
// same task tags and sequence numbers.
func compareTshark(t *testing.T, rs []Record, byFrame map[int][]tsharkPDU) {
	t.Helper()
	ours := make(map[int][]Record)
	for _, r := range rs {
		ours[r.Frame] = append(ours[r.Frame], r)
	}
	frames := slices.Sorted(func(yield func(int) bool) {
		seen := map[int]bool{}
		for f := range ours {
			seen[f] = true
		}
		for f := range byFrame {
			seen[f] = true
		}
		for f := range seen {
			if !yield(f) {
				return
			}
		}
	})
	problems := 0
	fail := func(format string, args ...any) {
		t.Helper()
		if problems++; problems <= 20 {
			t.Errorf(format, args...)
		}
	}
	checked := 0
	for _, f := range frames {
		rs, ts := ours[f], byFrame[f]
		if len(rs) != len(ts) {
			fail("frame %d: we decode %d PDUs %v, tshark %d %v", f, len(rs), opcodes(rs), len(ts), ts)
			continue
		}
		for i, r := range rs {
			tp := ts[i]
			num := func(k string) (uint64, bool) {
				s, ok := tp[k]
				if !ok {
					return 0, false
				}
				v, err := strconv.ParseUint(s, 0, 64)
				if err != nil {
					fail("frame %d: %s=%q", f, k, s)
					return 0, false
				}
				return v, true
			}
			want := map[string]uint64{
				"iscsi.opcode":            uint64(r.Header.Opcode()),
				"iscsi.datasegmentlength": uint64(r.Header.DataSegmentLength()),
				"iscsi.totalahslength":    uint64(r.Header[4]),
			}
			// tshark shows a digest as its four bytes read big-endian.
			if r.HeaderDigest != 0 {
				want["iscsi.headerdigest32"] = uint64(bits.ReverseBytes32(r.HeaderDigest))
			}
			if r.DataDigest != 0 {
				want["iscsi.datadigest32"] = uint64(bits.ReverseBytes32(r.DataDigest))
			}
			for k, w := range want {
				got, ok := num(k)
				if !ok && k != "iscsi.opcode" && k != "iscsi.headerdigest32" {
					continue // tshark leaves the lengths out for some opcodes
				}
				if !ok || got != w {
					fail("frame %d PDU %d (%s): %s = %q, want %d", f, i, r.Header.Opcode(), k, tp[k], w)
				}
			}
			dir := r.Header.Opcode().Direction()
			for k, where := range fieldOffsets {
				got, ok := num(k)
				if !ok {
					continue
				}
				off, ok := where[dir]
				if !ok {
					off, ok = where[0]
				}
				if !ok {
					fail("frame %d PDU %d (%s): tshark shows %s", f, i, r.Header.Opcode(), k)
					continue
				}
				if w := uint64(be32(r.Header[off:])); got != w {
					fail("frame %d PDU %d (%s): %s = %d, we have %d", f, i, r.Header.Opcode(), k, got, w)
				}
				checked++
			}
		}
	}
	if problems > 20 {
		t.Errorf("... and %d more differences", problems-20)
	}
	if len(rs) > 0 && checked == 0 {
		t.Error("tshark showed no task tag or sequence number to compare")
	}
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func opcodes(rs []Record) []string {
	var s []string
	for _, r := range rs {
		s = append(s, r.Header.Opcode().String())
	}
	return s
}

// checkReencode checks that every decoded PDU marshals back to its header.
func checkReencode(t *testing.T, rs []Record) {
	t.Helper()
	bad := 0
	for _, r := range rs {
		if r.PDU == nil {
			t.Errorf("frame %d: %s did not decode: %v", r.Frame, r.Header.Opcode(), r.Err)
			continue
		}
		var h pdu.BHS
		r.PDU.MarshalBHS(&h)
		h.SetLengths(len(r.AHS), len(r.Data))
		if h != r.Header {
			if bad++; bad <= 10 {
				t.Errorf("frame %d: %s re-encodes differently\n got %x\nwant %x", r.Frame, r.Header.Opcode(), h, r.Header)
			}
		}
	}
}

// TestTshark records conversations through a Tap on port 3260 and checks
// tshark's dissection against the records ReadFile decodes and against what
// was sent.
func TestTshark(t *testing.T) {
	requireTshark(t)
	cases := []struct {
		name    string
		hd      bool
		mss     int
		batched bool
	}{
		{"plain", false, 0, false},
		{"small-segments", false, 1000, false},
		{"batched", false, 1460, true},
		// Wireshark finds header digests by their CRC; it has no way to
		// dissect data digests, so they are not checked here.
		{"header-digest", true, 1460, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), c.name+".pcap")
			ini, tgt := net.Pipe()
			tap, err := NewFileTap(ini, path, TapOptions{MSS: c.mss})
			if err != nil {
				t.Fatal(err)
			}
			var want [2][]sent
			if c.batched {
				want = converseBatched(t, tap, tgt)
			} else {
				want = converse(t, tap, tgt, c.hd, false)
			}
			if err := tap.Err(); err != nil {
				t.Fatal(err)
			}
			rs, err := ReadFile(path, Options{HeaderDigest: c.hd})
			if err != nil {
				t.Fatal(err)
			}
			checkBoth(t, rs, want)
			checkReencode(t, rs)
			if p := tsharkProblems(t, path, nil, "warning"); p != "" {
				t.Errorf("tshark finds problems:\n%s", p)
			}
			compareTshark(t, rs, tsharkPDUs(t, path, nil))
		})
	}
}

// converseBatched sends each side's PDUs in batches through a bufio.Writer,
// so that segments carry several PDUs, split anywhere.
func converseBatched(t *testing.T, ini, tgt net.Conn) [2][]sent {
	t.Helper()
	ims, tms := initiatorMsgs(), targetMsgs()
	_, wantIni := encode(t, ims, false, false)
	_, wantTgt := encode(t, tms, false, false)
	errc := make(chan error, 1)
	go func() {
		r := pdu.NewReader(tgt, pdu.ReaderConfig{From: pdu.FromInitiator, MaxDataSegmentLength: 1 << 20})
		for range ims {
			if _, err := r.Next(); err != nil {
				errc <- err
				return
			}
		}
		bw := bufio.NewWriterSize(tgt, 3000)
		w := pdu.NewWriter(bw)
		for _, m := range tms {
			if err := w.WritePDU(m.p, m.data); err != nil {
				errc <- err
				return
			}
		}
		errc <- bw.Flush()
	}()
	bw := bufio.NewWriterSize(ini, 2000)
	w := pdu.NewWriter(bw)
	for _, m := range ims {
		if err := w.Append(m.p, m.ahs, m.data); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	r := pdu.NewReader(ini, pdu.ReaderConfig{From: pdu.FromTarget, MaxDataSegmentLength: 1 << 20})
	for range tms {
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	ini.Close()
	tgt.Close()
	return [2][]sent{wantIni, wantTgt}
}
