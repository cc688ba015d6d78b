package capture

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"os"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// ReadFile decodes the iSCSI PDUs of a pcap or pcapng file.
func ReadFile(path string, opts Options) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rs, err := Read(f, opts)
	if err != nil {
		return rs, fmt.Errorf("%s: %w", path, err)
	}
	return rs, nil
}

// Read decodes the iSCSI PDUs of a pcap or pcapng capture. On an error it
// returns the PDUs decoded before it too.
func Read(r io.Reader, opts Options) ([]Record, error) {
	return decodeAll(NewDecoder(opts), r)
}

// captureSource is a pcap or pcapng reader.
type captureSource interface {
	gopacket.PacketDataSource
	gopacket.ZeroCopyPacketDataSource
	LinkType() layers.LinkType
}

// openCapture reads the file header of a pcap or pcapng capture, telling
// them apart by their magic number.
func openCapture(r io.Reader) (captureSource, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	magic, err := br.Peek(4)
	if err != nil {
		return nil, fmt.Errorf("capture: reading the file header: %w", err)
	}
	var src captureSource
	if bytes.Equal(magic, []byte{0x0a, 0x0d, 0x0d, 0x0a}) {
		src, err = pcapgo.NewNgReader(br, pcapgo.DefaultNgReaderOptions)
	} else {
		src, err = pcapgo.NewReader(br)
	}
	if err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	return src, nil
}

// decodeAll decodes a pcap or pcapng capture with d.
func decodeAll(d *Decoder, r io.Reader) ([]Record, error) {
	src, err := openCapture(r)
	if err != nil {
		return nil, err
	}
	p := newPacketParser()
	var rs []Record
	for {
		data, ci, err := src.ZeroCopyReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			return d.Flush(rs), fmt.Errorf("capture: packet %d: %w", d.frame+1, err)
		}
		rs = p.decode(d, src.LinkType(), data, ci, rs)
	}
	return d.Flush(rs), nil
}

// ReadPackets decodes the iSCSI PDUs of the packets src yields until it
// ends.
func ReadPackets(src *gopacket.PacketSource, opts Options) ([]Record, error) {
	d := NewDecoder(opts)
	var rs []Record
	for {
		p, err := src.NextPacket()
		if err == io.EOF {
			break
		}
		if err != nil {
			return d.Flush(rs), fmt.Errorf("capture: packet %d: %w", d.frame+1, err)
		}
		rs = d.Packet(p, rs)
	}
	return d.Flush(rs), nil
}

// packetParser decodes the link, IP and TCP layers of a packet without
// allocating, for the link types captures of iSCSI come in.
type packetParser struct {
	eth     layers.Ethernet
	dot1q   layers.Dot1Q
	sll     layers.LinuxSLL
	sll2    layers.LinuxSLL2
	lo      layers.Loopback
	ip4     layers.IPv4
	ip6     layers.IPv6
	tcp     layers.TCP
	parsers map[gopacket.LayerType]*gopacket.DecodingLayerParser
	decoded []gopacket.LayerType
}

func newPacketParser() *packetParser {
	return &packetParser{parsers: make(map[gopacket.LayerType]*gopacket.DecodingLayerParser)}
}

// first returns the layer a packet of link type lt starts with.
func first(lt layers.LinkType, data []byte) gopacket.LayerType {
	switch lt {
	case layers.LinkTypeEthernet:
		return layers.LayerTypeEthernet
	case layers.LinkTypeLinuxSLL:
		return layers.LayerTypeLinuxSLL
	case layers.LinkTypeLinuxSLL2:
		return layers.LayerTypeLinuxSLL2
	case layers.LinkTypeNull, layers.LinkTypeLoop:
		return layers.LayerTypeLoopback
	case layers.LinkTypeIPv4:
		return layers.LayerTypeIPv4
	case layers.LinkTypeIPv6:
		return layers.LayerTypeIPv6
	case layers.LinkTypeRaw, 12: // 12: DLT_RAW on some BSDs
		if len(data) > 0 && data[0]>>4 == 6 {
			return layers.LayerTypeIPv6
		}
		return layers.LayerTypeIPv4
	}
	return gopacket.LayerTypeZero
}

func (p *packetParser) decode(d *Decoder, lt layers.LinkType, data []byte, ci gopacket.CaptureInfo, rs []Record) []Record {
	start := first(lt, data)
	if start == gopacket.LayerTypeZero {
		d.skipFrame()
		return rs
	}
	dlp := p.parsers[start]
	if dlp == nil {
		dlp = gopacket.NewDecodingLayerParser(start, &p.eth, &p.dot1q, &p.sll, &p.sll2, &p.lo, &p.ip4, &p.ip6, &p.tcp)
		dlp.IgnoreUnsupported = true
		p.parsers[start] = dlp
	}
	_ = dlp.DecodeLayers(data, &p.decoded)
	var src, dst netip.Addr
	wire := -1
	haveTCP := false
	for _, t := range p.decoded {
		switch t {
		case layers.LayerTypeIPv4:
			if p.ip4.Flags&layers.IPv4MoreFragments != 0 || p.ip4.FragOffset != 0 {
				d.skipFrame()
				return rs
			}
			src, _ = netip.AddrFromSlice(p.ip4.SrcIP)
			dst, _ = netip.AddrFromSlice(p.ip4.DstIP)
			wire = int(p.ip4.Length) - int(p.ip4.IHL)*4
		case layers.LayerTypeIPv6:
			src, _ = netip.AddrFromSlice(p.ip6.SrcIP)
			dst, _ = netip.AddrFromSlice(p.ip6.DstIP)
			wire = -1
			if p.ip6.Length != 0 && p.ip6.NextHeader == layers.IPProtocolTCP {
				wire = int(p.ip6.Length)
			}
		case layers.LayerTypeTCP:
			haveTCP = true
		}
	}
	// TCP is among the layers decoded only when its header was whole;
	// errors past it do not matter.
	if !haveTCP {
		d.skipFrame()
		return rs
	}
	return d.segment(ci.Timestamp, src, dst, &p.tcp, wire, rs)
}
