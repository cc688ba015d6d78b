package pdu

import (
	"bufio"
	"errors"
	"io"
	"os"
)

// DefaultMaxRecvDataSegmentLength is RFC 7143's default for
// MaxRecvDataSegmentLength, and the limit on login PDUs.
const DefaultMaxRecvDataSegmentLength = 8192

// ReaderConfig says what a Reader accepts.
type ReaderConfig struct {
	// From is the side the PDUs come from; PDUs the other side sends are
	// refused. Zero accepts both.
	From Direction
	// MaxDataSegmentLength is the largest DataSegmentLength accepted
	// (our MaxRecvDataSegmentLength); 0 means DefaultMaxRecvDataSegmentLength.
	MaxDataSegmentLength int
	HeaderDigest         bool
	DataDigest           bool
	// DataDigestInStep makes a data digest error not sticky (ErrorRecoveryLevel
	// 1 and up): the header was good, so the whole segment and its digest
	// were read and the stream is in step. ReadData and Data then return
	// the *DigestError and later calls go on; the caller discards the data
	// and asks for it again (a Data SNACK). Off, a data digest error fails
	// the Reader as any other error does (ErrorRecoveryLevel 0).
	DataDigestInStep bool
	// SkipBadHeader makes a header digest error not sticky once
	// (ErrorRecoveryLevel 1 and up): Next returns the *DigestError and the
	// next call skips the data segment the bad header announced, trusting
	// its DataSegmentLength if it is within MaxDataSegmentLength. RFC 7143
	// §7.8 warns that this length may be the corrupted field, and asks for
	// a sync and steering layer to find the next PDU; this Reader has none
	// (markers are gone from RFC 7143), and checks the skip instead: the
	// header that follows must pass its own digest, a 32-bit check of
	// where the skip landed. A second header digest error in a row (the
	// skip landed wrong, or the line is bad) fails the Reader. Only with
	// HeaderDigest.
	SkipBadHeader bool
}

// Reader reads PDUs from a byte stream. Next reads a header; the data segment
// is then read with ReadData (into the caller's buffer) or Data (into the
// Reader's), or skipped by the next call to Next. A Reader is not safe for
// concurrent use. After an error other than a clean io.EOF between PDUs the
// stream is out of step, and every later call returns the same error, with
// one exception: a read deadline (os.ErrDeadlineExceeded) that expires in
// Next, before the next header is all in, leaves the stream in step, and the
// next call to Next goes on from where it was.
type Reader struct {
	r   BufferedSource
	cfg ReaderConfig
	hdr BHS
	// ahs holds the current PDU's additional header segments; it is
	// allocated on the first PDU that has any (rare: an idle connection's
	// Reader should not carry 1 KiB it never uses).
	ahs  *[MaxAHSLength]byte
	nahs int
	// dataLen is the data segment length of the current PDU; unread reports
	// whether its data segment, padding and digest are still on the stream.
	dataLen int
	unread  bool
	// ddig is the DataDigest setting the current header was read with: a
	// SetConfig between Next and ReadData must not change how the data
	// segment already announced is read.
	ddig    bool
	buf     []byte
	scratch [DigestLen]byte
	err     error
	// skipping is set while skipData is part way through a data segment:
	// skipLeft bytes to go, skipCRC the digest so far.
	skipping bool
	skipLeft int
	skipCRC  uint32
	// inStep is DataDigestInStep as the current header was read.
	inStep bool
	// badHeader is set when the current PDU is one whose header failed its
	// digest and was skipped (SkipBadHeader): its data digest is not
	// checked, and another bad header before a good one is fatal.
	badHeader bool
}

// NewReader returns a Reader of r. A BufferedSource (a *bufio.Reader, say)
// whose buffer holds any header whole is read as it is; any other r is read
// through a bufio.Reader of 64 KiB.
func NewReader(r io.Reader, cfg ReaderConfig) *Reader {
	src, ok := r.(BufferedSource)
	if !ok || src.Size() < BHSLen+MaxAHSLength+DigestLen {
		src = bufio.NewReaderSize(r, readBufSize)
	}
	if cfg.MaxDataSegmentLength <= 0 {
		cfg.MaxDataSegmentLength = DefaultMaxRecvDataSegmentLength
	}
	return &Reader{r: src, cfg: cfg}
}

// SetConfig changes the limits and digests, e.g. when login ends. It takes
// effect with the next PDU: a data segment whose header Next has already
// returned is read with the settings that header was read with.
func (r *Reader) SetConfig(cfg ReaderConfig) {
	if cfg.MaxDataSegmentLength <= 0 {
		cfg.MaxDataSegmentLength = DefaultMaxRecvDataSegmentLength
	}
	r.cfg = cfg
}

