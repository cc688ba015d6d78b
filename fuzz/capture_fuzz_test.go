package fuzz

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/goiscsi/iscsi/capture"
	"github.com/goiscsi/iscsi/pdu"
)

// captureMode is FuzzCaptureStream's mode byte.
type captureMode byte

func (m captureMode) opts() capture.Options {
	return capture.Options{HeaderDigest: m&1 != 0, DataDigest: m&2 != 0, MaxPending: 1 << 10}
}
func (m captureMode) fromInitiator() bool { return m&4 != 0 }
func (m captureMode) midStream() bool     { return m&8 != 0 } // the capture misses the connection's start

var (
	captureIni = netip.MustParseAddrPort("192.0.2.1:50000")
	captureTgt = netip.MustParseAddrPort("192.0.2.2:3260")
)

// captureSeed is an input of FuzzCaptureStream.
type captureSeed struct {
	data []byte
	mode byte
}

// captureSeeds returns PDU streams each side could send, with and without
// digests.
func captureSeeds(tb testing.TB) []captureSeed {
	tb.Helper()
	ini := []pdu.PDU{
		&pdu.LoginRequest{Transit: true, CSG: 1, NSG: 3, ITT: 1, CmdSN: 1},
		&pdu.SCSICommand{Final: true, Write: true, ITT: 2, ExpectedDataTransferLength: 10, CmdSN: 2},
		&pdu.DataOut{Final: true, ITT: 2, TTT: 5},
		&pdu.NOPOut{Immediate: true, ITT: 3, TTT: 0xffffffff},
		&pdu.LogoutRequest{Immediate: true, ITT: 4},
	}
	tgt := []pdu.PDU{
		&pdu.LoginResponse{Transit: true, CSG: 1, NSG: 3, ITT: 1},
		&pdu.R2T{ITT: 2, TTT: 5, DesiredDataTransferLength: 10},
		&pdu.DataIn{Final: true, HasStatus: true, ITT: 2, TTT: 0xffffffff},
		&pdu.NOPIn{ITT: 3, TTT: 0xffffffff},
		&pdu.LogoutResponse{ITT: 4},
	}
	var seeds []captureSeed
	for m := range captureMode(16) {
		ps := tgt
		if m.fromInitiator() {
			ps = ini
		}
		var buf bytes.Buffer
		w := pdu.NewWriter(&buf)
		for i, p := range ps {
			login := p.Opcode() == pdu.OpLoginRequest || p.Opcode() == pdu.OpLoginResponse
			w.SetDigests(m.opts().HeaderDigest && !login, m.opts().DataDigest && !login)
			var data []byte
			if i%2 == 0 && p.Opcode() != pdu.OpLogoutRequest && p.Opcode() != pdu.OpLogoutResponse {
				data = []byte("key=value\x00")[:5+i]
			}
			if err := w.Append(p, nil, data); err != nil {
				tb.Fatal(err)
			}
		}
		if err := w.Flush(); err != nil {
			tb.Fatal(err)
		}
		b := buf.Bytes()
		if m.midStream() {
			b = b[len(b)/3:]
		}
		seeds = append(seeds, captureSeed{b, byte(m)})
	}
	return seeds
}

