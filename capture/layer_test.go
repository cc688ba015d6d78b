package capture

import (
	"bytes"
	"errors"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/goiscsi/iscsi/pdu"
)

// packetOf serializes Ethernet, IPv4 and TCP from port 51000 to port 3260
// around the given layers.
func packetOf(t *testing.T, payload ...gopacket.SerializableLayer) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IP{192, 0, 2, 1}, DstIP: net.IP{192, 0, 2, 2}}
	tcp := &layers.TCP{SrcPort: 51000, DstPort: DefaultPort, Seq: 1, ACK: true, Window: 1000}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	ls := append([]gopacket.SerializableLayer{eth, ip, tcp}, payload...)
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestLayerInPacket decodes two PDUs of one segment as two ISCSI layers of
// a packet, from port 3260's registration.
func TestLayerInPacket(t *testing.T) {
	ms := initiatorMsgs()
	a := &ISCSI{PDU: ms[3].p, AHS: ms[3].ahs, Data: ms[3].data}
	b := &ISCSI{PDU: ms[5].p, Data: ms[5].data}
	data := packetOf(t, a, b)
	wire, want := encode(t, []msg{ms[3], ms[5]}, false, false)
	if !bytes.HasSuffix(data, wire) {
		t.Fatal("SerializeTo wrote other bytes than pdu.Writer")
	}

	p := gopacket.NewPacket(data, layers.LinkTypeEthernet, gopacket.DecodeOptions{DecodeStreamsAsDatagrams: true})
	if el := p.ErrorLayer(); el != nil {
		t.Fatal(el.Error())
	}
	var got []Record
	for _, l := range p.Layers() {
		if l, ok := l.(*ISCSI); ok {
			got = append(got, Record{Header: l.Header, PDU: l.PDU, AHS: l.AHS, Data: l.Data})
		}
	}
	if d := diff(got, want); d != "" {
		t.Fatal(d)
	}
	app := p.ApplicationLayer()
	if app == nil || app.LayerType() != LayerTypeISCSI || !bytes.Equal(app.Payload(), ms[3].data) {
		t.Fatalf("application layer %v", app)
	}
	first := p.Layer(LayerTypeISCSI).(*ISCSI)
	if n := len(wire) - len(first.LayerContents()); !bytes.Equal(first.LayerPayload(), wire[len(first.LayerContents()):]) || n != pduLen(ms[5], false, false) {
		t.Fatal("LayerPayload is not the PDU that follows")
	}

	// Without DecodeStreamsAsDatagrams gopacket leaves TCP payload alone.
	if p := gopacket.NewPacket(data, layers.LinkTypeEthernet, gopacket.Default); p.Layer(LayerTypeISCSI) != nil {
		t.Fatal("decoded iSCSI without DecodeStreamsAsDatagrams")
	}
}

// TestLayerTruncated cuts a PDU short: the packet is marked truncated and
// carries a decode failure.
func TestLayerTruncated(t *testing.T) {
	ms := targetMsgs()
	data := packetOf(t, &ISCSI{PDU: ms[2].p, Data: ms[2].data})
	cut := data[:len(data)-100]
	// Keep the IP length consistent with what is left, as a segment that
	// only carries part of a PDU would be.
	p := gopacket.NewPacket(cut, layers.LinkTypeEthernet, gopacket.DecodeOptions{DecodeStreamsAsDatagrams: true})
	if !p.Metadata().Truncated {
		t.Fatal("packet not marked truncated")
	}
	if p.ErrorLayer() == nil || p.Layer(LayerTypeISCSI) != nil {
		t.Fatal("no decode failure for a truncated PDU")
	}
}

