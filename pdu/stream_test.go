package pdu_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"runtime"
	"testing"

	"github.com/goiscsi/iscsi/pdu"
)

// item is one PDU of a test stream.
type item struct {
	p         pdu.PDU
	ahs, data []byte
}

func seqBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// targetStream is a session's worth of target PDUs: data of every length
// modulo 4, empty data, PDUs that carry none.
func targetStream() []item {
	return []item{
		{&pdu.LoginResponse{Transit: true, CSG: 1, NSG: 3, ISID: isid, TSIH: 1, ITT: 1, SeqNums: seq}, nil, []byte("HeaderDigest=CRC32C\x00DataDigest=CRC32C\x00")},
		{&pdu.NOPIn{ITT: 0xffffffff, TTT: 9, SeqNums: seq}, nil, nil},
		{&pdu.DataIn{ITT: 2, DataSN: 0, BufferOffset: 0, SeqNums: seq}, nil, seqBytes(1, 1)},
		{&pdu.DataIn{ITT: 2, DataSN: 1, BufferOffset: 1, SeqNums: seq}, nil, seqBytes(2, 2)},
		{&pdu.DataIn{ITT: 2, DataSN: 2, BufferOffset: 3, SeqNums: seq}, nil, seqBytes(3, 3)},
		{&pdu.DataIn{Final: true, HasStatus: true, ITT: 2, DataSN: 3, BufferOffset: 6, SeqNums: seq}, nil, seqBytes(517, 4)},
		{&pdu.R2T{ITT: 3, TTT: 4, SeqNums: seq, DesiredDataTransferLength: 4096}, nil, nil},
		{&pdu.SCSIResponse{Status: pdu.StatusCheckCondition, ITT: 3, SeqNums: seq}, nil, seqBytes(20, 5)},
		{&pdu.TextResponse{Final: true, ITT: 5, TTT: 0xffffffff, SeqNums: seq}, nil, []byte("TargetName=iqn.2001-04.com.example:disk\x00")},
		{&pdu.AsyncMessage{ITT: 0xffffffff, SeqNums: seq, AsyncEvent: 1, Parameter3: 5}, nil, nil},
		{&pdu.Reject{Reason: pdu.RejectProtocolError, ITT: 0xffffffff, SeqNums: seq}, nil, seqBytes(48, 6)},
		{&pdu.TaskMgmtResponse{ITT: 6, SeqNums: seq}, nil, nil},
		{&pdu.LogoutResponse{ITT: 7, SeqNums: seq, Time2Wait: 2, Time2Retain: 20}, nil, nil},
	}
}

// initiatorStream has every initiator opcode, an AHS on a SCSI Command and
// data of odd lengths.
func initiatorStream() []item {
	ahs := []byte{0x00, 0x05, 0x01, 0x00, 0xb0, 0xb1, 0xb2, 0xb3} // Extended CDB AHS, 4 more CDB bytes
	return []item{
		{&pdu.LoginRequest{Transit: true, CSG: 1, NSG: 3, ISID: isid, ITT: 1}, nil, []byte("InitiatorName=iqn.2026-01.org.goiscsi:test\x00")},
		{&pdu.SCSICommand{Final: true, Write: true, Attr: pdu.AttrSimple, ITT: 2, ExpectedDataTransferLength: 5, CDB: cdb}, ahs, seqBytes(5, 1)},
		{&pdu.DataOut{Final: true, ITT: 2, TTT: 4, DataSN: 0}, nil, seqBytes(7, 2)},
		{&pdu.NOPOut{ITT: 0xffffffff, TTT: 9}, nil, nil},
		{&pdu.TaskMgmtRequest{Function: pdu.TMFAbortTask, ITT: 3, RefTaskTag: 2}, nil, nil},
		{&pdu.TextRequest{Final: true, ITT: 4, TTT: 0xffffffff}, nil, []byte("SendTargets=All\x00")},
		{&pdu.SNACKRequest{Type: pdu.SNACKStatus, ITT: 5, BegRun: 1, RunLength: 2}, nil, nil},
		{&pdu.SCSICommand{Final: true, Read: true, ITT: 6, CDB: cdb}, ahs[:4], nil},
		{&pdu.LogoutRequest{Immediate: true, ITT: 7, CID: 1}, nil, nil},
	}
}

