package capture

import (
	"bufio"
	"errors"
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

// Recorder writes the traffic of any number of connections into one pcap
// with Ethernet link type, each connection through its own TapConn. It is
// safe for concurrent use; packets are written whole, one at a time.
type Recorder struct {
	mu     sync.Mutex
	bw     *bufio.Writer
	pw     *pcapgo.Writer
	sbuf   gopacket.SerializeBuffer
	closer io.Closer // the file of NewFileRecorder
	ipID   uint16
	taps   int
	err    error
	closed bool
}

// NewRecorder returns a Recorder writing into w. It writes the pcap file
// header at once.
func NewRecorder(w io.Writer) (*Recorder, error) {
	r := &Recorder{bw: bufio.NewWriterSize(w, 64<<10), sbuf: gopacket.NewSerializeBuffer()}
	r.pw = pcapgo.NewWriter(r.bw)
	err := r.pw.WriteFileHeader(262144, layers.LinkTypeEthernet)
	if err == nil {
		err = r.bw.Flush()
	}
	if err != nil {
		return nil, fmt.Errorf("capture: writing the pcap header: %w", err)
	}
	return r, nil
}

// NewFileRecorder returns a Recorder writing into a new file at path, which
// Close closes.
func NewFileRecorder(path string) (*Recorder, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	r, err := NewRecorder(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	r.closer = f
	return r, nil
}

// Err returns the first error met writing the pcap, or nil. After one, the
// Recorder writes nothing more.
func (r *Recorder) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Close flushes the pcap and closes the file of NewFileRecorder; it returns
// the first error met writing. Connections still open are recorded no
// further, so close them first for their FINs to be in the pcap.
func (r *Recorder) Close() error {
	r.close()
	return r.Err()
}

// close flushes the pcap and closes the file, once, and returns the error
// of that alone.
func (r *Recorder) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	var err error
	if r.err == nil {
		err = r.bw.Flush()
	}
	if r.closer != nil {
		if cerr := r.closer.Close(); err == nil {
			err = cerr
		}
	}
	if r.err == nil {
		r.err = err
	}
	return err
}

// Tap wraps conn so that its traffic is recorded, and records a TCP
// handshake at once. Connections whose addresses are not TCP addresses get
// InitiatorPort DefaultInitiatorPort+n for the Recorder's nth one unless
// opts say otherwise, so that they stay apart in the pcap. It fails only
// when the Recorder has failed or is closed.
func (r *Recorder) Tap(conn net.Conn, opts TapOptions) (*TapConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return nil, r.err
	}
	if r.closed {
		return nil, errors.New("capture: Recorder closed")
	}
	if opts.MSS <= 0 || opts.MSS > DefaultMSS {
		opts.MSS = DefaultMSS
	}
	if opts.TargetPort == 0 {
		opts.TargetPort = DefaultPort
	}
	if opts.InitiatorPort == 0 {
		opts.InitiatorPort = DefaultInitiatorPort + uint16(r.taps%16384)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	r.taps++
	c := &TapConn{Conn: conn, rec: r, opts: opts}
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
	c.packet(ini, tcpFlags{syn: true}, nil)
	c.packet(tgt, tcpFlags{syn: true, ack: true}, nil)
	c.packet(ini, tcpFlags{ack: true}, nil)
	if r.err != nil {
		return nil, r.err
	}
	return c, nil
}

// TapConn is a net.Conn that passes everything through to the conn it
// wraps and records it into a pcap as TCP packets, from a synthetic
// handshake to a FIN at Close. Read and Write may be called from different
// goroutines. A failure to record does not affect the connection: Err
// reports it.
type TapConn struct {
	net.Conn
	rec  *Recorder
	own  bool // the Recorder is this TapConn's alone: Close closes it
	opts TapOptions

	// Guarded by rec.mu.
	ends      [2]tapEnd // 0: local, 1: remote
	remoteFIN bool
	closed    bool

	closeOnce sync.Once
	closeErr  error
}

// tapEnd is one end of the recorded connection.
type tapEnd struct {
	mac  net.HardwareAddr
	addr netip.AddrPort
	seq  uint32 // sequence number of the next byte it sends
}

// NewTap wraps conn so that its traffic is recorded into w as a pcap with
// Ethernet link type, a Recorder of its own. It writes the file header and a
// TCP handshake at once.
func NewTap(conn net.Conn, w io.Writer, opts TapOptions) (*TapConn, error) {
	r, err := NewRecorder(w)
	if err != nil {
		return nil, err
	}
	return r.ownTap(conn, opts)
}

// NewFileTap is NewTap recording into a new file at path, which Close
// closes.
func NewFileTap(conn net.Conn, path string, opts TapOptions) (*TapConn, error) {
	r, err := NewFileRecorder(path)
	if err != nil {
		return nil, err
	}
	return r.ownTap(conn, opts)
}

// ownTap is Tap for a Recorder that the TapConn closes.
func (r *Recorder) ownTap(conn net.Conn, opts TapOptions) (*TapConn, error) {
	c, err := r.Tap(conn, opts)
	if err != nil {
		r.close()
		return nil, err
	}
	c.own = true
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
		c.rec.mu.Lock()
		if n > 0 && !c.remoteFIN && !c.closed {
			c.data(1, b[:n])
		}
		if err == io.EOF && !c.remoteFIN && !c.closed {
			c.remoteFIN = true
			c.packet(1, tcpFlags{fin: true, ack: true}, nil)
		}
		c.rec.mu.Unlock()
	}
	return n, err
}