// TestLayerPrefixes decodes every PDU with every digest setting, and every
// strict prefix of it fails as truncated.
func TestLayerPrefixes(t *testing.T) {
	for _, dc := range digestCases {
		for _, ms := range [][]msg{initiatorMsgs(), targetMsgs()} {
			for _, m := range ms {
				wire, want := encode(t, []msg{m}, dc.hd, dc.dd)
				l := &ISCSI{HasHeaderDigest: dc.hd, HasDataDigest: dc.dd}
				if err := l.DecodeFromBytes(wire, gopacket.NilDecodeFeedback); err != nil {
					t.Fatalf("%s: %s: %v", dc.name, m.p.Opcode(), err)
				}
				if d := diff([]Record{{Header: l.Header, PDU: l.PDU, AHS: l.AHS, Data: l.Data}}, want); d != "" {
					t.Fatalf("%s: %s", dc.name, d)
				}
				if err := l.VerifyDigests(); err != nil {
					t.Fatalf("%s: %s: %v", dc.name, m.p.Opcode(), err)
				}
				if len(l.LayerContents()) != len(wire) || len(l.LayerPayload()) != 0 || l.NextLayerType() != gopacket.LayerTypeZero {
					t.Fatalf("%s: %s: contents %d bytes of %d", dc.name, m.p.Opcode(), len(l.LayerContents()), len(wire))
				}
				for n := range len(wire) {
					var fb truncFeedback
					if err := l.DecodeFromBytes(wire[:n], &fb); err == nil || !fb.truncated || !errors.Is(err, errTruncated) {
						t.Fatalf("%s: %s: prefix of %d bytes: err %v, truncated %v", dc.name, m.p.Opcode(), n, err, fb.truncated)
					}
				}
				// Serializing the decoded layer gives the same bytes.
				if err := l.DecodeFromBytes(wire, gopacket.NilDecodeFeedback); err != nil {
					t.Fatal(err)
				}
				buf := gopacket.NewSerializeBuffer()
				if err := l.SerializeTo(buf, gopacket.SerializeOptions{}); err != nil || !bytes.Equal(buf.Bytes(), wire) {
					t.Fatalf("%s: %s: SerializeTo: %v\n got %x\nwant %x", dc.name, m.p.Opcode(), err, buf.Bytes(), wire)
				}
			}
		}
	}
}

type truncFeedback struct{ truncated bool }

func (f *truncFeedback) SetTruncated() { f.truncated = true }

// TestLayerDigests decodes with LayerDecoder and finds a corrupted digest.
func TestLayerDigests(t *testing.T) {
	ms := targetMsgs()
	wire, _ := encode(t, ms[:3], true, true)
	p := gopacket.NewPacket(wire, LayerDecoder{HeaderDigest: true, DataDigest: true}, gopacket.Default)
	ls := p.Layers()
	if p.ErrorLayer() != nil || len(ls) != 3 {
		t.Fatalf("%d layers, error %v", len(ls), p.ErrorLayer())
	}
	for _, l := range ls {
		if err := l.(*ISCSI).VerifyDigests(); err != nil {
			t.Fatal(err)
		}
	}
	last := ls[2].(*ISCSI)
	last.Data[0] ^= 1
	var de *pdu.DigestError
	if err := last.VerifyDigests(); !errors.As(err, &de) || !de.Data {
		t.Fatalf("corrupted data: %v", err)
	}
	last.Header[20] ^= 1
	if err := last.VerifyDigests(); !errors.As(err, &de) || de.Data {
		t.Fatalf("corrupted header: %v", err)
	}
}

// TestLayerNotISCSI refuses bytes that cannot start a PDU.
func TestLayerNotISCSI(t *testing.T) {
	b := make([]byte, 48)
	b[0] = 0x1f // undefined opcode
	if err := new(ISCSI).DecodeFromBytes(b, gopacket.NilDecodeFeedback); err == nil || errors.Is(err, errTruncated) {
		t.Fatalf("undefined opcode: %v", err)
	}
	b[0] = byte(pdu.OpR2T)
	b[7] = 4 // R2T with a data segment
	if err := new(ISCSI).DecodeFromBytes(b, gopacket.NilDecodeFeedback); err == nil || errors.Is(err, errTruncated) {
		t.Fatalf("R2T with data: %v", err)
	}
}

// TestLayerSerializeDigests computes digests as pdu.Writer does.
func TestLayerSerializeDigests(t *testing.T) {
	for _, m := range append(initiatorMsgs(), targetMsgs()...) {
		wire, _ := encode(t, []msg{m}, true, true)
		l := &ISCSI{HasHeaderDigest: true, HasDataDigest: true, PDU: m.p, AHS: m.ahs, Data: m.data}
		buf := gopacket.NewSerializeBuffer()
		err := l.SerializeTo(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true})
		if err != nil || !bytes.Equal(buf.Bytes(), wire) {
			t.Fatalf("%s: %v\n got %x\nwant %x", m.p.Opcode(), err, buf.Bytes(), wire)
		}
	}
}
