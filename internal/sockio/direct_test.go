package sockio

import (
	"bytes"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

// TestLargeDataStraightIntoPlace reads 16 Data-In of 256 KiB (4 MiB, as
// four 1 MiB reads of tgtd's) through a pdu.Reader on a Reader and checks
// that their data went straight into the caller's buffer: Read copied at
// most overRead bytes per PDU out of its buffer after the first PDU (what
// the readv that brought the previous PDU's end, or the short read of the
// header after it, read of this one), and every byte is right, with
// digests and without.
func TestLargeDataStraightIntoPlace(t *testing.T) {
	for _, dig := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "digests"}[dig], func(t *testing.T) {
			const seg, pdus = 256 << 10, 16
			sr, s := coalesceReader(t)
			r := pdu.NewReader(sr, pdu.ReaderConfig{From: pdu.FromTarget, MaxDataSegmentLength: seg, DataDigest: dig, HeaderDigest: dig})
			w := rawWriter(t, s)
			w.SetDigests(dig, dig)
			want := make([]byte, seg*pdus)
			for i := range want {
				want[i] = byte(i*7 + i>>11)
			}
			werr := make(chan error, 1)
			go func() {
				for i := range pdus {
					d := &pdu.DataIn{ITT: 1, TTT: pdu.ReservedTag, DataSN: uint32(i), BufferOffset: uint32(i * seg), Final: i == pdus-1}
					if err := w.WritePDU(d, want[i*seg:(i+1)*seg]); err != nil {
						werr <- err
						return
					}
				}
				werr <- nil
			}()
			got := make([]byte, len(want))
			var first uint64
			for i := range pdus {
				if i == 1 {
					// The first header came with what the first
					// read took (up to the buffer's size).
					first = sr.Copied()
				}
				h, err := r.Next()
				if err != nil {
					t.Fatalf("PDU %d: %v", i, err)
				}
				if h.Opcode() != pdu.OpSCSIDataIn || h.DataSegmentLength() != seg {
					t.Fatalf("PDU %d: %s of %d bytes", i, h.Opcode(), h.DataSegmentLength())
				}
				if err := r.ReadData(got[i*seg : (i+1)*seg]); err != nil {
					t.Fatalf("PDU %d data: %v", i, err)
				}
			}
			if err := <-werr; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("data read differs from data written")
			}
			n := sr.Copied() - first
			t.Logf("%d bytes copied out of the read buffer for the first PDU, %d for the %d after it (%d per MiB)", first, n, pdus-1, n*4/(pdus-1))
			if n > (pdus-1)*overRead {
				t.Errorf("Read copied %d bytes out of its buffer for %d PDUs of %d bytes; want at most %d (overRead per PDU)", n, pdus-1, seg, (pdus-1)*overRead)
			}
		})
	}
}

// TestSplitHeaderAfterDirectRead: the header after a data segment read
// straight into place comes in two pieces. The read that brought the first
// piece was limited to overRead bytes; so must the next be, or it brings
// up to a buffer's worth of the next data segment into the buffer, to be
// copied (TestLargeDataStraightIntoPlace failed so about once in a hundred
// runs: 72,191 bytes copied where at most 7,680 may be).
func TestSplitHeaderAfterDirectRead(t *testing.T) {
	const seg = 256 << 10
	sr, s := coalesceReader(t)
	r := pdu.NewReader(sr, pdu.ReaderConfig{From: pdu.FromTarget, MaxDataSegmentLength: seg})
	var stream bytes.Buffer
	w := pdu.NewWriter(&stream)
	want := make([]byte, 2*seg)
	for i := range want {
		want[i] = byte(i*13 + i>>9)
	}
	for i := range 2 {
		if err := w.WritePDU(&pdu.DataIn{ITT: 1, TTT: pdu.ReservedTag, DataSN: uint32(i), BufferOffset: uint32(i * seg), Final: i == 1}, want[i*seg:(i+1)*seg]); err != nil {
			t.Fatal(err)
		}
	}
	b := stream.Bytes()
	first := pdu.BHSLen + seg
	// PDU 0 whole, then 20 bytes of PDU 1's header once PDU 0 is read,
	// then the rest once the reader has those 20 (and waits for more).
	consumed := make(chan struct{})
	werr := make(chan error, 1)
	go func() {
		if _, err := s.Write(b[:first]); err != nil {
			werr <- err
			return
		}
		<-consumed
		reads := sr.reads.Load()
		if _, err := s.Write(b[first : first+20]); err != nil {
			werr <- err
			return
		}
		for sr.reads.Load() == reads {
			time.Sleep(50 * time.Microsecond) // no signal says the reader read them
		}
		_, err := s.Write(b[first+20:])
		werr <- err
	}()
	got := make([]byte, len(want))
	var before uint64
	for i := range 2 {
		if _, err := r.Next(); err != nil {
			t.Fatalf("PDU %d: %v", i, err)
		}
		if err := r.ReadData(got[i*seg : (i+1)*seg]); err != nil {
			t.Fatalf("PDU %d data: %v", i, err)
		}
		if i == 0 {
			before = sr.Copied()
			close(consumed)
		}
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("data read differs from data written")
	}
	if n := sr.Copied() - before; n > overRead {
		t.Errorf("%d bytes of PDU 1 copied out of the read buffer after its header came in two pieces, want at most %d", n, overRead)
	}
}
