package capture

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// DefaultMSS is the largest TCP payload of a segment a Tap records by
// default: what fits a 65,535-byte IPv4 packet with a 32-byte TCP header.
const DefaultMSS = 65483

// DefaultInitiatorPort is the port a Tap records for the initiator's end of
// a connection whose addresses are not TCP addresses.
const DefaultInitiatorPort = 49152

// TapOptions configure a Tap.
type TapOptions struct {
	// MSS is the largest TCP payload of one recorded segment; 0 means
	// DefaultMSS, and more than DefaultMSS is taken as DefaultMSS.
	MSS int
	// LocalIsTarget says that the wrapped conn is the target's end, as in a
	// test target; by default it is the initiator's. The initiator's end
	// sends the recorded SYN.
	LocalIsTarget bool
	// TargetPort and InitiatorPort are the ports recorded, with address
	// 127.0.0.1, when the conn's addresses are not TCP addresses (net.Pipe);
	// 0 means DefaultPort and DefaultInitiatorPort.
	TargetPort, InitiatorPort uint16
	// Now is the clock for the packets' timestamps; nil means time.Now.
	Now func() time.Time
}

// TapConn is a net.Conn that passes everything through to the conn it
// wraps and records it into a pcap as TCP packets, from a synthetic
// handshake to a FIN at Close. Read and Write may be called from different
// goroutines. A failure to record does not affect the connection: Err
// reports it.
type TapConn struct {
	net.Conn
	opts   TapOptions
	mss    int
	closer io.Closer // the pcap file of NewFileTap

	mu         sync.Mutex
	bw         *bufio.Writer
	pw         *pcapgo.Writer
	sbuf       gopacket.SerializeBuffer
	ends       [2]tapEnd // 0: local, 1: remote
	ipID       uint16
	err        error
	remoteFIN  bool
	closed     bool
	closeErr   error
	closeFiles sync.Once
}

// tapEnd is one end of the recorded connection.
type tapEnd struct {
	mac  net.HardwareAddr
	addr netip.AddrPort
	seq  uint32 // sequence number of the next byte it sends
}

