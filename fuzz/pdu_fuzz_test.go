// Package fuzz holds the fuzz targets of the iSCSI codec: decode → encode →
// decode must agree, and no input may panic.
package fuzz

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"slices"
	"testing"

	"github.com/goiscsi/iscsi/pdu"
)

// maxData is the MaxDataSegmentLength of FuzzReader: small, so that the
// fuzzer reaches the limit.
const maxData = 1024

// mode is FuzzReader's first input byte.
type mode byte

func (m mode) headerDigest() bool { return m&1 != 0 }
func (m mode) dataDigest() bool   { return m&2 != 0 }
func (m mode) skipData() bool     { return m&4 != 0 } // leave data segments for Next to skip
func (m mode) from() pdu.Direction {
	switch m >> 3 & 3 {
	case 1:
		return pdu.FromInitiator
	case 2:
		return pdu.FromTarget
	}
	return 0
}

func (m mode) config() pdu.ReaderConfig {
	return pdu.ReaderConfig{From: m.from(), MaxDataSegmentLength: maxData, HeaderDigest: m.headerDigest(), DataDigest: m.dataDigest()}
}

// checkErr fails on any error but those a malformed stream may give.
func checkErr(t *testing.T, err error) {
	t.Helper()
	var pe *pdu.ProtocolError
	var de *pdu.DigestError
	if err == io.EOF || err == io.ErrUnexpectedEOF || errors.As(err, &pe) || errors.As(err, &de) {
		return
	}
	t.Fatalf("unexpected error %T: %v", err, err)
}

func FuzzReader(f *testing.F) {
	for _, s := range readerSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		m := mode(in[0])
		r := pdu.NewReader(bytes.NewReader(in[1:]), m.config())
		for n := 0; ; n++ {
			h, err := r.Next()
			if err != nil {
				checkErr(t, err)
				// Errors stick.
				if _, err2 := r.Next(); err2 != err {
					t.Fatalf("Next after %v: %v", err, err2)
				}
				return
			}
			if h.DataSegmentLength() > maxData {
				t.Fatalf("DataSegmentLength %d accepted over %d", h.DataSegmentLength(), maxData)
			}
			if m.from() != 0 && h.Opcode().Direction() != m.from() {
				t.Fatalf("%v accepted from the wrong side", h.Opcode())
			}
			hdr := *h
			ahs := bytes.Clone(r.AHS())
			if len(ahs) != h.TotalAHSLength() {
				t.Fatalf("AHS of %d bytes, TotalAHSLength %d", len(ahs), h.TotalAHSLength())
			}
			var data []byte
			if !m.skipData() {
				d, err := r.Data()
				if err != nil {
					checkErr(t, err)
					return
				}
				if len(d) != h.DataSegmentLength() {
					t.Fatalf("Data returned %d bytes of %d", len(d), h.DataSegmentLength())
				}
				data = bytes.Clone(d)
			}
			p, err := pdu.Decode(&hdr)
			if err != nil {
				// The Reader checks lengths, Decode the fields: a header
				// the Reader passes may still break a flag rule.
				checkErr(t, err)
				continue
			}
			reencode(t, m, p, ahs, data)
		}
	})
}

