package pdu_test

import (
	"bytes"
	"io"
	"testing"

	"github.com/goiscsi/iscsi/pdu"
)

func BenchmarkUnmarshalDataIn(b *testing.B) {
	var h pdu.BHS
	(&pdu.DataIn{Final: true, HasStatus: true, ITT: itt, TTT: 0xffffffff, SeqNums: seq, DataSN: 7, BufferOffset: 1 << 20}).MarshalBHS(&h)
	h.SetLengths(0, 65536)
	var p pdu.DataIn
	b.ReportAllocs()
	for b.Loop() {
		if err := p.UnmarshalBHS(&h); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeDataIn(b *testing.B) {
	var h pdu.BHS
	(&pdu.DataIn{Final: true, ITT: itt, SeqNums: seq}).MarshalBHS(&h)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := pdu.Decode(&h); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMarshalSCSICommand(b *testing.B) {
	p := &pdu.SCSICommand{Final: true, Read: true, Attr: pdu.AttrSimple, LUN: lun, ITT: itt, ExpectedDataTransferLength: 65536, CDB: cdb}
	var h pdu.BHS
	b.ReportAllocs()
	for b.Loop() {
		p.MarshalBHS(&h)
	}
}

// rewinder replays one buffer forever, as a connection that never runs dry.
type rewinder struct {
	b   []byte
	off int
}

func (r *rewinder) Read(p []byte) (int, error) {
	if r.off == len(r.b) {
		r.off = 0
	}
	n := copy(p, r.b[r.off:])
	r.off += n
	return n, nil
}

func dataInStream(b *testing.B, n, size int, hd, dd bool) []byte {
	var buf bytes.Buffer
	w := pdu.NewWriter(&buf)
	w.SetDigests(hd, dd)
	data := seqBytes(size, 1)
	for i := range n {
		if err := w.Append(&pdu.DataIn{ITT: itt, DataSN: uint32(i), BufferOffset: uint32(i * size), SeqNums: seq}, nil, data); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}

// BenchmarkReaderDataIn reads Data-In PDUs of 8 KiB from memory with Next,
// Decode-free UnmarshalBHS and ReadData into the caller's buffer.
func BenchmarkReaderDataIn(b *testing.B) {
	for _, c := range []struct {
		name   string
		size   int
		hd, dd bool
	}{
		{"8KiB", 8192, false, false},
		{"8KiB/digests", 8192, true, true},
		{"256KiB", 256 << 10, false, false},
		{"256KiB/digests", 256 << 10, true, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			stream := dataInStream(b, 16, c.size, c.hd, c.dd)
			r := pdu.NewReader(&rewinder{b: stream}, pdu.ReaderConfig{From: pdu.FromTarget, MaxDataSegmentLength: 256 << 10, HeaderDigest: c.hd, DataDigest: c.dd})
			buf := make([]byte, c.size)
			var p pdu.DataIn
			b.SetBytes(int64(len(stream) / 16))
			b.ReportAllocs()
			for b.Loop() {
				h, err := r.Next()
				if err != nil {
					b.Fatal(err)
				}
				if err := p.UnmarshalBHS(h); err != nil {
					b.Fatal(err)
				}
				if err := r.ReadData(buf[:h.DataSegmentLength()]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReaderNextOnly reads headers of PDUs without data.
func BenchmarkReaderNextOnly(b *testing.B) {
	var buf bytes.Buffer
	w := pdu.NewWriter(&buf)
	for range 64 {
		w.Append(&pdu.NOPIn{ITT: itt, TTT: 0xffffffff, SeqNums: seq}, nil, nil)
	}
	w.Flush()
	r := pdu.NewReader(&rewinder{b: buf.Bytes()}, pdu.ReaderConfig{From: pdu.FromTarget})
	b.SetBytes(pdu.BHSLen)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Next(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriterSCSICommand(b *testing.B) {
	for _, c := range []struct {
		name   string
		hd, dd bool
	}{{"plain", false, false}, {"digests", true, true}} {
		b.Run(c.name, func(b *testing.B) {
			w := pdu.NewWriter(io.Discard)
			w.SetDigests(c.hd, c.dd)
			p := &pdu.SCSICommand{Final: true, Read: true, Attr: pdu.AttrSimple, LUN: lun, ITT: itt, ExpectedDataTransferLength: 65536, CDB: cdb}
			b.SetBytes(pdu.BHSLen)
			b.ReportAllocs()
			for b.Loop() {
				p.CmdSN++
				if err := w.Append(p, nil, nil); err != nil {
					b.Fatal(err)
				}
				if err := w.Flush(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkWriterDataOut queues a write's Data-Out PDUs of 8 KiB and flushes
// them as one batch.
func BenchmarkWriterDataOut(b *testing.B) {
	w := pdu.NewWriter(io.Discard)
	w.SetDigests(true, true)
	data := seqBytes(64<<10, 3)
	// One PDU value reused, as a connection's send loop would: a new one per
	// Append escapes to the heap through the PDU interface.
	p := &pdu.DataOut{ITT: itt, TTT: ttt}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		for off := 0; off < len(data); off += 8192 {
			p.BufferOffset = uint32(off)
			p.Final = off+8192 == len(data)
			w.Append(p, nil, data[off:off+8192])
		}
		if err := w.Flush(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCRC32C(b *testing.B) {
	for _, size := range []int{48, 8 << 10, 256 << 10} {
		b.Run(itoaTest(size), func(b *testing.B) {
			data := seqBytes(size, 9)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				pdu.CRC32C(data)
			}
		})
	}
}

func itoaTest(n int) string {
	switch {
	case n >= 1<<10 && n%(1<<10) == 0:
		return itoaPlain(n>>10) + "KiB"
	}
	return itoaPlain(n) + "B"
}

func itoaPlain(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

// loginResponse is what a target answers to an operational login.
var loginResponse = []byte("TargetAlias=disk1\x00HeaderDigest=None\x00DataDigest=None\x00MaxConnections=1\x00" +
	"InitialR2T=Yes\x00ImmediateData=Yes\x00MaxRecvDataSegmentLength=262144\x00MaxBurstLength=262144\x00" +
	"FirstBurstLength=65536\x00DefaultTime2Wait=2\x00DefaultTime2Retain=20\x00MaxOutstandingR2T=1\x00" +
	"DataPDUInOrder=Yes\x00DataSequenceInOrder=Yes\x00ErrorRecoveryLevel=0\x00TargetPortalGroupTag=1\x00")

func BenchmarkParseText(b *testing.B) {
	b.SetBytes(int64(len(loginResponse)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := pdu.ParseText(loginResponse, pdu.TextLimits{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendText(b *testing.B) {
	kvs, err := pdu.ParseText(loginResponse, pdu.TextLimits{})
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = pdu.AppendText(buf[:0], kvs...)
	}
}
