package fuzz

import (
	"bytes"
	"encoding/binary"
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