// Write records b, then writes it to the conn. Recording first keeps a
// request ahead of its answer in the pcap; the bytes of a Write that fails
// part way are recorded all the same.
func (c *TapConn) Write(b []byte) (int, error) {
	if len(b) > 0 {
		c.rec.mu.Lock()
		if !c.closed {
			c.data(0, b)
		}
		c.rec.mu.Unlock()
	}
	return c.Conn.Write(b)
}

// Close closes the conn and records the local end's FIN; for NewTap and
// NewFileTap it also closes their Recorder, and its file. It returns the
// conn's error, else the error of closing the file: errors met writing the
// pcap before are Err's.
func (c *TapConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() {
		c.rec.mu.Lock()
		c.closed = true
		c.packet(0, tcpFlags{fin: true, ack: true}, nil)
		if c.remoteFIN {
			c.packet(1, tcpFlags{ack: true}, nil)
		}
		c.rec.mu.Unlock()
		if c.own {
			c.closeErr = c.rec.close()
		}
	})
	if err == nil {
		err = c.closeErr
	}
	return err
}

// Err returns the first error its Recorder met writing the pcap, or nil.
// After one, nothing more is recorded.
func (c *TapConn) Err() error { return c.rec.Err() }

type tcpFlags struct{ syn, ack, fin, psh bool }

// data records b as sent by end from, in segments of at most the MSS.
func (c *TapConn) data(from int, b []byte) {
	for len(b) > 0 {
		n := min(len(b), c.opts.MSS)
		c.packet(from, tcpFlags{ack: true, psh: n == len(b)}, b[:n])
		b = b[n:]
	}
}

// packet records one segment from end from to the other end, with
// sequence and acknowledgment numbers following on from those before.
// c.rec.mu must be held.
func (c *TapConn) packet(from int, f tcpFlags, payload []byte) {
	r := c.rec
	if r.err != nil || r.closed {
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
		mss := c.opts.MSS
		tcp.Options = []layers.TCPOption{
			{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{byte(mss >> 8), byte(mss)}},
			{OptionType: layers.TCPOptionKindNop},
			{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
		}
	}
	eth := &layers.Ethernet{SrcMAC: src.mac, DstMAC: dst.mac}
	var ip gopacket.SerializableLayer
	if src.addr.Addr().Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		r.ipID++
		ip4 := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Id: r.ipID, Flags: layers.IPv4DontFragment,
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
	if err := gopacket.SerializeLayers(r.sbuf, opts, eth, ip, tcp, gopacket.Payload(payload)); err != nil {
		r.err = fmt.Errorf("capture: building a packet: %w", err)
		return
	}
	src.seq += uint32(len(payload))
	if f.syn || f.fin {
		src.seq++
	}
	b := r.sbuf.Bytes()
	ci := gopacket.CaptureInfo{Timestamp: c.opts.Now(), CaptureLength: len(b), Length: len(b)}
	if err := r.pw.WritePacket(ci, b); err != nil {
		r.err = fmt.Errorf("capture: writing the pcap: %w", err)
		return
	}
	if err := r.bw.Flush(); err != nil {
		r.err = fmt.Errorf("capture: writing the pcap: %w", err)
	}
}