// Release drops the buffer Data reads into, so that an idle connection's
// Reader holds no memory (a login's text responses may have made it up to
// MaxDataSegmentLength long); the next Data allocates one again. It does
// nothing while a data segment is unread.
func (r *Reader) Release() {
	if !r.unread {
		r.buf = nil
	}
}

// Config returns the Reader's configuration.
func (r *Reader) Config() ReaderConfig { return r.cfg }

// Next reads the next PDU's Basic Header Segment, its additional header
// segments and header digest, and checks every length against the
// configuration. The header it returns is valid until the next call.
// It returns io.EOF only when the stream ends cleanly between PDUs.
func (r *Reader) Next() (*BHS, error) {
	if r.err != nil {
		return nil, r.err
	}
	if r.unread {
		if err := r.skipData(); err != nil {
			if isTimeout(err) {
				return nil, err // resumed by the next call
			}
			return nil, r.fail(err)
		}
	}
	// The header (with its AHS and digest) is peeked, then consumed whole:
	// a read deadline that expires before it is all in leaves the stream
	// where it was, and the next call reads the same PDU.
	h := &r.hdr
	b, err := r.r.Peek(BHSLen)
	if err != nil {
		switch {
		case isTimeout(err):
			return nil, err
		case err == io.EOF && len(b) == 0:
			r.err = io.EOF
			return nil, io.EOF
		}
		return nil, r.fail(unexpected(err))
	}
	copy(h[:], b)
	op := h.Opcode()
	r.nahs = h.TotalAHSLength()
	hlen := BHSLen + r.nahs
	if r.cfg.HeaderDigest {
		hlen += DigestLen
	}
	if r.cfg.HeaderDigest {
		// A header the digest does not vouch for is not to be believed
		// about anything, its lengths included (§7.8: discard or drop the
		// connection), so the digest is checked first. The AHS it covers
		// goes into the Reader's own 1020 bytes: nothing is allocated
		// after the first PDU with an AHS.
		if err := r.peekHeader(hlen); err != nil {
			return nil, err
		}
		want := updateCRC(CRC32C(h[:]), r.AHS())
		if got := getDigest(r.scratch[:]); got != want {
			derr := &DigestError{Op: op, Got: got, Want: want}
			n := h.DataSegmentLength()
			if !r.cfg.SkipBadHeader || r.badHeader || n > r.cfg.MaxDataSegmentLength {
				return nil, r.fail(derr)
			}
			// Skipped on the length it claims; the next header's digest
			// checks that the skip landed on a PDU.
			r.r.Discard(hlen)
			r.badHeader = true
			r.dataLen, r.unread, r.ddig, r.inStep = n, n > 0, r.cfg.DataDigest, true
			return nil, derr
		}
	}
	r.badHeader = false
	if !op.Valid() {
		return nil, r.fail(&ProtocolError{Op: op, Field: "Opcode", Value: uint64(op), Reason: "undefined opcode"})
	}
	if r.cfg.From != 0 && op.Direction() != r.cfg.From {
		reason := "initiator opcode received from a target"
		if r.cfg.From == FromInitiator {
			reason = "target opcode received from an initiator"
		}
		return nil, r.fail(&ProtocolError{Op: op, Field: "Opcode", Value: uint64(op), Reason: reason})
	}
	info := &ops[op]
	if r.nahs > 0 && !info.ahs {
		return nil, r.fail(&ProtocolError{Op: op, Field: "TotalAHSLength", Value: uint64(h[4]), Reason: "this PDU carries no additional header segment"})
	}
	r.dataLen = h.DataSegmentLength()
	if r.dataLen > 0 && !info.data {
		return nil, r.fail(&ProtocolError{Op: op, Field: "DataSegmentLength", Value: uint64(r.dataLen), Reason: "this PDU carries no data segment"})
	}
	if r.dataLen > r.cfg.MaxDataSegmentLength {
		return nil, r.fail(&ProtocolError{Op: op, Field: "DataSegmentLength", Value: uint64(r.dataLen), Reason: "exceeds MaxRecvDataSegmentLength " + itoa(r.cfg.MaxDataSegmentLength)})
	}
	if !r.cfg.HeaderDigest {
		if err := r.peekHeader(hlen); err != nil {
			return nil, err
		}
	}
	r.r.Discard(hlen)
	r.unread = r.dataLen > 0
	r.ddig = r.cfg.DataDigest
	r.inStep = r.cfg.DataDigestInStep
	return h, nil
}

