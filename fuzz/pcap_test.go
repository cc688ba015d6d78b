package fuzz

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/goiscsi/iscsi/pdu"
)

// pcapSeed is a run of PDUs sent one way on one TCP connection of a capture.
type pcapSeed struct {
	mode    byte // FuzzReader's mode byte: digests and direction
	stream  []byte
	headers []pdu.BHS
}

// Bounds on what the captures add to the corpus.
const (
	maxPcapSeeds    = 200
	maxSeedStream   = 16 << 10
	maxSeedPDUs     = 32
	iscsiPort       = 3260
	maxPcapFileSize = 64 << 20
)

// pcapSeeds extracts seeds from testdata/*.pcap, the captures of real
// initiator-target sessions. It parses just enough of classic pcap,
// Ethernet/SLL/raw IP, IPv4/IPv6 and TCP to rebuild each direction of each
// iSCSI connection in order, then cuts the streams into PDUs.
func pcapSeeds(tb testing.TB) []pcapSeed {
	files, _ := filepath.Glob("../testdata/*.pcap")
	sort.Strings(files)
	var seeds []pcapSeed
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || len(b) > maxPcapFileSize {
			continue
		}
		flows, err := tcpFlows(b)
		if err != nil {
			tb.Logf("%s: %v", f, err)
			continue
		}
		for _, fl := range flows {
			seeds = append(seeds, cutPDUs(fl)...)
			if len(seeds) >= maxPcapSeeds {
				return seeds[:maxPcapSeeds]
			}
		}
	}
	return seeds
}

type flow struct {
	key     string
	from    pdu.Direction
	next    uint32
	started bool
	data    []byte
}

// tcpFlows returns the byte stream of each direction of each TCP connection
// to or from port 3260, in the order the capture first shows them. Segments
// out of order or retransmitted are dropped, which may cut a stream short.
func tcpFlows(b []byte) ([]*flow, error) {
	if len(b) < 24 {
		return nil, fmt.Errorf("short pcap header")
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(b) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return nil, fmt.Errorf("not a classic pcap file (pcapng is not read here)")
	}
	link := bo.Uint32(b[20:]) & 0xffff
	flows := map[string]*flow{}
	var order []*flow
	for off := 24; off+16 <= len(b); {
		incl := int(bo.Uint32(b[off+8:]))
		off += 16
		if incl < 0 || off+incl > len(b) {
			break
		}
		pkt := b[off : off+incl]
		off += incl
		ip, ok := linkPayload(link, pkt)
		if !ok {
			continue
		}
		src, dst, tcp, ok := ipPayload(ip)
		if !ok || len(tcp) < 20 {
			continue
		}
		sport, dport := binary.BigEndian.Uint16(tcp), binary.BigEndian.Uint16(tcp[2:])
		if sport != iscsiPort && dport != iscsiPort {
			continue
		}
		hl := int(tcp[12]>>4) * 4
		if hl < 20 || hl > len(tcp) {
			continue
		}
		seqn, flags := binary.BigEndian.Uint32(tcp[4:]), tcp[13]
		key := fmt.Sprintf("%x:%d>%x:%d", src, sport, dst, dport)
		fl := flows[key]
		if fl == nil {
			fl = &flow{key: key, from: pdu.FromInitiator}
			if sport == iscsiPort {
				fl.from = pdu.FromTarget
			}
			flows[key] = fl
			order = append(order, fl)
		}
		payload := tcp[hl:]
		if flags&0x02 != 0 { // SYN
			fl.next, fl.started = seqn+1, true
			continue
		}
		if len(payload) == 0 {
			continue
		}
		if !fl.started {
			fl.next, fl.started = seqn, true
		}
		if seqn != fl.next {
			continue
		}
		fl.data = append(fl.data, payload...)
		fl.next += uint32(len(payload))
	}
	return order, nil
}

func linkPayload(link uint32, p []byte) ([]byte, bool) {
	switch link {
	case 1: // Ethernet, with 802.1Q tags
		if len(p) < 14 {
			return nil, false
		}
		et, p := binary.BigEndian.Uint16(p[12:]), p[14:]
		for et == 0x8100 && len(p) >= 4 {
			et, p = binary.BigEndian.Uint16(p[2:]), p[4:]
		}
		return p, et == 0x0800 || et == 0x86dd
	case 113: // Linux cooked
		if len(p) < 16 {
			return nil, false
		}
		return p[16:], true
	case 276: // Linux cooked v2
		if len(p) < 20 {
			return nil, false
		}
		return p[20:], true
	case 0, 108: // BSD loopback
		if len(p) < 4 {
			return nil, false
		}
		return p[4:], true
	case 12, 14, 101: // raw IP
		return p, true
	}
	return nil, false
}

