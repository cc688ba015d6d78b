package capture

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
)

// seg is one TCP segment of a test conversation.
type seg struct {
	dir      int // 0: from the initiator, 1: from the target
	seq      uint32
	syn, ack bool
	fin, rst bool
	payload  []byte
	// pdus is the number of PDUs whose last byte this segment carries.
	pdus int
}

// conv builds the segments of a conversation.
type conv struct {
	isn  [2]uint32
	next [2]uint32
	segs []seg
	// sent holds per direction the stream bytes and PDU boundaries.
	wire [2][]byte
	ends [2][]int // offset just past each PDU
	// order is the direction of each PDU in the order they were sent.
	order []int
}

func newConv(isnIni, isnTgt uint32) *conv {
	c := &conv{isn: [2]uint32{isnIni, isnTgt}, next: [2]uint32{isnIni + 1, isnTgt + 1}}
	c.segs = append(c.segs, seg{dir: 0, seq: isnIni, syn: true}, seg{dir: 1, seq: isnTgt, syn: true, ack: true}, seg{dir: 0, seq: isnIni + 1, ack: true})
	return c
}

// send sends the PDUs pdus (one direction's bytes, PDU boundaries at ends)
// in segments of random lengths up to maxSeg.
func (c *conv) send(dir int, b []byte, pduLens []int, maxSeg int, r *rand.Rand) {
	base := len(c.wire[dir])
	c.wire[dir] = append(c.wire[dir], b...)
	off := base
	for _, n := range pduLens {
		off += n
		c.ends[dir] = append(c.ends[dir], off)
		c.order = append(c.order, dir)
	}
	for _, p := range chunks(b, maxSeg, r) {
		s := seg{dir: dir, seq: c.next[dir], ack: true, payload: p}
		start := int(c.next[dir]-c.isn[dir]-1) + len(p) // stream offset past p
		for _, e := range c.ends[dir] {
			if e > start-len(p) && e <= start {
				s.pdus++
			}
		}
		c.next[dir] += uint32(len(p))
		c.segs = append(c.segs, s)
	}
}

func (c *conv) close() {
	c.segs = append(c.segs, seg{dir: 0, seq: c.next[0], ack: true, fin: true}, seg{dir: 1, seq: c.next[1], ack: true, fin: true})
}

// feed gives the segments to a Decoder, flushes it and returns the records.
func feed(d *Decoder, segs []seg) []Record {
	return d.Flush(feedOnly(d, segs))
}

// feedOnly gives the segments to a Decoder and returns the records.
func feedOnly(d *Decoder, segs []seg) []Record {
	ini, tgt := netip.MustParseAddrPort("192.0.2.1:51000"), netip.MustParseAddrPort("192.0.2.2:3260")
	var rs []Record
	t0 := time.Unix(1700000000, 0)
	for i, s := range segs {
		src, dst := ini, tgt
		if s.dir == 1 {
			src, dst = tgt, ini
		}
		tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: s.seq,
			SYN: s.syn, ACK: s.ack, FIN: s.fin, RST: s.rst}
		tcp.Payload = s.payload
		rs = d.Segment(t0.Add(time.Duration(i)*time.Millisecond), src.Addr(), dst.Addr(), tcp, rs)
	}
	return rs
}

// pduLens returns the wire length of every PDU of ms.
func pduLens(ms []msg, hd, dd bool) []int {
	lens := make([]int, len(ms))
	for i, m := range ms {
		lens[i] = pduLen(m, hd, dd)
	}
	return lens
}

// byDir splits records by direction.
func byDir(rs []Record) (ini, tgt []Record) {
	for _, r := range rs {
		if r.FromInitiator {
			ini = append(ini, r)
		} else {
			tgt = append(tgt, r)
		}
	}
	return ini, tgt
}

// interleaved builds a conversation that alternates initiator and target
// PDUs, each split into segments of up to maxSeg bytes.
func interleaved(t *testing.T, isn uint32, maxSeg int, dc digestCase, r *rand.Rand) (*conv, [2][]sent) {
	c := newConv(isn, isn^0x5a5a5a5a)
	ims, tms := initiatorMsgs(), targetMsgs()
	var want [2][]sent
	for i := range max(len(ims), len(tms)) {
		for dir, ms := range [][]msg{ims, tms} {
			if i >= len(ms) {
				continue
			}
			b, s := encode(t, ms[i:i+1], dc.hd, dc.dd)
			want[dir] = append(want[dir], s...)
			c.send(dir, b, []int{len(b)}, maxSeg, r)
		}
	}
	c.close()
	return c, want
}