// peekHeader peeks the hlen bytes of the current header, its AHS and digest,
// into r.ahs and r.scratch, consuming nothing. A timeout is returned as is
// (the stream is still in step); any other error fails the Reader.
func (r *Reader) peekHeader(hlen int) error {
	if hlen == BHSLen {
		return nil
	}
	b, err := r.r.Peek(hlen)
	if err != nil {
		if isTimeout(err) {
			return err
		}
		return r.fail(unexpected(err))
	}
	if r.nahs > 0 {
		if r.ahs == nil {
			r.ahs = new([MaxAHSLength]byte)
		}
		copy(r.ahs[:r.nahs], b[BHSLen:])
	}
	if r.cfg.HeaderDigest {
		copy(r.scratch[:], b[BHSLen+r.nahs:])
	}
	return nil
}

// isTimeout reports a read deadline that expired: not an error of the
// stream, which a later call may go on reading.
func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// AHS returns the current PDU's additional header segments, valid until the
// next call to Next.
func (r *Reader) AHS() []byte {
	if r.nahs == 0 {
		return nil
	}
	return r.ahs[:r.nahs]
}

// ReadData reads the current PDU's data segment into p, which must be exactly
// DataSegmentLength bytes long, then its padding and data digest.
func (r *Reader) ReadData(p []byte) error {
	if r.err != nil {
		return r.err
	}
	if !r.unread || len(p) != r.dataLen {
		return errors.New("iscsi: ReadData: buffer length does not match the data segment, or no data segment is pending")
	}
	r.unread = false
	if _, err := io.ReadFull(r.r, p); err != nil {
		return r.fail(unexpected(err))
	}
	padding := r.scratch[:pad(r.dataLen)]
	if _, err := io.ReadFull(r.r, padding); err != nil {
		return r.fail(unexpected(err))
	}
	if !r.ddig {
		return nil
	}
	want := updateCRC(CRC32C(p), padding)
	if _, err := io.ReadFull(r.r, r.scratch[:]); err != nil {
		return r.fail(unexpected(err))
	}
	if got := getDigest(r.scratch[:]); got != want {
		derr := &DigestError{Op: r.hdr.Opcode(), Data: true, Got: got, Want: want}
		if r.inStep {
			return derr // all of it was read: the stream is in step
		}
		return r.fail(derr)
	}
	return nil
}

// Failed returns the error that ended the stream (io.EOF included), nil
// while it is in step (a data digest error with DataDigestInStep, or a header skipped
// with SkipBadHeader, leaves it in step).
func (r *Reader) Failed() error { return r.err }

// Data reads the current PDU's data segment into a buffer the Reader owns,
// valid until the next call to Next. It returns nil when there is none.
func (r *Reader) Data() ([]byte, error) {
	if r.err != nil {
		return nil, r.err
	}
	if !r.unread {
		return nil, nil
	}
	if cap(r.buf) < r.dataLen {
		r.buf = make([]byte, r.dataLen)
	}
	b := r.buf[:r.dataLen]
	if err := r.ReadData(b); err != nil {
		return nil, err
	}
	return b, nil
}

// skipData reads past an unread data segment, still checking its digest. It
// digests the bytes in the read buffer rather than copying them. A read
// deadline that expires part way leaves it where it was: the next call goes
// on from there.
func (r *Reader) skipData() error {
	if !r.skipping {
		r.skipping, r.skipLeft, r.skipCRC = true, r.dataLen+pad(r.dataLen), 0
	}
	for r.skipLeft > 0 {
		c, err := r.r.Peek(min(r.skipLeft, r.r.Size()))
		if err != nil {
			if isTimeout(err) {
				return err
			}
			return unexpected(err)
		}
		if r.ddig {
			r.skipCRC = updateCRC(r.skipCRC, c)
		}
		r.r.Discard(len(c))
		r.skipLeft -= len(c)
	}
	if r.ddig {
		b, err := r.r.Peek(DigestLen)
		if err != nil {
			if isTimeout(err) {
				return err
			}
			return unexpected(err)
		}
		got := getDigest(b)
		r.r.Discard(DigestLen)
		if got != r.skipCRC && !r.badHeader && !r.inStep {
			r.skipping, r.unread = false, false
			return &DigestError{Op: r.hdr.Opcode(), Data: true, Got: got, Want: r.skipCRC}
		}
	}
	r.skipping, r.unread = false, false
	return nil
}

func (r *Reader) fail(err error) error {
	r.err = err
	return err
}

// unexpected turns an EOF inside a PDU into io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	if n == 0 {
		return "0"
	}
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}