// reencode writes p with a Writer and reads it back with the same settings.
func reencode(t *testing.T, m mode, p pdu.PDU, ahs, data []byte) {
	t.Helper()
	var buf bytes.Buffer
	w := pdu.NewWriter(&buf)
	w.SetDigests(m.headerDigest(), m.dataDigest())
	if err := w.Append(p, ahs, data); err != nil {
		t.Fatalf("Append(%+v): %v", p, err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	r := pdu.NewReader(&buf, m.config())
	h, err := r.Next()
	if err != nil {
		t.Fatalf("re-encoded %+v: %v", p, err)
	}
	q, err := pdu.Decode(h)
	if err != nil {
		t.Fatalf("re-encoded %+v: %v", p, err)
	}
	if !reflect.DeepEqual(p, q) {
		t.Fatalf("re-encoded\n%+v\nreads back as\n%+v", p, q)
	}
	if !bytes.Equal(r.AHS(), ahs) {
		t.Fatalf("AHS %x reads back as %x", ahs, r.AHS())
	}
	d, err := r.Data()
	if err != nil || !bytes.Equal(d, data) {
		t.Fatalf("data %x reads back as %x, %v", data, d, err)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("after the re-encoded PDU: %v", err)
	}
}

func FuzzDecodeEncode(f *testing.F) {
	for _, it := range seedPDUs() {
		var h pdu.BHS
		it.p.MarshalBHS(&h)
		h.SetLengths(len(it.ahs), len(it.data))
		f.Add(h[:])
	}
	for _, s := range pcapSeeds(f) {
		for _, h := range s.headers {
			f.Add(h[:])
		}
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < pdu.BHSLen {
			return
		}
		h := pdu.BHS(in[:pdu.BHSLen])
		p, err := pdu.Decode(&h)
		if err != nil {
			var pe *pdu.ProtocolError
			if !errors.As(err, &pe) || p != nil {
				t.Fatalf("Decode: %v, %v", p, err)
			}
			return
		}
		if p.Opcode() != h.Opcode() {
			t.Fatalf("%T from opcode %v", p, h.Opcode())
		}
		var h2 pdu.BHS
		p.MarshalBHS(&h2)
		q, err := pdu.Decode(&h2)
		if err != nil {
			t.Fatalf("%+v encodes as %x, which does not decode: %v", p, h2[:], err)
		}
		if !reflect.DeepEqual(p, q) {
			t.Fatalf("%x decodes as\n%+v\nencodes as %x, decodes as\n%+v", h[:], p, h2[:], q)
		}
		var h3 pdu.BHS
		q.MarshalBHS(&h3)
		if h2 != h3 {
			t.Fatalf("encoding not stable: %x then %x", h2[:], h3[:])
		}
	})
}

func FuzzText(f *testing.F) {
	for _, s := range textSeeds() {
		f.Add([]byte(s))
	}
	for _, s := range pcapTexts(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		lim := pdu.TextLimits{MaxPairs: 64, AllowDuplicates: len(in)%2 == 1}
		kvs, err := pdu.ParseText(in, lim)
		if err != nil {
			var te *pdu.TextError
			if !errors.As(err, &te) || kvs != nil {
				t.Fatalf("ParseText: %q, %v", kvs, err)
			}
			if te.Offset < 0 || te.Offset > len(in) {
				t.Fatalf("offset %d in %d bytes", te.Offset, len(in))
			}
			return
		}
		b := pdu.AppendText(nil, kvs...)
		if len(b) > len(in) {
			t.Fatalf("%d bytes re-encode as %d", len(in), len(b))
		}
		kvs2, err := pdu.ParseText(b, lim)
		if err != nil {
			t.Fatalf("%q re-encoded as %q: %v", in, b, err)
		}
		// slices.Equal: an input of bare NULs parses to no pair, as does
		// its empty re-encoding, one as an empty slice and one as nil.
		if !slices.Equal(kvs, kvs2) {
			t.Fatalf("%q parses as %q, re-encodes as %q, parses as %q", in, kvs, b, kvs2)
		}
		if b2 := pdu.AppendText(nil, kvs2...); !bytes.Equal(b, b2) {
			t.Fatalf("encoding not stable: %q then %q", b, b2)
		}
		// The value parsers must refuse, not panic, whatever a peer sends.
		for _, kv := range kvs {
			pdu.ParseNumber(kv.Value)
			pdu.ParseRange(kv.Value)
			pdu.ParseBool(kv.Value)
			pdu.ParseList(kv.Value)
			if b, err := pdu.ParseBinary(kv.Value, pdu.MaxBinaryValueLen); err == nil && len(b) > pdu.MaxBinaryValueLen {
				t.Fatalf("ParseBinary returned %d bytes", len(b))
			}
		}
	})
}
