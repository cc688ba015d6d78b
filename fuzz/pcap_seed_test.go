package fuzz

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/goiscsi/iscsi/pdu"
)

// TestPcapSeeds builds a capture of a target's PDUs, the login without
// digests and the rest with them, split over TCP segments with a
// retransmission, and checks that every PDU comes back out.
func TestPcapSeeds(t *testing.T) {
	var tgt []item
	for _, it := range seedPDUs() {
		if it.p.Opcode().Direction() == pdu.FromTarget {
			tgt = append(tgt, it)
		}
	}
	// Login first, as on the wire.
	for i, it := range tgt {
		if it.p.Opcode() == pdu.OpLoginResponse {
			tgt[0], tgt[i] = tgt[i], tgt[0]
		}
	}
	stream := append(encode(t, tgt[:1], false, false), encode(t, tgt[1:], true, true)...)

	var pcap bytes.Buffer
	hdr := make([]byte, 24)
	binary.LittleEndian.PutUint32(hdr, 0xa1b2c3d4)
	binary.LittleEndian.PutUint16(hdr[4:], 2)
	binary.LittleEndian.PutUint16(hdr[6:], 4)
	binary.LittleEndian.PutUint32(hdr[16:], 65535)
	binary.LittleEndian.PutUint32(hdr[20:], 1)
	pcap.Write(hdr)
	packet := func(seqn uint32, flags byte, payload []byte) {
		eth := make([]byte, 14, 14+20+20+len(payload))
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		ip := make([]byte, 20)
		ip[0], ip[9] = 0x45, 6
		binary.BigEndian.PutUint16(ip[2:], uint16(40+len(payload)))
		copy(ip[12:], []byte{127, 0, 0, 1})
		copy(ip[16:], []byte{127, 0, 0, 2})
		tcp := make([]byte, 20)
		binary.BigEndian.PutUint16(tcp, iscsiPort)
		binary.BigEndian.PutUint16(tcp[2:], 40000)
		binary.BigEndian.PutUint32(tcp[4:], seqn)
		tcp[12], tcp[13] = 5<<4, flags
		p := append(append(append(eth, ip...), tcp...), payload...)
		rec := make([]byte, 16)
		binary.LittleEndian.PutUint32(rec[8:], uint32(len(p)))
		binary.LittleEndian.PutUint32(rec[12:], uint32(len(p)))
		pcap.Write(rec)
		pcap.Write(p)
	}
	const isn = 1000
	packet(isn, 0x12, nil) // SYN-ACK
	for off, i := 0, 0; off < len(stream); i++ {
		n := min(100+i*37, len(stream)-off)
		packet(isn+1+uint32(off), 0x18, stream[off:off+n])
		if i == 3 {
			packet(isn+1+uint32(off), 0x18, stream[off:off+n]) // retransmitted
		}
		off += n
	}

	flows, err := tcpFlows(pcap.Bytes())
	if err != nil || len(flows) != 1 {
		t.Fatalf("%d flows, %v", len(flows), err)
	}
	if !bytes.Equal(flows[0].data, stream) || flows[0].from != pdu.FromTarget {
		t.Fatalf("stream of %d bytes rebuilt as %d", len(stream), len(flows[0].data))
	}
	seeds := cutPDUs(flows[0])
	// The login response (first) has data, so its seed is digest-free; the
	// rest have digests.
	if len(seeds) != 2 || seeds[0].mode != 2<<3 || seeds[1].mode != 3|2<<3 || len(seeds[0].headers) != 1 {
		t.Fatalf("%d seeds: modes %d and %d", len(seeds), seeds[0].mode, seeds[len(seeds)-1].mode)
	}
	var got []pdu.BHS
	for _, s := range seeds {
		got = append(got, s.headers...)
	}
	if len(got) != len(tgt) {
		t.Fatalf("%d PDUs cut, want %d", len(got), len(tgt))
	}
	for i, it := range tgt {
		p, err := pdu.Decode(&got[i])
		if err != nil || p.Opcode() != it.p.Opcode() {
			t.Fatalf("PDU %d: %v %v", i, p, err)
		}
	}
	if !bytes.Equal(append(bytes.Clone(seeds[0].stream), seeds[1].stream...), stream) {
		t.Fatal("seed streams differ from the capture")
	}
}

