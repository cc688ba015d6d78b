package sockio

import (
	"bytes"
	"testing"

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
			c, s := tcpPair(t)
			sr := NewReader(c)
			if sr == nil {
				if rawIO {
					t.Fatal("no Reader of a *net.TCPConn")
				}
				t.Skip("no raw socket I/O here")
			}
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