func ipPayload(p []byte) (src, dst, tcp []byte, ok bool) {
	if len(p) < 1 {
		return nil, nil, nil, false
	}
	switch p[0] >> 4 {
	case 4:
		if len(p) < 20 || p[9] != 6 {
			return nil, nil, nil, false
		}
		ihl := int(p[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(p[2:]))
		if ihl < 20 || total < ihl || total > len(p) {
			return nil, nil, nil, false
		}
		return p[12:16], p[16:20], p[ihl:total], true
	case 6:
		if len(p) < 40 || p[6] != 6 { // no extension headers
			return nil, nil, nil, false
		}
		n := 40 + int(binary.BigEndian.Uint16(p[4:]))
		if n > len(p) {
			return nil, nil, nil, false
		}
		return p[8:24], p[24:40], p[40:n], true
	}
	return nil, nil, nil, false
}

// cutPDUs splits a stream into PDUs. Digests are negotiated during login, so
// each PDU is read with the digest settings that check out, trying digests
// first: a matching CRC32C confirms them, where reading without them could
// take a digest for data.
func cutPDUs(fl *flow) []pcapSeed {
	var seeds []pcapSeed
	var cur *pcapSeed
	prefer := byte(0)
	for rest := fl.data; len(rest) >= pdu.BHSLen; {
		n, m, h, ok := onePDU(rest, fl.from)
		if !ok {
			break
		}
		if h.DataSegmentLength() == 0 {
			// Without data, the data digest setting cannot show: keep
			// the one before rather than start a new seed.
			m = m&^2 | prefer&2
		}
		if cur == nil || cur.mode != m || len(cur.stream)+n > maxSeedStream || len(cur.headers) == maxSeedPDUs {
			seeds = append(seeds, pcapSeed{mode: m})
			cur = &seeds[len(seeds)-1]
		}
		cur.stream = append(cur.stream, rest[:n]...)
		cur.headers = append(cur.headers, h)
		rest = rest[n:]
		prefer = m & 3
	}
	return seeds
}

func onePDU(b []byte, from pdu.Direction) (n int, m byte, h pdu.BHS, ok bool) {
	dir := byte(1 << 3)
	if from == pdu.FromTarget {
		dir = 2 << 3
	}
	for _, mm := range []byte{3, 1, 2, 0} {
		hd, dd := mm&1 != 0, mm&2 != 0
		r := pdu.NewReader(bytes.NewReader(b), pdu.ReaderConfig{From: from, MaxDataSegmentLength: pdu.MaxDataSegmentLength, HeaderDigest: hd, DataDigest: dd})
		hp, err := r.Next()
		if err != nil {
			continue
		}
		if _, err := r.Data(); err != nil {
			continue
		}
		dl := hp.DataSegmentLength()
		n = pdu.BHSLen + hp.TotalAHSLength() + (dl+3)&^3
		if hd {
			n += 4
		}
		if dd && dl > 0 {
			n += 4
		}
		return n, mm | dir, *hp, true
	}
	return 0, 0, h, false
}

// pcapTexts returns the text segments of the captures' Login and Text PDUs.
func pcapTexts(tb testing.TB) [][]byte {
	var texts [][]byte
	for _, s := range pcapSeeds(tb) {
		m := mode(s.mode)
		r := pdu.NewReader(bytes.NewReader(s.stream), pdu.ReaderConfig{From: m.from(), MaxDataSegmentLength: pdu.MaxDataSegmentLength,
			HeaderDigest: m.headerDigest(), DataDigest: m.dataDigest()})
		for {
			h, err := r.Next()
			if err != nil {
				break
			}
			switch h.Opcode() {
			case pdu.OpLoginRequest, pdu.OpLoginResponse, pdu.OpTextRequest, pdu.OpTextResponse:
				if d, err := r.Data(); err == nil && len(d) > 0 {
					texts = append(texts, bytes.Clone(d))
				}
			}
		}
	}
	return texts
}