// TestCaptures cuts the real libiscsi-tgtd captures of testdata/ into PDUs:
// the opcode counts are those testdata/README.md lists from tshark, nothing
// is left over (iscsi-perf's retransmitted Data-In is dropped), and every
// header decodes and encodes back to the very bytes libiscsi or tgtd sent.
func TestCaptures(t *testing.T) {
	for _, c := range []struct {
		file string
		ops  map[pdu.Opcode]int
	}{
		{"iscsi-inq", map[pdu.Opcode]int{0x03: 1, 0x23: 1, 0x01: 4, 0x21: 2, 0x25: 2, 0x06: 1, 0x26: 1}},
		{"iscsi-readcapacity16", map[pdu.Opcode]int{0x03: 1, 0x23: 1, 0x01: 3, 0x21: 2, 0x25: 1, 0x06: 1, 0x26: 1}},
		{"iscsi-swp", map[pdu.Opcode]int{0x03: 2, 0x23: 2, 0x01: 8, 0x21: 6, 0x25: 2, 0x06: 2, 0x26: 2}},
		{"iscsi-perf", map[pdu.Opcode]int{0x03: 1, 0x23: 1, 0x01: 40, 0x21: 2, 0x25: 38, 0x06: 1, 0x26: 1}},
		{"iscsi-inq-chap", map[pdu.Opcode]int{0x03: 4, 0x23: 4, 0x01: 4, 0x21: 2, 0x25: 2, 0x06: 1, 0x26: 1}},
		{"iscsi-ls", map[pdu.Opcode]int{0x03: 1, 0x23: 1, 0x04: 1, 0x24: 1, 0x06: 1, 0x26: 1}},
	} {
		t.Run(c.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("..", "testdata", c.file+".pcap"))
			if err != nil {
				t.Skip(err)
			}
			flows, err := tcpFlows(b)
			if err != nil {
				t.Fatal(err)
			}
			ops := map[pdu.Opcode]int{}
			for _, fl := range flows {
				cut := 0
				for _, s := range cutPDUs(fl) {
					if s.mode&3 != 0 {
						t.Errorf("%s: digests detected in a capture without them", fl.key)
					}
					cut += len(s.stream)
					checkCaptureText(t, fl, s)
					for _, h := range s.headers {
						ops[h.Opcode()]++
						p, err := pdu.Decode(&h)
						if err != nil {
							t.Fatalf("%s: %x: %v", fl.key, h[:], err)
						}
						var h2 pdu.BHS
						p.MarshalBHS(&h2)
						h2.SetLengths(h.TotalAHSLength(), h.DataSegmentLength())
						if h2 != h {
							t.Errorf("%s: %v sent as\n%x\nre-encoded as\n%x", fl.key, h.Opcode(), h[:], h2[:])
						}
					}
				}
				if cut != len(fl.data) {
					t.Errorf("%s: %d of %d bytes cut into PDUs", fl.key, cut, len(fl.data))
				}
			}
			if !reflect.DeepEqual(ops, c.ops) {
				t.Errorf("opcodes %v, README says %v", ops, c.ops)
			}
		})
	}
}

// checkCaptureText parses the text segments of a seed's Login and Text PDUs:
// what libiscsi and tgtd send must pass ParseText's RFC 7143 §6.1 checks.
func checkCaptureText(t *testing.T, fl *flow, s pcapSeed) {
	t.Helper()
	r := pdu.NewReader(bytes.NewReader(s.stream), pdu.ReaderConfig{From: fl.from, MaxDataSegmentLength: pdu.MaxDataSegmentLength})
	for {
		h, err := r.Next()
		if err != nil {
			return
		}
		switch h.Opcode() {
		case pdu.OpLoginRequest, pdu.OpLoginResponse, pdu.OpTextRequest, pdu.OpTextResponse:
		default:
			continue
		}
		data, err := r.Data()
		if err != nil {
			t.Fatal(err)
		}
		kvs, err := pdu.ParseText(data, pdu.TextLimits{AllowDuplicates: h.Opcode() == pdu.OpTextResponse})
		if err != nil {
			t.Errorf("%s: %v: %q: %v", fl.key, h.Opcode(), data, err)
		}
		if len(data) > 0 && len(kvs) == 0 {
			t.Errorf("%s: %v: no pairs in %q", fl.key, h.Opcode(), data)
		}
	}
}