// FuzzCaptureStream feeds arbitrary bytes to the capture decoders as one
// direction of a TCP connection. Beyond not panicking: a Stream decodes the
// same PDUs however the bytes are split, each record's lengths match its
// header, and a Decoder given the bytes as TCP segments (split, duplicated,
// with or without the handshake) agrees with the Stream.
func FuzzCaptureStream(f *testing.F) {
	for _, s := range captureSeeds(f) {
		f.Add(s.data, s.mode)
	}
	f.Add([]byte("not iSCSI at all, just some text that goes on for more than forty-eight bytes"), byte(0))
	f.Fuzz(func(t *testing.T, data []byte, mode byte) {
		m := captureMode(mode)
		src, dst := captureTgt, captureIni
		if m.fromInitiator() {
			src, dst = dst, src
		}
		stream := func(split func(int) int) ([]capture.Record, capture.Stats) {
			s := capture.NewStream(src, dst, m.fromInitiator(), m.opts())
			var rs []capture.Record
			if m.midStream() {
				rs = s.Gap(rs)
			}
			for off := 0; off < len(data); {
				n := min(len(data)-off, split(off))
				rs = s.Feed(time.Time{}, data[off:off+n], rs)
				off += n
			}
			return s.Close(rs), s.Stats()
		}
		whole, st := stream(func(int) int { return len(data) })
		from := pdu.FromTarget
		if m.fromInitiator() {
			from = pdu.FromInitiator
		}
		for i, r := range whole {
			if len(r.AHS) != r.Header.TotalAHSLength() || len(r.Data) != r.Header.DataSegmentLength() {
				t.Fatalf("record %d: %d AHS and %d data bytes for header %x", i, len(r.AHS), len(r.Data), r.Header)
			}
			if r.Src != src || r.Dst != dst || r.FromInitiator != m.fromInitiator() || r.Header.Opcode().Direction() != from {
				t.Fatalf("record %d: %v -> %v, %s", i, r.Src, r.Dst, r.Header.Opcode())
			}
		}
		if st.Records != len(whole) || st.Skipped > len(data) {
			t.Fatalf("stats %+v for %d records of %d bytes", st, len(whole), len(data))
		}
		bytewise, _ := stream(func(int) int { return 1 })
		captureSame(t, "whole", whole, "1-byte pieces", bytewise)
		odd, _ := stream(func(off int) int { return 1 + int(data[off])%61 })
		captureSame(t, "whole", whole, "odd pieces", odd)

		// The same bytes as TCP segments, some sent twice.
		d := capture.NewDecoder(m.opts())
		var rs []capture.Record
		isn := uint32(0xfffffff0) // sequence numbers wrap
		seg := func(seq uint32, syn, ack bool, payload []byte) {
			tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: seq, SYN: syn, ACK: ack}
			tcp.Payload = payload
			rs = d.Segment(time.Time{}, src.Addr(), dst.Addr(), tcp, rs)
		}
		if !m.midStream() {
			seg(isn-1, true, !m.fromInitiator(), nil)
		}
		for off := 0; off < len(data); {
			n := min(len(data)-off, 1+int(data[off])%1500)
			seg(isn+uint32(off), false, true, data[off:off+n])
			if data[off]%5 == 0 {
				seg(isn+uint32(off), false, true, data[off:off+n])
			}
			off += n
		}
		rs = d.Flush(rs)
		captureSame(t, "Stream", whole, "Decoder", rs)
	})
}

// captureSame fails the test when two decodings differ.
func captureSame(t *testing.T, an string, a []capture.Record, bn string, b []capture.Record) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%s: %d records, %s: %d", an, len(a), bn, len(b))
	}
	for i := range a {
		if a[i].Header != b[i].Header || !bytes.Equal(a[i].AHS, b[i].AHS) || !bytes.Equal(a[i].Data, b[i].Data) ||
			a[i].HeaderDigest != b[i].HeaderDigest || a[i].DataDigest != b[i].DataDigest || fmt.Sprint(a[i].Err) != fmt.Sprint(b[i].Err) {
			t.Fatalf("record %d differs: %s %x, %s %x", i, an, a[i].Header, bn, b[i].Header)
		}
	}
}

// FuzzCaptureSegments reads arbitrary bytes as TCP segments (flags, ports,
// sequence number, payload) in both directions, out of order and
// overlapping at will: the Decoder must not panic, and every record's
// lengths must match its header.
func FuzzCaptureSegments(f *testing.F) {
	f.Add([]byte{0x02, 0, 0, 0, 0, 0})
	for _, s := range captureSeeds(f) {
		b := s.data
		// One segment of the whole stream, from the side the mode says.
		hdr := []byte{0x10 | s.mode&4, 0, 0, 0, 1, byte(min(len(b), 255))}
		f.Add(append(hdr, b[:min(len(b), 255)]...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d := capture.NewDecoder(capture.Options{MaxPending: 512, HeaderDigest: len(data)%2 == 1})
		var rs []capture.Record
		for len(data) >= 6 {
			flags, seq, n := data[0], binary.BigEndian.Uint32(data[1:5]), int(data[5])
			data = data[6:]
			n = min(n, len(data))
			src, dst := captureTgt, captureIni
			if flags&4 != 0 {
				src, dst = dst, src
			}
			tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: seq,
				FIN: flags&1 != 0, SYN: flags&2 != 0, RST: flags&8 != 0, ACK: flags&0x10 != 0}
			tcp.Payload = data[:n]
			data = data[n:]
			rs = d.Segment(time.Time{}, src.Addr(), dst.Addr(), tcp, rs)
		}
		rs = d.Flush(rs)
		for i, r := range rs {
			if len(r.AHS) != r.Header.TotalAHSLength() || len(r.Data) != r.Header.DataSegmentLength() {
				t.Fatalf("record %d: %d AHS and %d data bytes for header %x", i, len(r.AHS), len(r.Data), r.Header)
			}
		}
		if st := d.Stats(); st.Records != len(rs) {
			t.Fatalf("stats %+v for %d records", st, len(rs))
		}
	})
}