type digests struct{ header, data bool }

var allDigests = []digests{{false, false}, {true, false}, {false, true}, {true, true}}

func encode(t testing.TB, items []item, d digests) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := pdu.NewWriter(&buf)
	w.SetDigests(d.header, d.data)
	for _, it := range items {
		if err := w.Append(it.p, it.ahs, it.data); err != nil {
			t.Fatal(err)
		}
	}
	if w.Buffered() != len(items) {
		t.Fatalf("Buffered() = %d", w.Buffered())
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func wireLen(it item, d digests) int {
	n := pdu.BHSLen + len(it.ahs) + (len(it.data)+3)&^3
	if d.header {
		n += 4
	}
	if d.data && len(it.data) > 0 {
		n += 4
	}
	return n
}

// readAll reads PDUs until an error, checking each against want; with skip
// it leaves every data segment for Next to skip.
func readAll(t *testing.T, r *pdu.Reader, want []item, skip bool) (int, error) {
	t.Helper()
	for i := 0; ; i++ {
		h, err := r.Next()
		if err != nil {
			return i, err
		}
		if i >= len(want) {
			t.Fatalf("PDU %d beyond the %d written", i, len(want))
		}
		p, err := pdu.Decode(h)
		if err != nil {
			t.Fatalf("PDU %d: %v", i, err)
		}
		if !reflect.DeepEqual(p, want[i].p) {
			t.Fatalf("PDU %d:\n got %+v\nwant %+v", i, p, want[i].p)
		}
		if !bytes.Equal(r.AHS(), want[i].ahs) {
			t.Fatalf("PDU %d: AHS %x, want %x", i, r.AHS(), want[i].ahs)
		}
		if h.DataSegmentLength() != len(want[i].data) || h.TotalAHSLength() != len(want[i].ahs) {
			t.Fatalf("PDU %d: lengths %d/%d", i, h.TotalAHSLength(), h.DataSegmentLength())
		}
		if skip {
			continue
		}
		data, err := r.Data()
		if err != nil {
			return i, err
		}
		if !bytes.Equal(data, want[i].data) {
			t.Fatalf("PDU %d: data %q, want %q", i, data, want[i].data)
		}
	}
}

func TestWriteReadRoundTrip(t *testing.T) {
	for _, s := range []struct {
		name  string
		from  pdu.Direction
		items []item
	}{{"target", pdu.FromTarget, targetStream()}, {"initiator", pdu.FromInitiator, initiatorStream()}} {
		for _, d := range allDigests {
			for _, skip := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/hd=%v/dd=%v/skip=%v", s.name, d.header, d.data, skip), func(t *testing.T) {
					wire := encode(t, s.items, d)
					n := 0
					for _, it := range s.items {
						n += wireLen(it, d)
					}
					if len(wire) != n {
						t.Fatalf("wrote %d bytes, want %d", len(wire), n)
					}
					r := pdu.NewReader(bytes.NewReader(wire), pdu.ReaderConfig{From: s.from, HeaderDigest: d.header, DataDigest: d.data})
					got, err := readAll(t, r, s.items, skip)
					if err != io.EOF || got != len(s.items) {
						t.Fatalf("read %d PDUs, then %v; want %d then io.EOF", got, err, len(s.items))
					}
					if _, err := r.Next(); err != io.EOF {
						t.Fatalf("Next after EOF: %v", err)
					}
				})
			}
		}
	}
}

