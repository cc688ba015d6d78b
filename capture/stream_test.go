package capture

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

var (
	iniAddr = netip.MustParseAddrPort("10.0.0.1:50000")
	tgtAddr = netip.MustParseAddrPort("10.0.0.2:3260")
)

type digestCase struct {
	name   string
	hd, dd bool
}

var digestCases = []digestCase{{"none", false, false}, {"header", true, false}, {"data", false, true}, {"both", true, true}}

// sides returns both directions' messages with their Stream direction.
func sides() []struct {
	name string
	ini  bool
	ms   []msg
} {
	return []struct {
		name string
		ini  bool
		ms   []msg
	}{{"initiator", true, initiatorMsgs()}, {"target", false, targetMsgs()}}
}

func newTestStream(ini bool, dc digestCase) *Stream {
	src, dst := iniAddr, tgtAddr
	if !ini {
		src, dst = dst, src
	}
	return NewStream(src, dst, ini, Options{HeaderDigest: dc.hd, DataDigest: dc.dd})
}

func dirOf(ini bool) pdu.Direction {
	if ini {
		return pdu.FromInitiator
	}
	return pdu.FromTarget
}

func TestStreamSplits(t *testing.T) {
	for _, dc := range digestCases {
		for _, side := range sides() {
			wire, want := encode(t, side.ms, dc.hd, dc.dd)
			if d := diff(asRecords(split(t, wire, dirOf(side.ini), dc.hd, dc.dd)), want); d != "" {
				t.Fatalf("pdu.Reader disagrees with what was sent: %s", d)
			}
			splits := map[string]func() [][]byte{
				"whole":  func() [][]byte { return [][]byte{wire} },
				"1-byte": func() [][]byte { return chunks(wire, 1, nil) },
				"random": func() [][]byte { return chunks(wire, 200, rand.New(rand.NewPCG(1, 2))) },
				"large":  func() [][]byte { return chunks(wire, 20000, rand.New(rand.NewPCG(3, 4))) },
			}
			for sname, mk := range splits {
				t.Run(fmt.Sprintf("%s/%s/%s", dc.name, side.name, sname), func(t *testing.T) {
					s := newTestStream(side.ini, dc)
					var rs []Record
					now := time.Unix(1000, 0)
					for i, c := range mk() {
						rs = s.Feed(now.Add(time.Duration(i)), c, rs)
					}
					rs = s.Close(rs)
					if d := diff(rs, want); d != "" {
						t.Fatal(d)
					}
					st := s.Stats()
					if st.Records != len(want) || st.Resyncs != 0 || st.Skipped != 0 || st.Truncated != 0 {
						t.Fatalf("stats %+v", st)
					}
					for _, r := range rs {
						if r.Src != s.src || r.Dst != s.dst || r.FromInitiator != side.ini {
							t.Fatalf("record addressed %v -> %v initiator=%v", r.Src, r.Dst, r.FromInitiator)
						}
						if isLogin(r.Header.Opcode()) {
							if r.HeaderDigest != 0 || r.DataDigest != 0 {
								t.Fatalf("%s with digests", r.Header.Opcode())
							}
						} else if dc.hd && r.HeaderDigest == 0 || dc.dd && len(r.Data) > 0 && r.DataDigest == 0 {
							t.Fatalf("%s: digests not kept: %x %x", r.Header.Opcode(), r.HeaderDigest, r.DataDigest)
						}
					}
				})
			}
		}
	}
}

// TestStreamMidStream starts the stream at every offset of the encoded
// conversation: the records must be exactly the PDUs that start at or after
// the cut.
func TestStreamMidStream(t *testing.T) {
	for _, dc := range digestCases {
		for _, side := range sides() {
			t.Run(dc.name+"/"+side.name, func(t *testing.T) {
				wire, want := encode(t, side.ms, dc.hd, dc.dd)
				offs := pduOffsets(side.ms, dc.hd, dc.dd)
				r := rand.New(rand.NewPCG(5, 6))
				// Every offset near a PDU boundary (headers, digests, the
				// ends of data segments), and a sample of the others.
				var cuts []int
				for _, o := range append(offs, len(wire)) {
					for c := max(0, o-70); c <= min(len(wire), o+70); c++ {
						cuts = append(cuts, c)
					}
				}
				for range 300 {
					cuts = append(cuts, r.IntN(len(wire)+1))
				}
				for _, cut := range cuts {
					first := len(offs)
					for i, o := range offs {
						if o >= cut {
							first = i
							break
						}
					}
					s := newTestStream(side.ini, dc)
					rs := s.Gap(nil)
					for _, c := range chunks(wire[cut:], 3000, r) {
						rs = s.Feed(time.Time{}, c, rs)
					}
					rs = s.Close(rs)
					if d := diff(rs, want[first:]); d != "" {
						t.Fatalf("cut at %d (PDU %d starts at %d): %s", cut, first, offsets(offs, first, len(wire)), d)
					}
					skipped := offsets(offs, first, len(wire)) - cut
					if st := s.Stats(); st.Skipped != skipped || st.Resyncs != 1 {
						t.Fatalf("cut at %d: skipped %d bytes, want %d; %d resyncs", cut, st.Skipped, skipped, st.Resyncs)
					}
				}
			})
		}
	}
}

