package capture

import (
	"net/netip"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

// Options say what a Decoder or Stream takes for iSCSI.
type Options struct {
	// Ports are the TCP ports of iSCSI targets; nil means DefaultPort. Of a
	// connection's two ends, the one on such a port is the target.
	Ports []uint16
	// HeaderDigest and DataDigest say whether the connections negotiated
	// CRC32C digests, which every PDU but those of the login phase carries.
	HeaderDigest, DataDigest bool
	// MaxDataSegmentLength is the largest DataSegmentLength taken for a PDU;
	// a longer one means the decoder lost its place. 0 means
	// pdu.MaxDataSegmentLength.
	MaxDataSegmentLength int
	// MaxPending is how many bytes of segments that arrived ahead of a
	// missing one a Decoder buffers per direction before it gives the
	// missing bytes up as never captured; 0 means 4 MiB.
	MaxPending int
}

func (o Options) withDefaults() Options {
	if len(o.Ports) == 0 {
		o.Ports = []uint16{DefaultPort}
	}
	if o.MaxDataSegmentLength <= 0 || o.MaxDataSegmentLength > pdu.MaxDataSegmentLength {
		o.MaxDataSegmentLength = pdu.MaxDataSegmentLength
	}
	if o.MaxPending <= 0 {
		o.MaxPending = 4 << 20
	}
	return o
}

// Record is one PDU of a capture.
type Record struct {
	// Time is when the packet that completed the PDU was captured, and
	// Frame its 1-based number among the packets given to the Decoder (as
	// tshark's frame.number counts them); 0 from a bare Stream.
	Time  time.Time
	Frame int
	// Src and Dst are the sender's and the receiver's address.
	Src, Dst      netip.AddrPort
	FromInitiator bool
	// Header is the Basic Header Segment as on the wire.
	Header pdu.BHS
	// PDU is Header decoded into its opcode's type; nil when pdu.Decode
	// refused it, and Err says why.
	PDU pdu.PDU
	// AHS holds the additional header segments, Data the data segment
	// without padding. The Record owns them.
	AHS, Data []byte
	// HeaderDigest and DataDigest are the digests the PDU carries, when
	// the Options say there are digests; login PDUs carry none.
	HeaderDigest, DataDigest uint32
	// Err is a *pdu.DigestError for a digest that does not match, or the
	// error of pdu.Decode. The PDU's framing was right all the same.
	Err error
}

// Stats count what a Decoder or Stream met.
type Stats struct {
	Packets     int // packets given to the Decoder
	Segments    int // TCP segments to or from an iSCSI port
	Connections int // TCP connections seen

	Records     int // PDUs decoded
	BadDigests  int // records with a digest that does not match
	BadHeaders  int // records whose header pdu.Decode refused
	Retransmits int // segments that carried bytes already seen
	OutOfOrder  int // segments that arrived ahead of a missing one
	Gaps        int // places where stream bytes were never captured
	Resyncs     int // times the decoder scanned for a header: mid-stream starts, gaps, nonsense headers
	Skipped     int // bytes skipped while scanning for a header
	Truncated   int // PDUs cut short by a gap or the end of the capture
}

func (s *Stats) add(o Stats) {
	s.Packets += o.Packets
	s.Segments += o.Segments
	s.Connections += o.Connections
	s.Records += o.Records
	s.BadDigests += o.BadDigests
	s.BadHeaders += o.BadHeaders
	s.Retransmits += o.Retransmits
	s.OutOfOrder += o.OutOfOrder
	s.Gaps += o.Gaps
	s.Resyncs += o.Resyncs
	s.Skipped += o.Skipped
	s.Truncated += o.Truncated
}

// Stream decodes the PDUs one side of one TCP connection sends, from the
// connection's payload bytes in order. When it loses its place (a Gap, a
// capture that starts mid-stream, a header that makes no sense) it scans for
// a plausible header that is followed by another plausible header, or whose
// header digest matches, and goes on from there. A Stream is not safe for
// concurrent use.
type Stream struct {
	src, dst   netip.AddrPort
	from       pdu.Direction
	hdig, ddig bool
	maxData    int
	// buf holds bytes fed and not yet consumed: a partial PDU, or while
	// scanning, bytes from the first header candidate that cannot be
	// checked yet.
	buf    []byte
	synced bool
	last   time.Time
	stats  Stats
}

// NewStream returns a Stream of the PDUs src sends to dst, starting at the
// beginning of the connection's byte stream.
func NewStream(src, dst netip.AddrPort, fromInitiator bool, opts Options) *Stream {
	opts = opts.withDefaults()
	from := pdu.FromTarget
	if fromInitiator {
		from = pdu.FromInitiator
	}
	return &Stream{src: src, dst: dst, from: from, hdig: opts.HeaderDigest, ddig: opts.DataDigest,
		maxData: opts.MaxDataSegmentLength, synced: true}
}

// Feed takes the next bytes of the stream, captured at t, and appends the
// PDUs they complete to rs. It does not keep b.
func (s *Stream) Feed(t time.Time, b []byte, rs []Record) []Record {
	s.last = t
	if len(s.buf) == 0 {
		n := 0
		n, rs = s.parse(b, false, rs)
		s.buf = append(s.buf, b[n:]...)
		return rs
	}
	s.buf = append(s.buf, b...)
	n := 0
	n, rs = s.parse(s.buf, false, rs)
	s.consume(n)
	return rs
}

// Gap says that bytes of the stream were lost before the next Feed, as
// when a capture starts mid-stream or missed a segment. The PDU in progress
// is dropped, and the Stream scans for a header again. It appends to rs a
// last PDU that, unverified so far, ends exactly where the gap begins.
func (s *Stream) Gap(rs []Record) []Record {
	rs = s.end(rs)
	s.synced = false
	s.stats.Resyncs++
	return rs
}

// Close ends the stream and appends to rs a last PDU that, unverified so
// far, ends exactly at the end. Bytes of an incomplete PDU are dropped and
// counted as Truncated.
func (s *Stream) Close(rs []Record) []Record { return s.end(rs) }

// Stats returns what the Stream has counted.
func (s *Stream) Stats() Stats { return s.stats }

func (s *Stream) end(rs []Record) []Record {
	n := 0
	n, rs = s.parse(s.buf, true, rs)
	s.consume(n)
	if len(s.buf) > 0 {
		if s.synced {
			s.stats.Truncated++
		} else {
			s.stats.Skipped += len(s.buf)
		}
		s.buf = s.buf[:0]
	}
	return rs
}

func (s *Stream) consume(n int) {
	if n > 0 {
		s.buf = s.buf[:copy(s.buf, s.buf[n:])]
	}
}

// parse appends the PDUs at the start of b to rs and returns how many bytes
// it consumed. At eof no more bytes follow b.
func (s *Stream) parse(b []byte, eof bool, rs []Record) (int, []Record) {
	off := 0
	for {
		rest := b[off:]
		if !s.synced {
			skip, found := s.scan(rest, eof)
			s.stats.Skipped += skip
			off += skip
			if !found {
				return off, rs
			}
			s.synced = true
			continue
		}
		if len(rest) < pdu.BHSLen {
			return off, rs
		}
		lay, ok := framing((*pdu.BHS)(rest), s.from, s.maxData, s.hdig, s.ddig)
		if !ok {
			s.synced = false
			s.stats.Resyncs++
			continue // scan rejects this header too and skips past it
		}
		if len(rest) < lay.total {
			return off, rs
		}
		rs = append(rs, s.record(rest[:lay.total], lay))
		off += lay.total
	}
}

// scan looks in b for the first header it can trust and returns the number
// of bytes before it. Without a header digest a candidate is trusted when
// the bytes after its PDU are a plausible header too, or at eof when its PDU
// ends exactly at the end of b. found is false when no candidate could be
// trusted yet: skip then leaves the bytes that may still start one.
func (s *Stream) scan(b []byte, eof bool) (skip int, found bool) {
	for i := 0; i+pdu.BHSLen <= len(b); i++ {
		if op := pdu.Opcode(b[i] & 0x3f); b[i]&0x80 != 0 || op.Direction() != s.from {
			continue
		}
		lay, ok := plausible((*pdu.BHS)(b[i:]), s.from, s.maxData, s.hdig, s.ddig)
		if !ok {
			continue
		}
		if lay.hdig {
			n := pdu.BHSLen + lay.ahs
			if len(b)-i < n+pdu.DigestLen {
				if eof {
					continue
				}
				return i, false
			}
			if pdu.UpdateCRC32C(pdu.CRC32C(b[i:i+pdu.BHSLen]), b[i+pdu.BHSLen:i+n]) == le32(b[i+n:]) {
				return i, true
			}
			continue
		}
		end := i + lay.total
		if end == len(b) && eof {
			return i, true
		}
		if end+pdu.BHSLen > len(b) {
			if eof {
				continue
			}
			return i, false
		}
		if _, ok := plausible((*pdu.BHS)(b[end:]), s.from, s.maxData, s.hdig, s.ddig); ok {
			return i, true
		}
	}
	if eof {
		return len(b), false
	}
	return max(0, len(b)-(pdu.BHSLen-1)), false
}

// record builds the Record of the PDU that is all of b.
func (s *Stream) record(b []byte, lay layout) Record {
	r := Record{Time: s.last, Src: s.src, Dst: s.dst, FromInitiator: s.from == pdu.FromInitiator}
	copy(r.Header[:], b)
	op := r.Header.Opcode()
	var owned []byte
	if n := lay.ahs + lay.data; n > 0 {
		owned = make([]byte, n)
	}
	off := pdu.BHSLen
	if lay.ahs > 0 {
		r.AHS = owned[:lay.ahs:lay.ahs]
		copy(r.AHS, b[off:])
		off += lay.ahs
	}
	if lay.hdig {
		r.HeaderDigest = le32(b[off:])
		if want := pdu.UpdateCRC32C(pdu.CRC32C(b[:pdu.BHSLen]), r.AHS); want != r.HeaderDigest {
			r.Err = &pdu.DigestError{Op: op, Got: r.HeaderDigest, Want: want}
		}
		off += pdu.DigestLen
	}
	if lay.data > 0 {
		r.Data = owned[lay.ahs:]
		copy(r.Data, b[off:])
		n := lay.data + padLen(lay.data)
		if lay.ddig {
			r.DataDigest = le32(b[off+n:])
			if want := pdu.CRC32C(b[off : off+n]); want != r.DataDigest && r.Err == nil {
				r.Err = &pdu.DigestError{Op: op, Data: true, Got: r.DataDigest, Want: want}
			}
		}
	}
	if r.Err != nil {
		s.stats.BadDigests++
	}
	p, err := pdu.Decode(&r.Header)
	if err != nil {
		s.stats.BadHeaders++
		if r.Err == nil {
			r.Err = err
		}
	}
	r.PDU = p
	s.stats.Records++
	return r
}
