package pdu_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/goiscsi/iscsi/pdu"
)

// TestDataDigestInStep corrupts the data of the first of three Data-In PDUs:
// with DataDigestInStep the error is reported and not sticky, the next PDUs
// read whole; without it the error is sticky (ErrorRecoveryLevel 0).
func TestDataDigestInStep(t *testing.T) {
	items := []item{
		{&pdu.DataIn{ITT: 1, DataSN: 0}, nil, seqBytes(10, 1)},
		{&pdu.DataIn{ITT: 1, DataSN: 1, BufferOffset: 10}, nil, seqBytes(10, 2)},
		{&pdu.DataIn{ITT: 1, DataSN: 2, BufferOffset: 20}, nil, seqBytes(6, 3)},
	}
	good := encode(t, items, digests{true, true})
	wire := bytes.Clone(good)
	wire[pdu.BHSLen+4+3] ^= 0x20 // first PDU's data
	for _, inStep := range []bool{false, true} {
		for _, skip := range []bool{false, true} {
			r := pdu.NewReader(bytes.NewReader(wire), pdu.ReaderConfig{HeaderDigest: true, DataDigest: true, DataDigestInStep: inStep})
			if _, err := r.Next(); err != nil {
				t.Fatal(err)
			}
			var err error
			if !skip {
				_, err = r.Data()
				var de *pdu.DigestError
				if !errors.As(err, &de) || !de.Data {
					t.Fatalf("inStep=%v: Data = %v, want a data DigestError", inStep, err)
				}
			}
			h, err := r.Next()
			if !inStep {
				if err == nil || r.Failed() == nil {
					t.Fatalf("inStep=false skip=%v: Next after a data digest error = %v, want the sticky error", skip, err)
				}
				continue
			}
			if err != nil || r.Failed() != nil {
				t.Fatalf("skip=%v: Next after a data digest error in step: %v", skip, err)
			}
			var d pdu.DataIn
			if err := d.UnmarshalBHS(h); err != nil || d.DataSN != 1 {
				t.Fatalf("next PDU DataSN %d (%v), want 1", d.DataSN, err)
			}
			b, err := r.Data()
			if err != nil || !bytes.Equal(b, seqBytes(10, 2)) {
				t.Fatalf("next PDU's data %x, %v", b, err)
			}
		}
	}
}

// TestSkipBadHeader corrupts a header digest: with SkipBadHeader, Next
// reports it once, skips the segment the header announced and reads the
// next PDU; two bad headers in a row fail the Reader.
func TestSkipBadHeader(t *testing.T) {
	items := []item{
		{&pdu.DataIn{ITT: 1, DataSN: 0}, nil, seqBytes(10, 1)},
		{&pdu.DataIn{ITT: 1, DataSN: 1, BufferOffset: 10}, nil, seqBytes(10, 2)},
		{&pdu.DataIn{ITT: 1, DataSN: 2, BufferOffset: 20}, nil, seqBytes(6, 3)},
	}
	good := encode(t, items, digests{true, true})
	pduLen := pdu.BHSLen + 4 + 12 + 4
	cfg := pdu.ReaderConfig{HeaderDigest: true, DataDigest: true, SkipBadHeader: true, DataDigestInStep: true}

	wire := bytes.Clone(good)
	wire[pdu.BHSLen] ^= 0x01 // first header's digest
	r := pdu.NewReader(bytes.NewReader(wire), cfg)
	var de *pdu.DigestError
	if _, err := r.Next(); !errors.As(err, &de) || de.Data {
		t.Fatalf("Next = %v, want a header DigestError", err)
	}
	h, err := r.Next()
	if err != nil {
		t.Fatalf("Next after a skipped header: %v", err)
	}
	var d pdu.DataIn
	if d.UnmarshalBHS(h); d.DataSN != 1 {
		t.Fatalf("after the skip DataSN %d, want 1", d.DataSN)
	}

	// Two in a row: the second is fatal and sticky.
	wire = bytes.Clone(good)
	wire[pdu.BHSLen] ^= 0x01
	wire[pduLen+pdu.BHSLen] ^= 0x01
	r = pdu.NewReader(bytes.NewReader(wire), cfg)
	if _, err := r.Next(); !errors.As(err, &de) {
		t.Fatalf("first bad header: %v", err)
	}
	_, err = r.Next()
	if !errors.As(err, &de) || r.Failed() == nil {
		t.Fatalf("second bad header in a row: %v (failed %v), want a sticky DigestError", err, r.Failed())
	}
	if _, err2 := r.Next(); err2 != err {
		t.Fatalf("not sticky: %v", err2)
	}

	// A bad header claiming a length past MaxDataSegmentLength is fatal.
	wire = bytes.Clone(good)
	wire[5] = 0x7f // DataSegmentLength, covered by the digest
	r = pdu.NewReader(bytes.NewReader(wire), cfg)
	if _, err := r.Next(); !errors.As(err, &de) || r.Failed() == nil {
		t.Fatalf("bad header with a huge length: %v (failed %v), want fatal", err, r.Failed())
	}
}
