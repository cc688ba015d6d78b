package capture

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/goiscsi/iscsi/pdu"
)

// TestRealCaptures decodes the captures of real sessions in testdata/ and
// compares every PDU with tshark's dissection, and every header with what
// its pdu type marshals.
func TestRealCaptures(t *testing.T) {
	dir := filepath.Join("..", "testdata")
	var files []string
	for _, pat := range []string{"*.pcap", "*.pcapng"} {
		m, err := filepath.Glob(filepath.Join(dir, pat))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) == 0 {
		t.Skip("no captures in testdata/ yet")
	}
	requireTshark(t)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) { checkCaptureFile(t, f, portsInReadme(t, dir)) })
	}
}

// TestCheckCaptureFile runs TestRealCaptures' checks on a Tap capture of a
// loopback TCP connection, with header digests negotiated at login, and the
// port in a README as testdata/ has it.
func TestCheckCaptureFile(t *testing.T) {
	requireTshark(t)
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tgt := <-accepted
	if tgt == nil {
		t.Fatal("accept failed")
	}
	tap, err := NewFileTap(conn, filepath.Join(dir, "session.pcap"), TapOptions{MSS: 8192})
	if err != nil {
		t.Fatal(err)
	}
	converse(t, tap, tgt, true, false)
	port := ln.Addr().(*net.TCPAddr).Port
	readme := fmt.Sprintf("# Captures\n\nA tgtd target listening on 127.0.0.1, TCP port %d.\n", port)
	if err := os.WriteFile(filepath.Join(dir, "README.md"), []byte(readme), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := portsInReadme(t, dir); !slices.Equal(got, []uint16{uint16(port)}) {
		t.Fatalf("ports in README: %v, want %d", got, port)
	}
	if got := synPorts(t, filepath.Join(dir, "session.pcap")); !slices.Equal(got, []uint16{uint16(port)}) {
		t.Fatalf("ports of SYNs: %v, want %d", got, port)
	}
	checkCaptureFile(t, filepath.Join(dir, "session.pcap"), portsInReadme(t, dir))
}

// checkCaptureFile decodes a capture on the given iSCSI ports (or, if none,
// the ports its connections were opened to) with the digests its logins
// negotiated, and compares it with tshark's dissection.
func checkCaptureFile(t *testing.T, f string, ports []uint16) {
	t.Helper()
	if len(ports) == 0 {
		ports = synPorts(t, f)
	}
	if len(ports) == 0 {
		ports = []uint16{DefaultPort}
	}
	opts := Options{Ports: ports}
	rs, err := ReadFile(f, opts)
	if err != nil {
		t.Fatal(err)
	}
	// Digests are negotiated at login, whose PDUs carry none: read the
	// answer, then decode again with the digests it chose.
	if opts.HeaderDigest, opts.DataDigest = negotiatedDigests(t, rs); opts.HeaderDigest || opts.DataDigest {
		if rs, err = ReadFile(f, opts); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%s: ports %v, digests header=%v data=%v: %d PDUs", filepath.Base(f), ports, opts.HeaderDigest, opts.DataDigest, len(rs))
	if len(rs) == 0 {
		t.Fatal("no iSCSI PDUs decoded")
	}
	for _, r := range rs {
		if r.Err != nil {
			t.Errorf("frame %d: %s: %v", r.Frame, r.Header.Opcode(), r.Err)
		}
	}
	checkReencode(t, rs)
	if p := tsharkProblems(t, f, ports, "error"); p != "" {
		t.Errorf("tshark finds errors:\n%s", p)
	}
	if opts.DataDigest {
		t.Log("data digests: tshark cannot dissect them, no comparison")
		return
	}
	compareTshark(t, rs, tsharkPDUs(t, f, ports))
}

// portsInReadme returns the port numbers the README in dir mentions next to
// the word "port".
func portsInReadme(t *testing.T, dir string) []uint16 {
	t.Helper()
	var b []byte
	for _, name := range []string{"README.md", "README", "README.txt"} {
		var err error
		if b, err = os.ReadFile(filepath.Join(dir, name)); err == nil {
			break
		}
	}
	var ports []uint16
	for _, m := range regexp.MustCompile(`(?i)port[s]?\b[^0-9\n]{0,20}(\d{2,5})`).FindAllSubmatch(b, -1) {
		if p, err := strconv.ParseUint(string(m[1]), 10, 16); err == nil && p > 0 && !slices.Contains(ports, uint16(p)) {
			ports = append(ports, uint16(p))
		}
	}
	return ports
}

// synPorts returns the ports that connections in a capture were opened to.
func synPorts(t *testing.T, path string) []uint16 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	src, err := openCapture(f)
	if err != nil {
		t.Fatal(err)
	}
	var ports []uint16
	ps := gopacket.NewPacketSource(src, src.LinkType())
	ps.Lazy, ps.NoCopy = true, true
	for p := range ps.Packets() {
		if tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP); ok && tcp.SYN && !tcp.ACK {
			if port := uint16(tcp.DstPort); !slices.Contains(ports, port) {
				ports = append(ports, port)
			}
		}
	}
	return ports
}

// negotiatedDigests reads the digests the targets' last login responses
// chose.
func negotiatedDigests(t *testing.T, rs []Record) (hd, dd bool) {
	t.Helper()
	for _, r := range rs {
		if r.Header.Opcode() != pdu.OpLoginResponse || len(r.Data) == 0 {
			continue
		}
		kvs, err := pdu.ParseText(r.Data, pdu.TextLimits{AllowDuplicates: true})
		if err != nil {
			t.Logf("frame %d: login text: %v", r.Frame, err)
			continue
		}
		for _, kv := range kvs {
			switch kv.Key {
			case "HeaderDigest":
				hd = kv.Value == "CRC32C"
			case "DataDigest":
				dd = kv.Value == "CRC32C"
			}
		}
	}
	return hd, dd
}
