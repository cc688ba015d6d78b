package pdu_test

import (
	"bytes"
	"testing"

	"github.com/goiscsi/iscsi/pdu"
)

// TestCRC32CVectors checks the examples of RFC 7143 Appendix B.4 (RFC 3720
// B.4), as the bytes that go on the wire.
func TestCRC32CVectors(t *testing.T) {
	incr, decr, ones := make([]byte, 32), make([]byte, 32), make([]byte, 32)
	for i := range 32 {
		incr[i] = byte(i)
		decr[i] = byte(31 - i)
		ones[i] = 0xff
	}
	// An iSCSI SCSI Read (10) command PDU.
	read10 := hx(t, "01 c0 00 00", "00 00 00 00", "00000000 00000000", "14 00 00 00", "00 00 04 00", "00 00 00 14", "00 00 00 18",
		"28 00 00 00", "00 00 00 00", "02 00 00 00", "00 00 00 00")
	for _, c := range []struct {
		name string
		in   []byte
		wire string
	}{
		{"32 bytes of zeros", make([]byte, 32), "aa 36 91 8a"},
		{"32 bytes of ones", ones, "43 ab a8 62"},
		{"32 incrementing bytes", incr, "4e 79 dd 46"},
		{"32 decrementing bytes", decr, "5c db 3f 11"},
		{"SCSI Read (10) command", read10, "56 3a 96 d9"},
	} {
		if got, want := le32(pdu.CRC32C(c.in)), hx(t, c.wire); !bytes.Equal(got, want) {
			t.Errorf("%s: digest on the wire %x, want %x", c.name, got, want)
		}
	}

	// The same command through Decode and a Writer with header digests: the
	// wire bytes are the RFC's PDU followed by its digest.
	var h pdu.BHS
	copy(h[:], read10)
	p, err := pdu.Decode(&h)
	if err != nil {
		t.Fatal(err)
	}
	cmd := p.(*pdu.SCSICommand)
	if !cmd.Final || !cmd.Read || cmd.ITT != 0x14000000 || cmd.ExpectedDataTransferLength != 0x400 ||
		cmd.CmdSN != 0x14 || cmd.ExpStatSN != 0x18 || cmd.CDB[0] != 0x28 || cmd.CDB[8] != 2 {
		t.Fatalf("decoded %+v", cmd)
	}
	var buf bytes.Buffer
	w := pdu.NewWriter(&buf)
	w.SetDigests(true, true)
	if err := w.WritePDU(cmd, nil); err != nil {
		t.Fatal(err)
	}
	if want := append(bytes.Clone(read10), hx(t, "56 3a 96 d9")...); !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("Writer:\n got %x\nwant %x", buf.Bytes(), want)
	}
}
