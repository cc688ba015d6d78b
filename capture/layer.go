package capture

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/goiscsi/iscsi/pdu"
)

// DefaultPort is the TCP port iSCSI targets listen on (RFC 7143 §13.11).
const DefaultPort = 3260

// LayerTypeISCSI is the gopacket layer type of one iSCSI PDU. TCP segments
// to or from DefaultPort decode to it when the packet's
// DecodeOptions.DecodeStreamsAsDatagrams is set, as long as they hold whole
// PDUs; the Decoder reassembles the others.
var LayerTypeISCSI = gopacket.RegisterLayerType(1326, gopacket.LayerTypeMetadata{
	Name:    "iSCSI",
	Decoder: LayerDecoder{},
})

func init() {
	// gopacket hands a TCP payload to this registration only when
	// DecodeOptions.DecodeStreamsAsDatagrams is set; otherwise it is Payload.
	layers.RegisterTCPPortLayerType(DefaultPort, LayerTypeISCSI)
}

// ISCSI is one iSCSI PDU as a gopacket layer. LayerContents is the whole
// PDU; LayerPayload is whatever follows it in the same segment, usually the
// next PDU. Its slices point into the decoded bytes.
type ISCSI struct {
	layers.BaseLayer
	// HasHeaderDigest and HasDataDigest say whether the connection
	// negotiated digests, which every PDU but login PDUs then carries. They
	// configure DecodeFromBytes and SerializeTo, which leave them as they are.
	HasHeaderDigest, HasDataDigest bool

	// Header is the Basic Header Segment as on the wire.
	Header pdu.BHS
	// PDU is Header decoded into its opcode's type.
	PDU pdu.PDU
	// AHS holds the additional header segments, Data the data segment
	// without its padding.
	AHS, Data []byte
	// HeaderDigest and DataDigest are the CRC32C values the PDU carries,
	// when HasHeaderDigest and HasDataDigest say it does; login PDUs carry
	// none, and PDUs without a data segment no data digest.
	HeaderDigest, DataDigest uint32
}

// LayerType returns LayerTypeISCSI.
func (*ISCSI) LayerType() gopacket.LayerType { return LayerTypeISCSI }

// CanDecode returns LayerTypeISCSI.
func (*ISCSI) CanDecode() gopacket.LayerClass { return LayerTypeISCSI }

// NextLayerType returns LayerTypeISCSI when more bytes follow the PDU in
// the segment, else LayerTypeZero.
func (l *ISCSI) NextLayerType() gopacket.LayerType {
	if len(l.BaseLayer.Payload) > 0 {
		return LayerTypeISCSI
	}
	return gopacket.LayerTypeZero
}

// Payload returns the PDU's data segment, which makes ISCSI a
// gopacket.ApplicationLayer.
func (l *ISCSI) Payload() []byte { return l.Data }

// errTruncated is returned for input that ends inside a PDU.
var errTruncated = errors.New("capture: iSCSI PDU truncated")

// DecodeFromBytes decodes the PDU at the start of data. Input that ends
// inside the PDU marks df truncated and fails; so does an undefined opcode,
// a length the opcode does not allow, or a header that pdu.Decode refuses.
// It does not check digests; VerifyDigests does.
func (l *ISCSI) DecodeFromBytes(data []byte, df gopacket.DecodeFeedback) error {
	hd, dd := l.HasHeaderDigest, l.HasDataDigest
	*l = ISCSI{HasHeaderDigest: hd, HasDataDigest: dd}
	if len(data) < pdu.BHSLen {
		df.SetTruncated()
		return fmt.Errorf("%w: %d bytes, less than a header", errTruncated, len(data))
	}
	copy(l.Header[:], data)
	lay, ok := framing(&l.Header, 0, pdu.MaxDataSegmentLength, hd, dd)
	if !ok {
		return fmt.Errorf("capture: not an iSCSI header: opcode 0x%02x, TotalAHSLength %d, DataSegmentLength %d",
			data[0], l.Header.TotalAHSLength(), l.Header.DataSegmentLength())
	}
	if len(data) < lay.total {
		df.SetTruncated()
		return fmt.Errorf("%w: %s needs %d bytes, have %d", errTruncated, l.Header.Opcode(), lay.total, len(data))
	}
	off := pdu.BHSLen
	if lay.ahs > 0 {
		l.AHS = data[off : off+lay.ahs : off+lay.ahs]
		off += lay.ahs
	}
	if lay.hdig {
		l.HeaderDigest = le32(data[off:])
		off += pdu.DigestLen
	}
	if lay.data > 0 {
		l.Data = data[off : off+lay.data : off+lay.data]
		off += lay.data + padLen(lay.data)
	}
	if lay.ddig {
		l.DataDigest = le32(data[off:])
		off += pdu.DigestLen
	}
	l.Contents, l.BaseLayer.Payload = data[:off:off], data[off:]
	p, err := pdu.Decode(&l.Header)
	if err != nil {
		return err
	}
	l.PDU = p
	return nil
}

