package capture

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket/pcapgo"

	"github.com/goiscsi/iscsi/pdu"
)

// converse runs the test conversation over a connected pair: the initiator
// sends each of its PDUs and waits for the target's answer; the target
// sends its remaining PDUs at the end; then the initiator closes. It returns
// the PDUs each side sent.
func converse(t *testing.T, ini, tgt net.Conn, hd, dd bool) [2][]sent {
	t.Helper()
	ims, tms := negotiate(initiatorMsgs(), hd, dd), negotiate(targetMsgs(), hd, dd)
	_, wantIni := encode(t, ims, hd, dd)
	_, wantTgt := encode(t, tms, hd, dd)

	errc := make(chan error, 1)
	go func() {
		errc <- func() error {
			cfg := pdu.ReaderConfig{From: pdu.FromInitiator, MaxDataSegmentLength: 1 << 20}
			r := pdu.NewReader(tgt, cfg)
			w := pdu.NewWriter(tgt)
			for i := range ims {
				if i == 1 { // login is over: digests from now on
					cfg.HeaderDigest, cfg.DataDigest = hd, dd
					r.SetConfig(cfg)
					w.SetDigests(hd, dd)
				}
				if _, err := r.Next(); err != nil {
					return err
				}
				if _, err := r.Data(); err != nil {
					return err
				}
				if err := w.Append(tms[i].p, tms[i].ahs, tms[i].data); err != nil {
					return err
				}
				if err := w.Flush(); err != nil {
					return err
				}
			}
			for _, m := range tms[len(ims):] {
				if err := w.WritePDU(m.p, m.data); err != nil {
					return err
				}
			}
			if _, err := r.Next(); err != io.EOF {
				return errors.New("target: no EOF after the last PDU")
			}
			return tgt.Close()
		}()
	}()

	cfg := pdu.ReaderConfig{From: pdu.FromTarget, MaxDataSegmentLength: 1 << 20}
	r := pdu.NewReader(ini, cfg)
	w := pdu.NewWriter(ini)
	for i, m := range ims {
		if i == 1 { // login is over: digests from now on
			cfg.HeaderDigest, cfg.DataDigest = hd, dd
			r.SetConfig(cfg)
			w.SetDigests(hd, dd)
		}
		if err := w.Append(m.p, m.ahs, m.data); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		h, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if h.Opcode() != tms[i].p.Opcode() {
			t.Fatalf("initiator got %s, want %s", h.Opcode(), tms[i].p.Opcode())
		}
		if _, err := r.Data(); err != nil {
			t.Fatal(err)
		}
	}
	for range tms[len(ims):] {
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
	}
	if err := ini.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return [2][]sent{wantIni, wantTgt}
}

// checkPingPong checks a Tap capture of converse: every PDU in order.
func checkPingPong(t *testing.T, rs []Record, want [2][]sent) {
	t.Helper()
	checkBoth(t, rs, want)
	for i := range 2 * len(want[0]) {
		if rs[i].FromInitiator != (i%2 == 0) {
			t.Fatalf("record %d out of order: FromInitiator=%v", i, rs[i].FromInitiator)
		}
	}
	for i := 1; i < len(rs); i++ {
		if rs[i].Time.Before(rs[i-1].Time) || rs[i].Frame < rs[i-1].Frame {
			t.Fatalf("record %d: time or frame goes back", i)
		}
	}
}