// NewTap wraps conn so that its traffic is recorded into w as a pcap with
// Ethernet link type. It writes the file header and a TCP handshake at once.
func NewTap(conn net.Conn, w io.Writer, opts TapOptions) (*TapConn, error) {
	if opts.MSS <= 0 || opts.MSS > DefaultMSS {
		opts.MSS = DefaultMSS
	}
	if opts.TargetPort == 0 {
		opts.TargetPort = DefaultPort
	}
	if opts.InitiatorPort == 0 {
		opts.InitiatorPort = DefaultInitiatorPort
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	c := &TapConn{Conn: conn, opts: opts, mss: opts.MSS, bw: bufio.NewWriterSize(w, 64<<10),
		sbuf: gopacket.NewSerializeBuffer()}
	c.pw = pcapgo.NewWriter(c.bw)
	if err := c.pw.WriteFileHeader(262144, layers.LinkTypeEthernet); err != nil {
		return nil, fmt.Errorf("capture: writing the pcap header: %w", err)
	}
	local, lok := tcpAddr(conn.LocalAddr())
	remote, rok := tcpAddr(conn.RemoteAddr())
	if !lok || !rok || local.Addr().Is4() != remote.Addr().Is4() {
		lo := netip.AddrFrom4([4]byte{127, 0, 0, 1})
		local, remote = netip.AddrPortFrom(lo, opts.InitiatorPort), netip.AddrPortFrom(lo, opts.TargetPort)
		if opts.LocalIsTarget {
			local, remote = remote, local
		}
	}
	c.ends[0] = tapEnd{mac: net.HardwareAddr{0x02, 0, 0, 0, 0, 1}, addr: local, seq: rand.Uint32()}
	c.ends[1] = tapEnd{mac: net.HardwareAddr{0x02, 0, 0, 0, 0, 2}, addr: remote, seq: rand.Uint32()}

	// The initiator opens the connection.
	ini, tgt := 0, 1
	if opts.LocalIsTarget {
		ini, tgt = 1, 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.packet(ini, tcpFlags{syn: true}, nil)
	c.packet(tgt, tcpFlags{syn: true, ack: true}, nil)
	c.packet(ini, tcpFlags{ack: true}, nil)
	if c.err != nil {
		return nil, c.err
	}
	return c, nil
}

// NewFileTap is NewTap recording into a new file at path, which Close
// closes.
func NewFileTap(conn net.Conn, path string, opts TapOptions) (*TapConn, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	c, err := NewTap(conn, f, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	c.closer = f
	return c, nil
}

// tcpAddr returns a's address when it is a TCP address.
func tcpAddr(a net.Addr) (netip.AddrPort, bool) {
	ta, ok := a.(*net.TCPAddr)
	if !ok || ta == nil {
		return netip.AddrPort{}, false
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port()), ap.Addr().IsValid()
}

// Read reads from the conn and records what it read. An io.EOF is recorded
// as the remote end's FIN.
func (c *TapConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 || err == io.EOF {
		c.mu.Lock()
		if n > 0 && !c.remoteFIN && !c.closed {
			c.data(1, b[:n])
		}
		if err == io.EOF && !c.remoteFIN && !c.closed {
			c.remoteFIN = true
			c.packet(1, tcpFlags{fin: true, ack: true}, nil)
		}
		c.mu.Unlock()
	}
	return n, err
}

// Write records b, then writes it to the conn. Recording first keeps a
// request ahead of its answer in the pcap; the bytes of a Write that fails
// part way are recorded all the same.
func (c *TapConn) Write(b []byte) (int, error) {
	if len(b) > 0 {
		c.mu.Lock()
		if !c.closed {
			c.data(0, b)
		}
		c.mu.Unlock()
	}
	return c.Conn.Write(b)
}

// Close closes the conn, records the local end's FIN, and closes the pcap
// file of NewFileTap. It returns the conn's error, else the file's.
func (c *TapConn) Close() error {
	err := c.Conn.Close()
	c.closeFiles.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.packet(0, tcpFlags{fin: true, ack: true}, nil)
		if c.remoteFIN {
			c.packet(1, tcpFlags{ack: true}, nil)
		}
		if c.closer != nil {
			if cerr := c.closer.Close(); cerr != nil && c.err == nil {
				c.err = cerr
				c.closeErr = cerr
			}
		}
		c.mu.Unlock()
	})
	if err == nil {
		err = c.closeErr
	}
	return err
}

// Err returns the first error met writing the pcap, or nil. After one, the
// Tap records nothing more.
func (c *TapConn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

type tcpFlags struct{ syn, ack, fin, psh bool }

// data records b as sent by end from, in segments of at most the MSS.
func (c *TapConn) data(from int, b []byte) {
	for len(b) > 0 {
		n := min(len(b), c.mss)
		c.packet(from, tcpFlags{ack: true, psh: n == len(b)}, b[:n])
		b = b[n:]
	}
}

// packet records one segment from end from to the other end, with
// sequence and acknowledgment numbers following on from those before.
// c.mu must be held.
func (c *TapConn) packet(from int, f tcpFlags, payload []byte) {
	if c.err != nil {
		return
	}
	src, dst := &c.ends[from], &c.ends[1-from]
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(src.addr.Port()),
		DstPort: layers.TCPPort(dst.addr.Port()),
		Seq:     src.seq,
		SYN:     f.syn, FIN: f.fin, PSH: f.psh,
		Window: 65535,
	}
	if f.ack {
		tcp.ACK = true
		tcp.Ack = dst.seq
	}
	if f.syn {
		// Window scaling lets a peer have more than 64 KiB in flight, as a
		// real connection would, so analyzers do not report a full window.
		tcp.Options = []layers.TCPOption{
			{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{byte(c.mss >> 8), byte(c.mss)}},
			{OptionType: layers.TCPOptionKindNop},
			{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
		}
	}
	eth := &layers.Ethernet{SrcMAC: src.mac, DstMAC: dst.mac}
	var ip gopacket.SerializableLayer
	if src.addr.Addr().Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		c.ipID++
		ip4 := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Id: c.ipID, Flags: layers.IPv4DontFragment,
			Protocol: layers.IPProtocolTCP, SrcIP: src.addr.Addr().AsSlice(), DstIP: dst.addr.Addr().AsSlice()}
		tcp.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: src.addr.Addr().AsSlice(), DstIP: dst.addr.Addr().AsSlice()}
		tcp.SetNetworkLayerForChecksum(ip6)
		ip = ip6
	}
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(c.sbuf, opts, eth, ip, tcp, gopacket.Payload(payload)); err != nil {
		c.err = fmt.Errorf("capture: building a packet: %w", err)
		return
	}
	src.seq += uint32(len(payload))
	if f.syn || f.fin {
		src.seq++
	}
	b := c.sbuf.Bytes()
	ci := gopacket.CaptureInfo{Timestamp: c.opts.Now(), CaptureLength: len(b), Length: len(b)}
	if err := c.pw.WritePacket(ci, b); err != nil {
		c.err = fmt.Errorf("capture: writing the pcap: %w", err)
		return
	}
	if err := c.bw.Flush(); err != nil {
		c.err = fmt.Errorf("capture: writing the pcap: %w", err)
	}
}