// TestEveryPrefixFails cuts a valid stream at every byte: a cut between PDUs
// is a clean io.EOF, any other io.ErrUnexpectedEOF, never a panic.
func TestEveryPrefixFails(t *testing.T) {
	items := targetStream()
	for _, d := range allDigests {
		wire := encode(t, items, d)
		bounds := map[int]int{0: 0}
		off := 0
		for i, it := range items {
			off += wireLen(it, d)
			bounds[off] = i + 1
		}
		for _, skip := range []bool{false, true} {
			for n := range len(wire) {
				r := pdu.NewReader(bytes.NewReader(wire[:n]), pdu.ReaderConfig{From: pdu.FromTarget, HeaderDigest: d.header, DataDigest: d.data})
				got, err := readAll(t, r, items, skip)
				if whole, ok := bounds[n]; ok {
					if err != io.EOF || got != whole {
						t.Fatalf("%+v skip=%v: prefix of %d bytes (%d PDUs): %d PDUs, %v", d, skip, n, whole, got, err)
					}
					continue
				}
				if err != io.ErrUnexpectedEOF {
					t.Fatalf("%+v skip=%v: prefix of %d bytes: %d PDUs, %v", d, skip, n, got, err)
				}
				// The error sticks.
				if _, err := r.Next(); err != io.ErrUnexpectedEOF {
					t.Fatalf("prefix of %d bytes: Next after the error: %v", n, err)
				}
			}
		}
	}
}

// onlyHeader serves one header, then fails the test if asked for more.
type onlyHeader struct {
	t    *testing.T
	hdr  []byte
	done bool
}

func (o *onlyHeader) Read(p []byte) (int, error) {
	if o.done {
		o.t.Errorf("Reader asked for %d bytes past the header", len(p))
		return 0, io.ErrUnexpectedEOF
	}
	o.done = true
	return copy(p, o.hdr), nil
}

func header(p pdu.PDU, ahsLen, dataLen int) []byte {
	var h pdu.BHS
	p.MarshalBHS(&h)
	h.SetLengths(ahsLen, dataLen)
	return h[:]
}

func withDigest(h []byte) []byte { return append(h, le32(pdu.CRC32C(h))...) }

func protoErr(t *testing.T, err error, op pdu.Opcode, field string, value uint64) {
	t.Helper()
	var pe *pdu.ProtocolError
	if !errors.As(err, &pe) {
		t.Fatalf("got %v (%T), want a *ProtocolError", err, err)
	}
	if pe.Op != op || pe.Field != field || pe.Value != value {
		t.Fatalf("got %q: Op %v Field %q Value %d, want %v %q %d", err, pe.Op, pe.Field, pe.Value, op, field, value)
	}
}

