package capture

import (
	"net/netip"
	"slices"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Decoder turns the packets of a capture into the PDUs of its iSCSI
// connections. It reassembles each direction of each TCP connection on an
// iSCSI port by sequence number: segments split anywhere, several PDUs per
// segment, retransmitted and duplicated segments, segments out of order, and
// captures that start mid-connection or miss segments. Records come out in
// the order the packets complete them. A Decoder is not safe for concurrent
// use.
type Decoder struct {
	opts  Options
	ports map[uint16]bool
	conns map[connKey]*tcpConn
	// order holds the connections in the order they were first seen, so
	// that Flush is deterministic.
	order []*tcpConn
	frame int
	stats Stats
	// closed holds the counts of the streams of finished connections.
	closed Stats
}

// connKey names a connection by its initiator's and its target's address.
type connKey struct{ ini, tgt netip.AddrPort }

type tcpConn struct {
	key  connKey
	dirs [2]half // 0: from the initiator, 1: from the target
}

// half is one direction of a connection: the reassembler's state and the
// Stream its bytes go to.
type half struct {
	stream  *Stream
	started bool
	syn     bool // started by a SYN, whose sequence number is isn
	isn     uint32
	done    bool   // FIN or RST delivered: later segments are ignored
	next    uint32 // sequence number of the next byte the stream expects
	pending []segment
	nbytes  int // bytes in pending
	frame   int // frame of the last packet that fed the stream
}

// segment is one segment that arrived ahead of bytes still missing.
type segment struct {
	seq   uint32
	data  []byte
	lost  int // bytes after data that the capture did not keep
	fin   bool
	t     time.Time
	frame int
}

// NewDecoder returns a Decoder with the given options.
func NewDecoder(opts Options) *Decoder {
	opts = opts.withDefaults()
	d := &Decoder{opts: opts, ports: make(map[uint16]bool), conns: make(map[connKey]*tcpConn)}
	for _, p := range opts.Ports {
		d.ports[p] = true
	}
	return d
}

// Packet takes the next packet of the capture and appends the PDUs it
// completes to rs. Packets other than TCP over IPv4 or IPv6 to or from an
// iSCSI port only count as frames.
func (d *Decoder) Packet(p gopacket.Packet, rs []Record) []Record {
	tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if tcp == nil {
		d.skipFrame()
		return rs
	}
	var src, dst netip.Addr
	wire := -1
	switch ip := p.NetworkLayer().(type) {
	case *layers.IPv4:
		src, _ = netip.AddrFromSlice(ip.SrcIP)
		dst, _ = netip.AddrFromSlice(ip.DstIP)
		wire = int(ip.Length) - int(ip.IHL)*4
	case *layers.IPv6:
		src, _ = netip.AddrFromSlice(ip.SrcIP)
		dst, _ = netip.AddrFromSlice(ip.DstIP)
		// Length 0 is a jumbogram or a segmentation offload; extension
		// headers would count in Length too.
		if ip.Length != 0 && ip.NextHeader == layers.IPProtocolTCP {
			wire = int(ip.Length)
		}
	default:
		d.skipFrame()
		return rs
	}
	return d.segment(p.Metadata().Timestamp, src, dst, tcp, wire, rs)
}

// Segment takes the next packet of the capture, already decoded into its
// addresses and TCP layer, and appends the PDUs it completes to rs.
func (d *Decoder) Segment(t time.Time, src, dst netip.Addr, tcp *layers.TCP, rs []Record) []Record {
	return d.segment(t, src, dst, tcp, -1, rs)
}

// skipFrame counts a packet that carries nothing for the decoder.
func (d *Decoder) skipFrame() {
	d.frame++
	d.stats.Packets++
}

// segment handles one TCP segment. wire is the length of the IP payload
// (TCP header and data) as the IP header gives it, or -1 when unknown: data
// beyond what was captured is lost.
func (d *Decoder) segment(t time.Time, src, dst netip.Addr, tcp *layers.TCP, wire int, rs []Record) []Record {
	d.skipFrame()
	from := netip.AddrPortFrom(src.Unmap(), uint16(tcp.SrcPort))
	to := netip.AddrPortFrom(dst.Unmap(), uint16(tcp.DstPort))
	key, dir, ok := d.direction(from, to, tcp)
	if !ok {
		return rs
	}
	d.stats.Segments++
	lost := 0
	if wire >= 0 {
		lost = max(0, wire-len(tcp.Contents)-len(tcp.Payload))
	}

	c := d.conns[key]
	if c != nil && tcp.SYN {
		// A SYN other than a retransmission of the one that opened this
		// direction opens a new connection on the same addresses.
		if h := &c.dirs[dir]; h.started && (h.done || !h.syn || h.isn != tcp.Seq) {
			rs = d.finish(c, rs)
			c = nil
		}
	}
	if c == nil {
		c = &tcpConn{key: key}
		c.dirs[0].stream = NewStream(key.ini, key.tgt, true, d.opts)
		c.dirs[1].stream = NewStream(key.tgt, key.ini, false, d.opts)
		d.conns[key] = c
		d.order = append(d.order, c)
		d.stats.Connections++
	}
	h := &c.dirs[dir]
	if h.done {
		return rs
	}
	seq := tcp.Seq
	if !h.started {
		h.started = true
		h.next = seq
		if tcp.SYN {
			h.syn, h.isn = true, seq
			h.next++
		} else {
			h.frame = d.frame
			rs = d.tag(h.stream.Gap(rs), len(rs), h.frame)
		}
	}
	if tcp.SYN {
		seq++
	}
	rs = d.add(h, segment{seq: seq, data: tcp.Payload, lost: lost, fin: tcp.FIN, t: t, frame: d.frame}, rs)
	if tcp.RST {
		rs = d.finish(c, rs)
	}
	return rs
}

// direction names the connection of a segment from one address to another,
// and says which way it goes: 0 from the initiator, 1 from the target.
func (d *Decoder) direction(from, to netip.AddrPort, tcp *layers.TCP) (connKey, int, bool) {
	fwd, rev := connKey{ini: from, tgt: to}, connKey{ini: to, tgt: from}
	toTarget, fromTarget := d.ports[to.Port()], d.ports[from.Port()]
	switch {
	case toTarget && fromTarget:
		// Both ends on iSCSI ports: the connection's SYN says who is who,
		// else the receiver of the first segment seen is the target.
		if _, ok := d.conns[rev]; ok || tcp.SYN && tcp.ACK {
			return rev, 1, true
		}
		return fwd, 0, true
	case toTarget:
		return fwd, 0, true
	case fromTarget:
		return rev, 1, true
	}
	return connKey{}, 0, false
}

// add delivers s to h's stream, or keeps it until the bytes before it arrive.
func (d *Decoder) add(h *half, s segment, rs []Record) []Record {
	if behind := int32(h.next - s.seq); behind > 0 {
		// Bytes the stream already has: a retransmission, or a keep-alive.
		d.stats.Retransmits++
		if int(behind) >= len(s.data)+s.lost {
			if s.fin && int(behind) == len(s.data)+s.lost {
				return d.deliver(h, segment{seq: h.next, fin: true, t: s.t, frame: s.frame}, rs)
			}
			return rs
		}
		if int(behind) >= len(s.data) {
			s.lost -= int(behind) - len(s.data)
			s.data = nil
		} else {
			s.data = s.data[behind:]
		}
		s.seq = h.next
	}
	if len(s.data) == 0 && s.lost == 0 && !s.fin {
		return rs
	}
	if s.seq != h.next {
		d.stats.OutOfOrder++
		s.data = slices.Clone(s.data)
		i, _ := slices.BinarySearchFunc(h.pending, s.seq, func(p segment, seq uint32) int {
			return int(int32(p.seq - seq))
		})
		h.pending = slices.Insert(h.pending, i, s)
		h.nbytes += len(s.data)
		for h.nbytes > d.opts.MaxPending && !h.done {
			rs = d.skipGap(h, rs)
		}
		return rs
	}
	return d.deliver(h, s, rs)
}

// deliver feeds s, which starts at h.next, to the stream, then every pending
// segment that now follows on.
func (d *Decoder) deliver(h *half, s segment, rs []Record) []Record {
	for {
		n := len(rs)
		h.frame = s.frame
		if len(s.data) > 0 {
			rs = h.stream.Feed(s.t, s.data, rs)
			h.next += uint32(len(s.data))
		}
		if s.lost > 0 {
			// The capture kept only the start of the segment (a snap length).
			d.stats.Gaps++
			rs = h.stream.Gap(rs)
			h.next += uint32(s.lost)
		}
		if s.fin {
			rs = h.stream.Close(rs)
			h.done = true
			h.pending, h.nbytes = nil, 0
		}
		rs = d.tag(rs, n, s.frame)
		if h.done || len(h.pending) == 0 {
			return rs
		}
		// Take the first pending segment that reaches h.next, trimming
		// what the stream already has.
		p := h.pending[0]
		if int32(p.seq-h.next) > 0 {
			return rs
		}
		h.pending = h.pending[1:]
		h.nbytes -= len(p.data)
		behind := int(h.next - p.seq)
		switch {
		case behind < len(p.data):
			p.data = p.data[behind:]
		case behind < len(p.data)+p.lost:
			p.lost -= behind - len(p.data)
			p.data = nil
		default:
			if behind > len(p.data)+p.lost {
				p.fin = false // a FIN inside bytes already delivered is stale
			}
			p.data, p.lost = nil, 0
		}
		p.seq = h.next
		s = p
	}
}

// skipGap gives up the bytes missing before h's first pending segment.
func (d *Decoder) skipGap(h *half, rs []Record) []Record {
	if len(h.pending) == 0 {
		return rs
	}
	d.stats.Gaps++
	n := len(rs)
	rs = d.tag(h.stream.Gap(rs), n, h.frame)
	p := h.pending[0]
	h.pending = h.pending[1:]
	h.nbytes -= len(p.data)
	h.next = p.seq
	return d.deliver(h, p, rs)
}

// finish ends both directions of c: pending segments are delivered across
// their gaps and the streams closed.
func (d *Decoder) finish(c *tcpConn, rs []Record) []Record {
	for i := range c.dirs {
		h := &c.dirs[i]
		for !h.done && len(h.pending) > 0 {
			rs = d.skipGap(h, rs)
		}
		if !h.done {
			n := len(rs)
			rs = d.tag(h.stream.Close(rs), n, h.frame)
			h.done = true
		}
	}
	if d.conns[c.key] == c {
		delete(d.conns, c.key)
	}
	if i := slices.Index(d.order, c); i >= 0 {
		d.order = slices.Delete(d.order, i, i+1)
		for i := range c.dirs {
			d.closed.add(c.dirs[i].stream.Stats())
		}
	}
	return rs
}

// tag sets the frame of the records from rs[n:].
func (d *Decoder) tag(rs []Record, n, frame int) []Record {
	for i := n; i < len(rs); i++ {
		rs[i].Frame = frame
	}
	return rs
}

// Flush ends every connection, as at the end of a capture: segments kept
// ahead of missing bytes are decoded after all, and PDUs still incomplete are
// counted as Truncated. It appends the PDUs this completes to rs.
func (d *Decoder) Flush(rs []Record) []Record {
	for len(d.order) > 0 {
		rs = d.finish(d.order[0], rs)
	}
	return rs
}

// Stats returns what the Decoder has counted so far, its streams' counts
// included.
func (d *Decoder) Stats() Stats {
	s := d.stats
	for _, c := range d.order {
		for i := range c.dirs {
			s.add(c.dirs[i].stream.Stats())
		}
	}
	s.add(d.closed)
	return s
}