func checkBoth(t *testing.T, rs []Record, want [2][]sent) {
	t.Helper()
	ini, tgt := byDir(rs)
	if d := diff(ini, want[0]); d != "" {
		t.Errorf("initiator: %s", d)
	}
	if d := diff(tgt, want[1]); d != "" {
		t.Errorf("target: %s", d)
	}
}

func TestDecoderInOrder(t *testing.T) {
	for _, dc := range digestCases {
		for _, maxSeg := range []int{1, 7, 1460, 65483} {
			t.Run(fmt.Sprintf("%s/%d", dc.name, maxSeg), func(t *testing.T) {
				r := rand.New(rand.NewPCG(uint64(maxSeg), 1))
				c, want := interleaved(t, 1000, maxSeg, dc, r)
				d := NewDecoder(Options{HeaderDigest: dc.hd, DataDigest: dc.dd})
				rs := feed(d, c.segs)
				checkBoth(t, rs, want)
				// Records come in the order the PDUs were sent, each tagged
				// with the frame that completed it.
				var frames []int
				for i, s := range c.segs {
					for range s.pdus {
						frames = append(frames, i+1)
					}
				}
				for i, r := range rs {
					if dir := b2i(!r.FromInitiator); dir != c.order[i] || r.Frame != frames[i] {
						t.Fatalf("record %d: direction %d frame %d, want %d and %d", i, dir, r.Frame, c.order[i], frames[i])
					}
					if want := time.Unix(1700000000, 0).Add(time.Duration(r.Frame-1) * time.Millisecond); !r.Time.Equal(want) {
						t.Fatalf("record %d: time %v, want %v", i, r.Time, want)
					}
				}
				st := d.Stats()
				if st.Connections != 1 || st.Resyncs != 0 || st.Gaps != 0 || st.Retransmits != 0 || st.OutOfOrder != 0 || st.Records != len(rs) {
					t.Fatalf("stats %+v", st)
				}
			})
		}
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestDecoderManyPerSegment sends each direction's PDUs together, so that
// segments carry several PDUs and PDUs straddle segments.
func TestDecoderManyPerSegment(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	c := newConv(0, 0)
	var want [2][]sent
	for dir, ms := range [][]msg{initiatorMsgs(), targetMsgs()} {
		b, s := encode(t, ms, false, false)
		want[dir] = s
		c.send(dir, b, pduLens(ms, false, false), 3000, r)
	}
	c.close()
	checkBoth(t, feed(NewDecoder(Options{}), c.segs), want)
}

// TestDecoderRetransmit duplicates segments and adds retransmissions that
// overlap segment boundaries.
func TestDecoderRetransmit(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	c, want := interleaved(t, 0xfffff000, 900, digestCase{}, r) // sequence numbers wrap
	var segs []seg
	overlaps := 0
	for i := 0; i < len(c.segs); i++ {
		s := c.segs[i]
		segs = append(segs, s)
		if len(s.payload) == 0 {
			continue
		}
		switch r.IntN(4) {
		case 0: // exact duplicate
			segs = append(segs, s)
		case 1: // a retransmission of this segment's tail, coalesced with the next segment
			if n := c.segs[i+1]; n.dir == s.dir && len(n.payload) > 0 {
				half := len(s.payload) / 2
				p := append(slices.Clone(s.payload[half:]), n.payload...)
				segs = append(segs, seg{dir: s.dir, seq: s.seq + uint32(half), ack: true, payload: p})
				i++
				overlaps++
			}
		}
	}
	if overlaps < 10 {
		t.Fatalf("only %d overlapping retransmissions", overlaps)
	}
	d := NewDecoder(Options{})
	checkBoth(t, feed(d, segs), want)
	if st := d.Stats(); st.Retransmits == 0 || st.Gaps != 0 || st.Resyncs != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestDecoderOutOfOrder shuffles segments within windows of a few.
func TestDecoderOutOfOrder(t *testing.T) {
	for _, win := range []int{2, 5, 40} {
		r := rand.New(rand.NewPCG(4, uint64(win)))
		c, want := interleaved(t, 42, 500, digestCase{hd: true}, r)
		segs := slices.Clone(c.segs)
		for i := 3; i < len(segs)-2; i += win {
			w := segs[i:min(i+win, len(segs)-2)]
			r.Shuffle(len(w), func(a, b int) { w[a], w[b] = w[b], w[a] })
		}
		d := NewDecoder(Options{HeaderDigest: true})
		checkBoth(t, feed(d, segs), want)
		if st := d.Stats(); st.OutOfOrder == 0 || st.Gaps != 0 || st.Resyncs != 0 {
			t.Fatalf("window %d: stats %+v", win, st)
		}
	}
}

// expectFrom returns the PDUs of one direction that start at or after
// stream offset cut and end at or before stop.
func expectFrom(c *conv, dir int, want []sent, cut, stop int) []sent {
	var out []sent
	start := 0
	for i, e := range c.ends[dir] {
		if start >= cut && e <= stop {
			out = append(out, want[i])
		}
		start = e
	}
	return out
}

// TestDecoderMidStream drops the first segments of the capture, so that it
// starts inside PDUs.
func TestDecoderMidStream(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	c, want := interleaved(t, 7, 333, digestCase{}, r)
	for _, drop := range []int{3, 4, 10, 37, 100, 150} {
		segs := c.segs[drop:]
		var exp [2][]sent
		for dir := range 2 {
			for _, s := range segs {
				if s.dir == dir {
					cut := int(s.seq - c.isn[dir] - 1)
					exp[dir] = expectFrom(c, dir, want[dir], cut, len(c.wire[dir]))
					break
				}
			}
		}
		d := NewDecoder(Options{})
		checkBoth(t, feed(d, segs), exp)
		if st := d.Stats(); st.Resyncs != 2 || st.Gaps != 0 {
			t.Fatalf("drop %d: stats %+v", drop, st)
		}
	}
}

// TestDecoderGap drops one segment: the PDU it was part of is lost, the
// ones after it are found again.
func TestDecoderGap(t *testing.T) {
	r := rand.New(rand.NewPCG(6, 6))
	c, want := interleaved(t, 7, 1000, digestCase{}, r)
	for _, lose := range []int{20, 40, 60, 75} {
		if len(c.segs[lose].payload) == 0 {
			t.Fatalf("segment %d carries nothing", lose)
		}
		segs := slices.Delete(slices.Clone(c.segs), lose, lose+1)
		l := c.segs[lose]
		cutStart := int(l.seq - c.isn[l.dir] - 1)
		cutEnd := cutStart + len(l.payload)
		var exp [2][]sent
		exp[1-l.dir] = want[1-l.dir]
		exp[l.dir] = append(expectFrom(c, l.dir, want[l.dir], 0, cutStart), expectFrom(c, l.dir, want[l.dir], cutEnd, len(c.wire[l.dir]))...)
		d := NewDecoder(Options{})
		checkBoth(t, feed(d, segs), exp)
		if st := d.Stats(); st.Gaps != 1 || st.Resyncs != 1 {
			t.Fatalf("lose %d: stats %+v", lose, st)
		}
	}
}

// TestDecoderGapBuffered gives up a missing segment once MaxPending bytes
// wait behind it, before the end of the capture.
func TestDecoderGapBuffered(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	c, want := interleaved(t, 7, 1000, digestCase{}, r)
	lose := 20
	l := c.segs[lose]
	segs := slices.Delete(slices.Clone(c.segs), lose, lose+1)
	cutStart := int(l.seq - c.isn[l.dir] - 1)
	var exp [2][]sent
	exp[1-l.dir] = want[1-l.dir]
	exp[l.dir] = append(expectFrom(c, l.dir, want[l.dir], 0, cutStart),
		expectFrom(c, l.dir, want[l.dir], cutStart+len(l.payload), len(c.wire[l.dir]))...)
	d := NewDecoder(Options{MaxPending: 2000})
	// No FIN and no Flush: only MaxPending ends the wait.
	checkBoth(t, feedOnly(d, segs[:len(segs)-2]), exp)
	if st := d.Stats(); st.Gaps != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestDecoderNewConnection reuses a finished connection's addresses.
func TestDecoderNewConnection(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 8))
	c1, want1 := interleaved(t, 100, 1460, digestCase{}, r)
	c2, want2 := interleaved(t, 900000, 1460, digestCase{}, r)
	d := NewDecoder(Options{})
	rs := feed(d, append(slices.Clone(c1.segs), c2.segs...))
	checkBoth(t, rs, [2][]sent{append(want1[0], want2[0]...), append(want1[1], want2[1]...)})
	if st := d.Stats(); st.Connections != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// TestDecoderPorts ignores TCP on other ports and finds iSCSI on a
// configured port.
func TestDecoderPorts(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	c, want := interleaved(t, 100, 1460, digestCase{}, r)
	if rs := feed(NewDecoder(Options{Ports: []uint16{3261}}), c.segs); len(rs) != 0 {
		t.Fatalf("%d records from a port not configured", len(rs))
	}
	checkBoth(t, feed(NewDecoder(Options{Ports: []uint16{80, 3260}}), c.segs), want)
}

// TestDecoderChaos sends both directions with random segment sizes,
// retransmissions that overlap what was sent at any offset, and reordering
// within windows of a few segments.
func TestDecoderChaos(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 10))
		dc := digestCases[seed%4]
		ref, want := interleaved(t, r.Uint32(), 1<<20, dc, r)
		c := newConv(ref.isn[0], ref.isn[1])
		var data []seg
		for dir := range 2 {
			w := ref.wire[dir]
			for pos := 0; pos < len(w); {
				n := min(len(w)-pos, 1+r.IntN(2000))
				data = append(data, seg{dir: dir, seq: ref.isn[dir] + 1 + uint32(pos), ack: true, payload: w[pos : pos+n]})
				pos += n
				if r.IntN(3) == 0 {
					from := r.IntN(pos + 1)
					to := min(len(w), pos+r.IntN(3000))
					data = append(data, seg{dir: dir, seq: ref.isn[dir] + 1 + uint32(from), ack: true, payload: w[from:to]})
				}
			}
		}
		// Mix the directions, then reorder within small windows.
		slices.SortStableFunc(data, func(a, b seg) int { return int(a.seq-ref.isn[a.dir]) - int(b.seq-ref.isn[b.dir]) })
		for i := 0; i < len(data); i += 8 {
			w := data[i:min(i+8, len(data))]
			r.Shuffle(len(w), func(a, b int) { w[a], w[b] = w[b], w[a] })
		}
		segs := append(c.segs, data...)
		segs = append(segs, seg{dir: 0, seq: ref.next[0], ack: true, fin: true}, seg{dir: 1, seq: ref.next[1], ack: true, fin: true})
		d := NewDecoder(Options{HeaderDigest: dc.hd, DataDigest: dc.dd})
		checkBoth(t, feed(d, segs), want)
		if st := d.Stats(); st.Gaps != 0 || st.Resyncs != 0 || st.Truncated != 0 {
			t.Fatalf("seed %d: stats %+v", seed, st)
		}
	}
}