func TestReaderRefusesBeforeReading(t *testing.T) {
	for _, c := range []struct {
		name  string
		cfg   pdu.ReaderConfig
		hdr   []byte
		op    pdu.Opcode
		field string
		value uint64
	}{
		{"16 MiB data segment", pdu.ReaderConfig{MaxDataSegmentLength: 8192},
			header(&pdu.DataIn{ITT: 1}, 0, 1<<24-1), pdu.OpSCSIDataIn, "DataSegmentLength", 1<<24 - 1},
		{"16 MiB data segment, header digest", pdu.ReaderConfig{MaxDataSegmentLength: 8192, HeaderDigest: true, DataDigest: true},
			withDigest(header(&pdu.DataIn{ITT: 1}, 0, 1<<24-1)), pdu.OpSCSIDataIn, "DataSegmentLength", 1<<24 - 1},
		{"one byte over the limit", pdu.ReaderConfig{MaxDataSegmentLength: 262144},
			header(&pdu.DataIn{ITT: 1}, 0, 262145), pdu.OpSCSIDataIn, "DataSegmentLength", 262145},
		{"over the default limit", pdu.ReaderConfig{},
			header(&pdu.LoginResponse{}, 0, pdu.DefaultMaxRecvDataSegmentLength+1), pdu.OpLoginResponse, "DataSegmentLength", 8193},
		{"AHS on a NOP-In", pdu.ReaderConfig{},
			header(&pdu.NOPIn{}, 255*4, 0), pdu.OpNOPIn, "TotalAHSLength", 255},
		{"AHS on a Data-In", pdu.ReaderConfig{},
			header(&pdu.DataIn{}, 4, 0), pdu.OpSCSIDataIn, "TotalAHSLength", 1},
		{"data on a Logout Response", pdu.ReaderConfig{},
			header(&pdu.LogoutResponse{}, 0, 4), pdu.OpLogoutResponse, "DataSegmentLength", 4},
		{"data on an R2T", pdu.ReaderConfig{},
			header(&pdu.R2T{TTT: 1}, 0, 1), pdu.OpR2T, "DataSegmentLength", 1},
		{"data on a Task Management Function Response", pdu.ReaderConfig{},
			header(&pdu.TaskMgmtResponse{}, 0, 100), pdu.OpTaskMgmtResponse, "DataSegmentLength", 100},
		{"undefined opcode", pdu.ReaderConfig{},
			append([]byte{0x3c}, make([]byte, 47)...), 0x3c, "Opcode", 0x3c},
		{"initiator opcode from a target", pdu.ReaderConfig{From: pdu.FromTarget},
			header(&pdu.SCSICommand{}, 0, 0), pdu.OpSCSICommand, "Opcode", 1},
		{"target opcode from an initiator", pdu.ReaderConfig{From: pdu.FromInitiator},
			header(&pdu.NOPIn{}, 0, 0), pdu.OpNOPIn, "Opcode", 0x20},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := &onlyHeader{t: t, hdr: c.hdr}
			r := pdu.NewReader(src, c.cfg)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := r.Next()
			runtime.ReadMemStats(&after)
			protoErr(t, err, c.op, c.field, c.value)
			if n := after.TotalAlloc - before.TotalAlloc; n > 4096 {
				t.Errorf("refusing the header allocated %d bytes", n)
			}
			// Sticky: the same error, and nothing more is read.
			if _, err2 := r.Next(); err2 != err {
				t.Errorf("second Next: %v, want %v", err2, err)
			}
			if _, err2 := r.Data(); err2 != err {
				t.Errorf("Data: %v, want %v", err2, err)
			}
			if err2 := r.ReadData(make([]byte, 4)); err2 != err {
				t.Errorf("ReadData: %v, want %v", err2, err)
			}
		})
	}
}

func TestReaderRefusalAllocs(t *testing.T) {
	hdr := header(&pdu.DataIn{ITT: 1}, 0, 1<<24-1)
	readers := make([]*pdu.Reader, 0, 101)
	for range cap(readers) {
		readers = append(readers, pdu.NewReader(bytes.NewReader(hdr), pdu.ReaderConfig{MaxDataSegmentLength: 8192}))
	}
	i := 0
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := readers[i].Next(); err == nil {
			t.Fatal("16 MiB data segment accepted")
		}
		i++
	})
	// The *ProtocolError and its reason string; never the data buffer.
	if allocs > 3 {
		t.Errorf("%v allocations to refuse a header", allocs)
	}
}