func offsets(offs []int, i, end int) int {
	if i < len(offs) {
		return offs[i]
	}
	return end
}

// TestStreamGarbage puts bytes that are not PDUs between PDUs: the Stream
// must skip them and find the next PDU.
func TestStreamGarbage(t *testing.T) {
	wire, want := encode(t, targetMsgs(), false, false)
	offs := pduOffsets(targetMsgs(), false, false)
	// 100 bytes of nonsense after the third PDU.
	at := offs[3]
	junk := append(append(append([]byte{}, wire[:at]...), pattern(100, 9)...), wire[at:]...)
	s := newTestStream(false, digestCase{})
	rs := s.Feed(time.Time{}, junk, nil)
	rs = s.Close(rs)
	if d := diff(rs, want); d != "" {
		t.Fatal(d)
	}
	if st := s.Stats(); st.Resyncs != 1 || st.Skipped != 100 {
		t.Fatalf("stats %+v, want 1 resync and 100 bytes skipped", st)
	}
}

// TestStreamDigestMismatch corrupts a data segment: the record says so and
// the stream goes on.
func TestStreamDigestMismatch(t *testing.T) {
	ms := targetMsgs()
	wire, want := encode(t, ms, true, true)
	offs := pduOffsets(ms, true, true)
	wire[offs[2]+pdu.BHSLen+4+10] ^= 0xff // a data byte of the Data-In
	want[2].Data = append([]byte(nil), want[2].Data...)
	want[2].Data[10] ^= 0xff
	s := newTestStream(false, digestCase{hd: true, dd: true})
	rs := s.Close(s.Feed(time.Time{}, wire, nil))
	var de *pdu.DigestError
	if len(rs) != len(want) || !errors.As(rs[2].Err, &de) || !de.Data {
		t.Fatalf("%d records; record 2 error %v, want a data digest error", len(rs), rs[2].Err)
	}
	rs[2].Err = nil
	if d := diff(rs, want); d != "" {
		t.Fatal(d)
	}
	if st := s.Stats(); st.BadDigests != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestStreamBadFlags frames a PDU whose header pdu.Decode refuses: the
// record carries the error and no PDU, and the stream stays in step.
func TestStreamBadFlags(t *testing.T) {
	ms := targetMsgs()
	wire, want := encode(t, ms, false, false)
	offs := pduOffsets(ms, false, false)
	wire[offs[4]+1] |= 0x06 // SCSI Response with both O and U
	want[4].Header[1] |= 0x06
	s := newTestStream(false, digestCase{})
	rs := s.Close(s.Feed(time.Time{}, wire, nil))
	var pe *pdu.ProtocolError
	if len(rs) != len(want) || rs[4].PDU != nil || !errors.As(rs[4].Err, &pe) {
		t.Fatalf("%d records; record 4: PDU %v, error %v", len(rs), rs[4].PDU, rs[4].Err)
	}
	rs[4].Err = nil
	rs[4].PDU = &pdu.SCSIResponse{}
	if d := diff(rs, want); d != "" {
		t.Fatal(d)
	}
}

// TestStreamTruncated ends the stream inside a PDU.
func TestStreamTruncated(t *testing.T) {
	wire, want := encode(t, initiatorMsgs(), false, false)
	offs := pduOffsets(initiatorMsgs(), false, false)
	s := newTestStream(true, digestCase{})
	rs := s.Close(s.Feed(time.Time{}, wire[:offs[4]+100], nil))
	if d := diff(rs, want[:4]); d != "" {
		t.Fatal(d)
	}
	if st := s.Stats(); st.Truncated != 1 {
		t.Fatalf("stats %+v", st)
	}
}