// TestDecoderLateSYN retransmits the SYNs after data: still one connection.
func TestDecoderLateSYN(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 11))
	c, want := interleaved(t, 5000, 1460, digestCase{}, r)
	segs := slices.Insert(slices.Clone(c.segs), 20, c.segs[0], c.segs[1])
	d := NewDecoder(Options{})
	checkBoth(t, feed(d, segs), want)
	if st := d.Stats(); st.Connections != 1 || st.Resyncs != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestDecoderReset ends the connection with an RST inside a PDU: the PDUs
// in progress are truncated, the ones before them decoded.
func TestDecoderReset(t *testing.T) {
	r := rand.New(rand.NewPCG(12, 12))
	c, want := interleaved(t, 5000, 500, digestCase{}, r)
	at := 30
	l := c.segs[at]
	segs := slices.Insert(slices.Clone(c.segs[:at+1]), at+1, seg{dir: l.dir, seq: l.seq + uint32(len(l.payload)), rst: true})
	var exp [2][]sent
	for dir := range 2 {
		stop := 0
		for _, s := range segs {
			if s.dir == dir && len(s.payload) > 0 {
				stop = int(s.seq-c.isn[dir]-1) + len(s.payload)
			}
		}
		exp[dir] = expectFrom(c, dir, want[dir], 0, stop)
	}
	d := NewDecoder(Options{})
	checkBoth(t, feed(d, segs), exp)
	if st := d.Stats(); st.Truncated == 0 {
		t.Fatalf("stats %+v", st)
	}
}
