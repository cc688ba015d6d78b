package capture

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

// scriptConn is a net.Conn whose reads come from a buffer and whose writes
// go nowhere.
type scriptConn struct {
	r *bytes.Reader
}

func (c *scriptConn) Read(b []byte) (int, error)       { return c.r.Read(b) }
func (c *scriptConn) Write(b []byte) (int, error)      { return len(b), nil }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return pipeAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr             { return pipeAddr{} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }
func (pipeAddr) Network() string                       { return "pipe" }
func (pipeAddr) String() string                        { return "pipe" }

type pipeAddr struct{}

// benchCapture records n/4 rounds of a read and a write command with their
// answers: n PDUs, 8 KiB reads and 4 KiB writes of immediate data.
func benchCapture(b *testing.B, n int) []byte {
	b.Helper()
	var ini, tgt []msg
	var cdb [16]byte
	for i := range uint32(n / 4) {
		itt := 2 * i
		ini = append(ini,
			msg{p: &pdu.SCSICommand{Final: true, Read: true, Attr: pdu.AttrSimple, ITT: itt, ExpectedDataTransferLength: 8192, CmdSN: itt, CDB: cdb}},
			msg{p: &pdu.SCSICommand{Final: true, Write: true, Attr: pdu.AttrSimple, ITT: itt + 1, ExpectedDataTransferLength: 4096, CmdSN: itt + 1, CDB: cdb}, data: pattern(4096, uint64(i))})
		tgt = append(tgt,
			msg{p: &pdu.DataIn{Final: true, HasStatus: true, ITT: itt, TTT: 0xffffffff, SeqNums: pdu.SeqNums{StatSN: itt}}, data: pattern(8192, uint64(i))},
			msg{p: &pdu.SCSIResponse{ITT: itt + 1, SeqNums: pdu.SeqNums{StatSN: itt + 1}}})
	}
	var answers bytes.Buffer
	w := pdu.NewWriter(&answers)
	for _, m := range tgt {
		if err := w.WritePDU(m.p, m.data); err != nil {
			b.Fatal(err)
		}
	}
	var pcap bytes.Buffer
	conn := &scriptConn{r: bytes.NewReader(answers.Bytes())}
	tap, err := NewTap(conn, &pcap, TapOptions{MSS: 16 << 10})
	if err != nil {
		b.Fatal(err)
	}
	pw := pdu.NewWriter(tap)
	pr := pdu.NewReader(tap, pdu.ReaderConfig{From: pdu.FromTarget, MaxDataSegmentLength: 1 << 20})
	for _, m := range ini {
		if err := pw.WritePDU(m.p, m.data); err != nil {
			b.Fatal(err)
		}
		if _, err := pr.Next(); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := pr.Next(); err != io.EOF {
		b.Fatalf("%v after the last answer", err)
	}
	tap.Close()
	if err := tap.Err(); err != nil {
		b.Fatal(err)
	}
	return pcap.Bytes()
}

// BenchmarkRead decodes a 1,000-PDU capture held in memory.
func BenchmarkRead(b *testing.B) {
	const n = 1000
	capture := benchCapture(b, n)
	b.SetBytes(int64(len(capture)))
	b.ReportAllocs()
	for b.Loop() {
		rs, err := Read(bytes.NewReader(capture), Options{})
		if err != nil || len(rs) != n {
			b.Fatalf("%d records, %v", len(rs), err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkStream decodes the same PDUs fed to a Stream in 16 KiB pieces,
// without packets.
func BenchmarkStream(b *testing.B) {
	var ms []msg
	for i := range 1000 {
		ms = append(ms, msg{p: &pdu.DataIn{ITT: uint32(i), TTT: 0xffffffff, DataSN: uint32(i)}, data: pattern(8192, uint64(i))})
	}
	wire, _ := encode(b, ms, false, false)
	b.SetBytes(int64(len(wire)))
	b.ReportAllocs()
	var rs []Record
	for b.Loop() {
		s := NewStream(tgtAddr, iniAddr, false, Options{})
		rs = rs[:0]
		for off := 0; off < len(wire); off += 16 << 10 {
			rs = s.Feed(time.Time{}, wire[off:min(off+16<<10, len(wire))], rs)
		}
		if len(rs) != len(ms) {
			b.Fatalf("%d records", len(rs))
		}
	}
	b.ReportMetric(float64(len(ms)*b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkTap records 64 KiB writes.
func BenchmarkTap(b *testing.B) {
	tap, err := NewTap(&scriptConn{r: bytes.NewReader(nil)}, io.Discard, TapOptions{})
	if err != nil {
		b.Fatal(err)
	}
	buf := pattern(64<<10, 1)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tap.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}
