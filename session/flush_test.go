package session

import (
	"bytes"
	"testing"

	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/internal/testutil"
	"github.com/goiscsi/iscsi/pdu"
)

// TestReaderFlushesBeforeWaitingInData: the reader queues the Data-Out an
// R2T for a Call asks for (answerCallR2T) and sends it before it next waits
// for the network. Here the R2T comes with the header and the first bytes
// of a NOP-In's data segment, whose rest the target sends only once it has
// the Data-Out: a reader that waits for the rest of the segment with the
// Data-Out still queued never gets it (a header's worth of bytes buffered
// is no sign that the next read will not wait).
func TestReaderFlushesBeforeWaitingInData(t *testing.T) {
	for _, cut := range []int{pdu.BHSLen + 100, pdu.BHSLen - 8} {
		name := map[bool]string{true: "partial data segment", false: "partial header"}[cut > pdu.BHSLen]
		t.Run(name, func(t *testing.T) {
			cfg := testConfig()
			p := DefaultParams()
			p.InitialR2T, p.ImmediateData = true, false
			cfg.Params = &p
			s, f, _ := tcpSession(t, cfg, faketarget.Login{})
			data := pattern(4096, 7)
			done := make(chan *Call, 1)
			call := &Call{Cmd: *writeCmd(data), Done: func(c *Call) { done <- c }}
			if err := s.Submit(call); err != nil {
				t.Fatalf("Submit: %v", err)
			}
			x := f.Expect(pdu.OpSCSICommand)
			r2t := f.Wire(&pdu.R2T{ITT: x.BHS.ITT(), TTT: 0x71, SeqNums: f.Seq(false), DesiredDataTransferLength: 4096}, nil)
			ping := f.Wire(&pdu.NOPIn{ITT: pdu.ReservedTag, TTT: 0x72, SeqNums: f.Seq(false)}, pattern(4096, 8))
			if err := f.SendRaw(append(r2t, ping[:cut]...)); err != nil {
				t.Fatalf("sending the R2T: %v", err)
			}
			// Expect fails the test if the Data-Out does not come
			// within the fake target's wait.
			var got []byte
			for len(got) < len(data) {
				d := f.Expect(pdu.OpSCSIDataOut)
				got = append(got, d.Data...)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("the Data-Out carry other bytes than the write's")
			}
			if err := f.SendRaw(ping[cut:]); err != nil {
				t.Fatalf("sending the rest of the NOP-In: %v", err)
			}
			if x := f.Expect(pdu.OpNOPOut); x.PDU.(*pdu.NOPOut).TTT != 0x72 || !bytes.Equal(x.Data, pattern(4096, 8)) {
				t.Fatalf("NOP-Out with TTT %#x and %d bytes, want the ping's 0x72 and its data", x.PDU.(*pdu.NOPOut).TTT, len(x.Data))
			}
			f.Good(x)
			if c := testutil.Recv(t, done, wait, "the write's Done did not run"); c.Err != nil {
				t.Fatalf("the write failed: %v", c.Err)
			}
		})
	}
}