// VerifyDigests checks the digests the PDU carries against its bytes and
// returns a *pdu.DigestError for the first that does not match.
func (l *ISCSI) VerifyDigests() error {
	op := l.Header.Opcode()
	if l.HasHeaderDigest && !isLogin(op) {
		if want := headerCRC(&l.Header, l.AHS); want != l.HeaderDigest {
			return &pdu.DigestError{Op: op, Got: l.HeaderDigest, Want: want}
		}
	}
	if l.HasDataDigest && !isLogin(op) && len(l.Data) > 0 {
		if want := dataCRC(l.Data); want != l.DataDigest {
			return &pdu.DigestError{Op: op, Data: true, Got: l.DataDigest, Want: want}
		}
	}
	return nil
}

// SerializeTo prepends the PDU to b: Header (or PDU, when set, marshalled
// over Header's fields other than the lengths), AHS, header digest, Data,
// padding and data digest. With opts.FixLengths it sets TotalAHSLength and
// DataSegmentLength from AHS and Data; with opts.ComputeChecksums it computes
// the digests, else it writes HeaderDigest and DataDigest as they are. Header
// and the digest fields are updated to what was written.
func (l *ISCSI) SerializeTo(b gopacket.SerializeBuffer, opts gopacket.SerializeOptions) error {
	h := l.Header
	if l.PDU != nil {
		l.PDU.MarshalBHS(&h)
		copy(h[4:8], l.Header[4:8])
	}
	if opts.FixLengths {
		if len(l.AHS)%4 != 0 || len(l.AHS) > pdu.MaxAHSLength || len(l.Data) > pdu.MaxDataSegmentLength {
			return fmt.Errorf("capture: cannot serialize %d bytes of AHS and %d of data", len(l.AHS), len(l.Data))
		}
		h.SetLengths(len(l.AHS), len(l.Data))
	}
	l.Header = h
	hdig := l.HasHeaderDigest && !isLogin(h.Opcode())
	ddig := l.HasDataDigest && !isLogin(h.Opcode()) && len(l.Data) > 0
	n := pdu.BHSLen + len(l.AHS) + len(l.Data) + padLen(len(l.Data))
	if hdig {
		n += pdu.DigestLen
	}
	if ddig {
		n += pdu.DigestLen
	}
	buf, err := b.PrependBytes(n)
	if err != nil {
		return err
	}
	off := copy(buf, h[:])
	off += copy(buf[off:], l.AHS)
	if hdig {
		if opts.ComputeChecksums {
			l.HeaderDigest = headerCRC(&h, l.AHS)
		}
		binary.LittleEndian.PutUint32(buf[off:], l.HeaderDigest)
		off += pdu.DigestLen
	}
	if len(l.Data) > 0 {
		off += copy(buf[off:], l.Data)
		p := padLen(len(l.Data))
		clear(buf[off : off+p])
		off += p
		if ddig {
			if opts.ComputeChecksums {
				l.DataDigest = dataCRC(l.Data)
			}
			binary.LittleEndian.PutUint32(buf[off:], l.DataDigest)
		}
	}
	return nil
}

// headerCRC is the header digest of h followed by ahs.
func headerCRC(h *pdu.BHS, ahs []byte) uint32 {
	return pdu.UpdateCRC32C(pdu.CRC32C(h[:]), ahs)
}

var zeros [4]byte

// dataCRC is the data digest of data and its padding.
func dataCRC(data []byte) uint32 {
	return pdu.UpdateCRC32C(pdu.CRC32C(data), zeros[:padLen(len(data))])
}

// LayerDecoder is a gopacket.Decoder of iSCSI PDUs with the digests a
// connection negotiated, e.g. for gopacket.NewPacket(tcpPayload,
// LayerDecoder{HeaderDigest: true}, opts). Its zero value, which
// LayerTypeISCSI uses, expects no digests.
type LayerDecoder struct {
	HeaderDigest, DataDigest bool
}

// Decode decodes the PDUs in data, one ISCSI layer each.
func (d LayerDecoder) Decode(data []byte, p gopacket.PacketBuilder) error {
	l := &ISCSI{HasHeaderDigest: d.HeaderDigest, HasDataDigest: d.DataDigest}
	if err := l.DecodeFromBytes(data, p); err != nil {
		return err
	}
	p.AddLayer(l)
	p.SetApplicationLayer(l)
	if l.NextLayerType() == gopacket.LayerTypeZero {
		return nil
	}
	return p.NextDecoder(d)
}