func TestTapPipe(t *testing.T) {
	for _, dc := range digestCases {
		for _, mss := range []int{0, 16 << 10, 1000} {
			for _, localIsTarget := range []bool{false, true} {
				ini, tgt := net.Pipe()
				var pcap bytes.Buffer
				opts := TapOptions{MSS: mss, LocalIsTarget: localIsTarget}
				var tap *TapConn
				var err error
				if localIsTarget {
					tap, err = NewTap(tgt, &pcap, opts)
					tgt = tap
				} else {
					tap, err = NewTap(ini, &pcap, opts)
					ini = tap
				}
				if err != nil {
					t.Fatal(err)
				}
				want := converse(t, ini, tgt, dc.hd, dc.dd)
				if err := tap.Err(); err != nil {
					t.Fatal(err)
				}
				d := NewDecoder(Options{HeaderDigest: dc.hd, DataDigest: dc.dd})
				rs, err := readWith(d, pcap.Bytes())
				if err != nil {
					t.Fatal(err)
				}
				checkPingPong(t, rs, want)
				st := d.Stats()
				if st.Connections != 1 || st.Gaps+st.Resyncs+st.Retransmits+st.OutOfOrder+st.Truncated != 0 {
					t.Fatalf("%s MSS %d: stats %+v", dc.name, mss, st)
				}
				wantIni := netip.MustParseAddrPort("127.0.0.1:49152")
				if rs[0].Src != wantIni || rs[0].Dst.Port() != DefaultPort {
					t.Fatalf("addresses %v -> %v", rs[0].Src, rs[0].Dst)
				}
			}
		}
	}
}

// readWith decodes a pcap in memory with d.
func readWith(d *Decoder, b []byte) ([]Record, error) {
	rs, err := decodeAll(d, bytes.NewReader(b))
	return rs, err
}

// TestTapTCP taps a loopback TCP connection, over IPv4 and IPv6.
func TestTapTCP(t *testing.T) {
	for _, network := range []string{"127.0.0.1:0", "[::1]:0"} {
		ln, err := net.Listen("tcp", network)
		if err != nil {
			t.Logf("%s: %v", network, err)
			continue
		}
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}()
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		tgt := <-accepted
		ln.Close()
		path := filepath.Join(t.TempDir(), "tcp.pcap")
		tap, err := NewFileTap(conn, path, TapOptions{MSS: 16 << 10})
		if err != nil {
			t.Fatal(err)
		}
		want := converse(t, tap, tgt, false, false)
		if err := tap.Err(); err != nil {
			t.Fatal(err)
		}
		port := uint16(ln.Addr().(*net.TCPAddr).Port)
		rs, err := ReadFile(path, Options{Ports: []uint16{port}})
		if err != nil {
			t.Fatal(err)
		}
		checkPingPong(t, rs, want)
		local := conn.LocalAddr().(*net.TCPAddr).AddrPort()
		if rs[0].Src != local || rs[0].Dst.Port() != port {
			t.Fatalf("%s: addresses %v -> %v, want %v -> port %d", network, rs[0].Src, rs[0].Dst, local, port)
		}
	}
}