func TestDigestErrors(t *testing.T) {
	items := []item{{&pdu.DataIn{Final: true, ITT: 1, SeqNums: seq}, nil, seqBytes(10, 1)}}
	good := encode(t, items, digests{true, true})
	for _, c := range []struct {
		name    string
		flip    int  // byte to corrupt
		mask    byte // bits to flip in it
		op      pdu.Opcode
		data    bool
		dataErr bool // the error comes from reading the data, not the header
	}{
		{"header byte", 20, 0x10, pdu.OpSCSIDataIn, false, false},
		// A corrupt length or opcode is a digest error, not a refusal.
		{"DataSegmentLength", 5, 0x10, pdu.OpSCSIDataIn, false, false},
		{"TotalAHSLength", 4, 0x01, pdu.OpSCSIDataIn, false, false},
		{"opcode", 0, 0x10, pdu.OpSCSIDataIn ^ 0x10, false, false},
		{"header digest", pdu.BHSLen, 0x10, pdu.OpSCSIDataIn, false, false},
		{"data byte", pdu.BHSLen + 4 + 3, 0x10, pdu.OpSCSIDataIn, true, true},
		{"data padding", pdu.BHSLen + 4 + 11, 0x10, pdu.OpSCSIDataIn, true, true},
		{"data digest", pdu.BHSLen + 4 + 12 + 2, 0x10, pdu.OpSCSIDataIn, true, true},
	} {
		for _, skip := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/skip=%v", c.name, skip), func(t *testing.T) {
				wire := bytes.Clone(good)
				wire[c.flip] ^= c.mask
				r := pdu.NewReader(bytes.NewReader(wire), pdu.ReaderConfig{HeaderDigest: true, DataDigest: true})
				_, err := r.Next()
				if c.dataErr {
					if err != nil {
						t.Fatal(err)
					}
					if skip {
						_, err = r.Next()
					} else {
						_, err = r.Data()
					}
				}
				var de *pdu.DigestError
				if !errors.As(err, &de) || de.Data != c.data || de.Op != c.op || de.Got == de.Want {
					t.Fatalf("got %v, want a %v DigestError", err, c.data)
				}
				if _, err2 := r.Next(); err2 != err {
					t.Fatalf("not sticky: %v", err2)
				}
			})
		}
	}
}

// TestSetConfigMidPDU turns data digests on between a header and its data,
// as a login does when its last response carries data: the data segment
// announced without a digest is read without one.
func TestSetConfigMidPDU(t *testing.T) {
	items := []item{
		{&pdu.LoginResponse{Transit: true, CSG: 1, NSG: 3}, nil, []byte("DataDigest=CRC32C\x00")},
	}
	for _, read := range []bool{false, true} {
		var buf bytes.Buffer
		buf.Write(encode(t, items, digests{}))
		item2 := []item{{&pdu.NOPIn{ITT: 1, TTT: 0xffffffff}, nil, []byte("ping")}}
		buf.Write(encode(t, item2, digests{true, true}))
		r := pdu.NewReader(&buf, pdu.ReaderConfig{})
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
		r.SetConfig(pdu.ReaderConfig{HeaderDigest: true, DataDigest: true, MaxDataSegmentLength: 1 << 18})
		if read {
			if d, err := r.Data(); err != nil || string(d) != "DataDigest=CRC32C\x00" {
				t.Fatalf("Data: %q, %v", d, err)
			}
		}
		if _, err := r.Next(); err != nil {
			t.Fatalf("read=%v: %v", read, err)
		}
		if d, err := r.Data(); err != nil || string(d) != "ping" {
			t.Fatalf("read=%v: Data: %q, %v", read, d, err)
		}
		if r.Config().MaxDataSegmentLength != 1<<18 {
			t.Fatal("Config")
		}
	}
}

func TestReadDataMisuse(t *testing.T) {
	wire := encode(t, []item{{&pdu.NOPIn{TTT: 1}, nil, []byte("abc")}, {&pdu.NOPIn{TTT: 2}, nil, nil}}, digests{})
	r := pdu.NewReader(bytes.NewReader(wire), pdu.ReaderConfig{})
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if err := r.ReadData(make([]byte, 2)); err == nil {
		t.Fatal("ReadData with a short buffer succeeded")
	}
	p := make([]byte, 3)
	if err := r.ReadData(p); err != nil || string(p) != "abc" {
		t.Fatalf("ReadData: %q %v", p, err)
	}
	if err := r.ReadData(p); err == nil {
		t.Fatal("second ReadData succeeded")
	}
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if d, err := r.Data(); d != nil || err != nil {
		t.Fatalf("Data of a PDU without data: %q, %v", d, err)
	}
}

// countingWriter counts Write calls.
type countingWriter struct {
	bytes.Buffer
	writes int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.writes++
	return c.Buffer.Write(p)
}

