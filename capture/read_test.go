package capture

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// tapCapture records the test conversation through a Tap and returns the
// pcap and what was sent.
func tapCapture(t *testing.T, mss int) ([]byte, [2][]sent) {
	t.Helper()
	ini, tgt := net.Pipe()
	var pcap bytes.Buffer
	tap, err := NewTap(ini, &pcap, TapOptions{MSS: mss})
	if err != nil {
		t.Fatal(err)
	}
	want := converse(t, tap, tgt, false, false)
	return pcap.Bytes(), want
}

// packets returns the packets of a pcap.
func packets(t *testing.T, b []byte) ([]gopacket.CaptureInfo, [][]byte) {
	t.Helper()
	r, err := pcapgo.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	var cis []gopacket.CaptureInfo
	var ds [][]byte
	for {
		d, ci, err := r.ReadPacketData()
		if err == io.EOF {
			return cis, ds
		}
		if err != nil {
			t.Fatal(err)
		}
		cis, ds = append(cis, ci), append(ds, d)
	}
}

// rewrite writes packets as a pcap of another link type, each packet's
// Ethernet header replaced by what relink returns.
func rewrite(t *testing.T, b []byte, lt layers.LinkType, relink func(eth []byte) []byte) []byte {
	t.Helper()
	cis, ds := packets(t, b)
	var out bytes.Buffer
	w := pcapgo.NewWriter(&out)
	if err := w.WriteFileHeader(262144, lt); err != nil {
		t.Fatal(err)
	}
	for i, d := range ds {
		p := append(relink(d[:14]), d[14:]...)
		ci := cis[i]
		ci.CaptureLength, ci.Length = len(p), len(p)
		if err := w.WritePacket(ci, p); err != nil {
			t.Fatal(err)
		}
	}
	return out.Bytes()
}

// TestReadLinkTypes reads the same capture as Ethernet, raw IP, Linux
// cooked (SLL and SLL2), BSD loopback and pcapng.
func TestReadLinkTypes(t *testing.T) {
	pcap, want := tapCapture(t, 4096)
	ipv4 := func(eth []byte) []byte { return []byte{} }
	sll := func(eth []byte) []byte {
		h := make([]byte, 16)
		binary.BigEndian.PutUint16(h[2:], 772) // ARPHRD_LOOPBACK
		binary.BigEndian.PutUint16(h[4:], 6)
		binary.BigEndian.PutUint16(h[14:], 0x0800)
		return h
	}
	sll2 := func(eth []byte) []byte {
		h := make([]byte, 20)
		binary.BigEndian.PutUint16(h[0:], 0x0800)
		binary.BigEndian.PutUint32(h[4:], 1)
		binary.BigEndian.PutUint16(h[8:], 772)
		h[11] = 6
		return h
	}
	null := func(eth []byte) []byte { return []byte{2, 0, 0, 0} } // AF_INET, host order of a little-endian machine
	cases := map[string][]byte{
		"ethernet": pcap,
		"raw":      rewrite(t, pcap, layers.LinkTypeRaw, ipv4),
		"ipv4":     rewrite(t, pcap, layers.LinkTypeIPv4, ipv4),
		"sll":      rewrite(t, pcap, layers.LinkTypeLinuxSLL, sll),
		"sll2":     rewrite(t, pcap, layers.LinkTypeLinuxSLL2, sll2),
		"null":     rewrite(t, pcap, layers.LinkTypeNull, null),
	}
	// pcapng, with the same packets.
	cis, ds := packets(t, pcap)
	var ng bytes.Buffer
	nw, err := pcapgo.NewNgWriter(&ng, layers.LinkTypeEthernet)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range ds {
		cis[i].InterfaceIndex = 0
		if err := nw.WritePacket(cis[i], d); err != nil {
			t.Fatal(err)
		}
	}
	if err := nw.Flush(); err != nil {
		t.Fatal(err)
	}
	cases["pcapng"] = ng.Bytes()

	for name, b := range cases {
		rs, err := Read(bytes.NewReader(b), Options{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		checkBoth(t, rs, want)
		if t.Failed() {
			t.Fatalf("%s: records differ", name)
		}
	}
}

// TestReadPackets decodes through a gopacket.PacketSource and
// Decoder.Packet, with the ISCSI layer decoding segments as well.
func TestReadPackets(t *testing.T) {
	pcap, want := tapCapture(t, 4096)
	for _, datagrams := range []bool{false, true} {
		r, err := pcapgo.NewReader(bytes.NewReader(pcap))
		if err != nil {
			t.Fatal(err)
		}
		src := gopacket.NewPacketSource(r, r.LinkType())
		src.DecodeStreamsAsDatagrams = datagrams
		rs, err := ReadPackets(src, Options{})
		if err != nil {
			t.Fatal(err)
		}
		checkBoth(t, rs, want)
		ref, err := Read(bytes.NewReader(pcap), Options{})
		if err != nil {
			t.Fatal(err)
		}
		for i := range ref {
			if rs[i].Frame != ref[i].Frame || !rs[i].Time.Equal(ref[i].Time) {
				t.Fatalf("record %d: frame %d at %v, Read says %d at %v", i, rs[i].Frame, rs[i].Time, ref[i].Frame, ref[i].Time)
			}
		}
	}
}

// TestReadSnapLen cuts packets short as a small snap length does: the PDUs
// they carried bytes of are lost, the others are found.
func TestReadSnapLen(t *testing.T) {
	pcap, want := tapCapture(t, 4096)
	cis, ds := packets(t, pcap)
	var out bytes.Buffer
	w := pcapgo.NewWriter(&out)
	if err := w.WriteFileHeader(262144, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	cut := 0
	for i, d := range ds {
		// Cut the packets of the Data-Out's data: 4096-byte payloads.
		if len(d) == 14+20+20+4096 {
			d = d[:200]
			cut++
		}
		ci := cis[i]
		ci.CaptureLength = len(d)
		if err := w.WritePacket(ci, d); err != nil {
			t.Fatal(err)
		}
	}
	if cut == 0 {
		t.Fatal("no packet cut")
	}
	d := NewDecoder(Options{})
	rs, err := decodeAll(d, bytes.NewReader(out.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	// Only the Data-Out (initiator PDU 4) is lost.
	exp := want
	exp[0] = append(append([]sent{}, want[0][:4]...), want[0][5:]...)
	checkBoth(t, rs, exp)
	if st := d.Stats(); st.Gaps != cut || st.Truncated != 1 {
		t.Fatalf("stats %+v, want %d gaps and 1 truncated PDU", st, cut)
	}
}