// TestTapConcurrent writes and reads at the same time in both directions.
func TestTapConcurrent(t *testing.T) {
	ini, tgt := net.Pipe()
	var pcap bytes.Buffer
	tap, err := NewTap(ini, &pcap, TapOptions{MSS: 4096})
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	mk := func(i int, fromIni bool) msg {
		if fromIni {
			return msg{p: &pdu.DataOut{ITT: uint32(i), TTT: 1, DataSN: uint32(i)}, data: pattern(1+i*37, uint64(i))}
		}
		return msg{p: &pdu.NOPIn{ITT: 0xffffffff, TTT: uint32(i), SeqNums: pdu.SeqNums{StatSN: uint32(i)}}, data: pattern(i*11, uint64(i))}
	}
	var ms [2][]msg
	var want [2][]sent
	for dir := range 2 {
		for i := range n {
			ms[dir] = append(ms[dir], mk(i, dir == 0))
		}
		_, want[dir] = encode(t, ms[dir], false, false)
	}
	var wg sync.WaitGroup
	send := func(c net.Conn, dir int) {
		defer wg.Done()
		w := pdu.NewWriter(c)
		for _, m := range ms[dir] {
			if err := w.WritePDU(m.p, m.data); err != nil {
				t.Error(err)
				return
			}
		}
	}
	recv := func(c net.Conn, from pdu.Direction) {
		defer wg.Done()
		r := pdu.NewReader(c, pdu.ReaderConfig{From: from, MaxDataSegmentLength: 1 << 20})
		for range n {
			if _, err := r.Next(); err != nil {
				t.Error(err)
				return
			}
			if _, err := r.Data(); err != nil {
				t.Error(err)
				return
			}
		}
	}
	wg.Add(4)
	go send(tap, 0)
	go send(tgt, 1)
	go recv(tap, pdu.FromTarget)
	go recv(tgt, pdu.FromInitiator)
	wg.Wait()
	tap.Close()
	tgt.Close()
	if err := tap.Err(); err != nil {
		t.Fatal(err)
	}
	rs, err := Read(bytes.NewReader(pcap.Bytes()), Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkBoth(t, rs, want)
}

// failWriter fails every write after the first n bytes.
type failWriter struct{ n int }

var errDiskFull = errors.New("disk full")

func (w *failWriter) Write(b []byte) (int, error) {
	if len(b) > w.n {
		k := w.n
		w.n = 0
		return k, errDiskFull
	}
	w.n -= len(b)
	return len(b), nil
}

// TestTapWriteError fails the pcap part way: the connection goes on and Err
// reports the failure.
func TestTapWriteError(t *testing.T) {
	ini, tgt := net.Pipe()
	tap, err := NewTap(ini, &failWriter{n: 2000}, TapOptions{})
	if err != nil {
		t.Fatal(err)
	}
	converse(t, tap, tgt, false, false)
	if err := tap.Err(); !errors.Is(err, errDiskFull) {
		t.Fatalf("Err() = %v, want %v", err, errDiskFull)
	}
	if _, err := NewTap(ini, &failWriter{n: 10}, TapOptions{}); !errors.Is(err, errDiskFull) {
		t.Fatalf("NewTap with a failing header write: %v", err)
	}
}

// TestFileTapClose closes the pcap file with the connection.
func TestFileTapClose(t *testing.T) {
	ini, tgt := net.Pipe()
	defer tgt.Close()
	path := filepath.Join(t.TempDir(), "x.pcap")
	now := time.Unix(1700000000, 0)
	tap, err := NewFileTap(ini, path, TapOptions{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if err := tap.Close(); err != nil {
		t.Fatal(err)
	}
	tap.Close() // records nothing more
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// File header and four packets: SYN, SYN-ACK, ACK, FIN.
	if n := countPackets(t, b); n != 4 {
		t.Fatalf("%d packets, want 4", n)
	}
	if _, err := NewFileTap(ini, filepath.Join(t.TempDir(), "no", "such", "dir"), TapOptions{}); err == nil {
		t.Fatal("NewFileTap in a missing directory succeeded")
	}
}

// countPackets counts the packets of a pcap.
func countPackets(t *testing.T, b []byte) int {
	t.Helper()
	r, err := pcapgo.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		_, _, err := r.ReadPacketData()
		if err == io.EOF {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
}

// TestRecorder records several connections at once into one pcap.
func TestRecorder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "all.pcap")
	rec, err := NewFileRecorder(path)
	if err != nil {
		t.Fatal(err)
	}
	const n = 4
	wants := make([][2][]sent, n)
	// The conversations run at once, as parallel subtests of this group.
	t.Run("conns", func(t *testing.T) {
		for i := range n {
			ini, tgt := net.Pipe()
			tap, err := rec.Tap(ini, TapOptions{MSS: 3000})
			if err != nil {
				t.Fatal(err)
			}
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				t.Parallel()
				wants[i] = converse(t, tap, tgt, false, false)
			})
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := rec.Tap(nil, TapOptions{}); err == nil {
		t.Fatal("Tap on a closed Recorder succeeded")
	}
	rs, err := ReadFile(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	byConn := map[uint16][]Record{}
	for _, r := range rs {
		port := r.Src.Port()
		if !r.FromInitiator {
			port = r.Dst.Port()
		}
		byConn[port] = append(byConn[port], r)
	}
	if len(byConn) != n {
		t.Fatalf("%d connections, want %d", len(byConn), n)
	}
	for i := range n {
		checkPingPong(t, byConn[DefaultInitiatorPort+uint16(i)], wants[i])
	}
	if _, err := exec.LookPath("tshark"); err == nil {
		if p := tsharkProblems(t, path, nil, "warning"); p != "" {
			t.Errorf("tshark finds problems:\n%s", p)
		}
	}
}