func TestWriterGolden(t *testing.T) {
	var cw countingWriter
	w := pdu.NewWriter(&cw)
	w.SetDigests(true, true)
	if err := w.Append(&pdu.NOPOut{ITT: 1, TTT: 0xffffffff}, nil, []byte("abcde")); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	hdr := hx(t, "00 80 00 00", "00 000005", "00000000 00000000", "00000001", "ffffffff", "00000000", "00000000",
		"00000000", "00000000", "00000000", "00000000")
	want := append(bytes.Clone(hdr), le32(pdu.CRC32C(hdr))...)
	data := []byte("abcde\x00\x00\x00")
	want = append(want, data...)
	want = append(want, le32(pdu.CRC32C(data))...)
	if !bytes.Equal(cw.Bytes(), want) {
		t.Fatalf("\n got %x\nwant %x", cw.Bytes(), want)
	}
	// A Flush with nothing queued writes nothing.
	if err := w.Flush(); err != nil || cw.writes == 0 {
		t.Fatal(err)
	}
	n := cw.writes
	if err := w.Flush(); err != nil || cw.writes != n {
		t.Fatalf("empty Flush wrote: %v", err)
	}
	// Discard drops the queue.
	w.Append(&pdu.NOPOut{}, nil, nil)
	w.Discard()
	if w.Buffered() != 0 || w.Flush() != nil || cw.writes != n {
		t.Fatal("Discard")
	}
	// WritePDU is Append and Flush.
	if err := w.WritePDU(&pdu.NOPOut{ITT: 2}, nil); err != nil || cw.Len() != len(want)+52 {
		t.Fatalf("WritePDU: %v, %d bytes", err, cw.Len())
	}
}

func le32(v uint32) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }

func TestWriterRefuses(t *testing.T) {
	w := pdu.NewWriter(io.Discard)
	if err := w.Append(&pdu.SCSICommand{}, make([]byte, 6), nil); err == nil {
		t.Error("AHS of 6 bytes accepted")
	}
	if err := w.Append(&pdu.SCSICommand{}, make([]byte, pdu.MaxAHSLength+4), nil); err == nil {
		t.Error("AHS over 1020 bytes accepted")
	}
	if err := w.Append(&pdu.DataOut{}, nil, make([]byte, pdu.MaxDataSegmentLength+1)); err == nil {
		t.Error("data over 2^24-1 bytes accepted")
	}
	if w.Buffered() != 0 {
		t.Error("a refused PDU was queued")
	}
}

// TestWriterArenaGrowth queues more headers than the arena first holds, so
// that it moves while earlier PDUs are queued.
func TestWriterArenaGrowth(t *testing.T) {
	var items []item
	for i := range 200 {
		items = append(items, item{&pdu.DataOut{ITT: uint32(i), DataSN: uint32(i), BufferOffset: uint32(i * 3)}, nil, seqBytes(i%7, byte(i))})
	}
	for _, d := range allDigests {
		wire := encode(t, items, d)
		r := pdu.NewReader(bytes.NewReader(wire), pdu.ReaderConfig{From: pdu.FromInitiator, HeaderDigest: d.header, DataDigest: d.data})
		if n, err := readAll(t, r, items, false); n != len(items) || err != io.EOF {
			t.Fatalf("%+v: %d PDUs, %v", d, n, err)
		}
	}
}

// TestWriterTCP sends a batch over a loopback TCP connection, where
// net.Buffers uses writev, and reads it back with digests on.
func TestWriterTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skip(err)
	}
	defer ln.Close()
	items := targetStream()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		w := pdu.NewWriter(c)
		w.SetDigests(true, true)
		for _, it := range items {
			if err := w.Append(it.p, it.ahs, it.data); err != nil {
				done <- err
				return
			}
		}
		done <- w.Flush()
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := pdu.NewReader(c, pdu.ReaderConfig{From: pdu.FromTarget, HeaderDigest: true, DataDigest: true})
	n, err := readAll(t, r, items, false)
	if n != len(items) || err != io.EOF {
		t.Fatalf("%d PDUs, %v", n, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
