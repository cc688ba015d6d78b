package peers

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// writePcap writes a classic pcap file of Ethernet/IPv4/TCP packets on
// loopback, each carrying one payload from srcPort to dstPort.
func writePcap(t *testing.T, path string, srcPort, dstPort uint16, payloads ...[]byte) {
	t.Helper()
	f := make([]byte, 24)
	binary.LittleEndian.PutUint32(f[0:], 0xa1b2c3d4)
	binary.LittleEndian.PutUint16(f[4:], 2)
	binary.LittleEndian.PutUint16(f[6:], 4)
	binary.LittleEndian.PutUint32(f[16:], 65535)
	binary.LittleEndian.PutUint32(f[20:], 1) // Ethernet
	seq := uint32(1)
	for i, p := range payloads {
		pkt := make([]byte, 54, 54+len(p))
		pkt[12], pkt[13] = 0x08, 0x00
		ip := pkt[14:34]
		ip[0], ip[8], ip[9] = 0x45, 64, 6
		binary.BigEndian.PutUint16(ip[2:], uint16(40+len(p)))
		copy(ip[12:], []byte{127, 0, 0, 1})
		copy(ip[16:], []byte{127, 0, 0, 1})
		var sum uint32
		for j := 0; j < 20; j += 2 {
			sum += uint32(binary.BigEndian.Uint16(ip[j:]))
		}
		for sum > 0xffff {
			sum = sum>>16 + sum&0xffff
		}
		binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
		tcp := pkt[34:54]
		binary.BigEndian.PutUint16(tcp[0:], srcPort)
		binary.BigEndian.PutUint16(tcp[2:], dstPort)
		binary.BigEndian.PutUint32(tcp[4:], seq)
		tcp[12], tcp[13] = 5<<4, 0x18 // header length 20, PSH+ACK
		binary.BigEndian.PutUint16(tcp[14:], 65535)
		pkt = append(pkt, p...)
		seq += uint32(len(p))
		rec := make([]byte, 16)
		binary.LittleEndian.PutUint32(rec[0:], uint32(1000+i))
		binary.LittleEndian.PutUint32(rec[8:], uint32(len(pkt)))
		binary.LittleEndian.PutUint32(rec[12:], uint32(len(pkt)))
		f = append(append(f, rec...), pkt...)
	}
	if err := os.WriteFile(path, f, 0o644); err != nil {
		t.Fatal(err)
	}
}

// textResponse returns a final Text Response PDU carrying data, which
// must be a multiple of four bytes long.
func textResponse(statSN uint32, data string) []byte {
	b := make([]byte, 48, 48+len(data))
	b[0], b[1] = 0x24, 0x80
	binary.BigEndian.PutUint32(b[4:], uint32(len(data))) // TotalAHSLength 0
	binary.BigEndian.PutUint32(b[16:], statSN)           // ITT
	binary.BigEndian.PutUint32(b[20:], 0xffffffff)       // TTT
	binary.BigEndian.PutUint32(b[24:], statSN)           // StatSN
	binary.BigEndian.PutUint32(b[28:], statSN)           // ExpCmdSN
	binary.BigEndian.PutUint32(b[32:], statSN)           // MaxCmdSN
	return append(b, data...)
}

func TestTshark(t *testing.T) {
	t.Parallel()
	Require(t, "tshark")
	dir := t.TempDir()
	const port = 13260 // not 3260: exercises -d tcp.port==PORT,iscsi
	good := filepath.Join(dir, "good.pcap")
	writePcap(t, good, port, 40000, textResponse(1, "a=b\x00"), textResponse(2, "c=d\x00"))
	rows, err := TsharkFields(good, port, "frame.number", "iscsi.opcode")
	if err != nil {
		t.Fatal(err)
	}
	if want := [][]string{{"1", "0x24"}, {"2", "0x24"}}; !reflect.DeepEqual(rows, want) {
		t.Fatalf("TsharkFields: got %q want %q", rows, want)
	}
	rows, err = TsharkFieldsFilter(good, port, "iscsi.statsn == 2", "frame.number")
	if err != nil {
		t.Fatal(err)
	}
	if want := [][]string{{"2"}}; !reflect.DeepEqual(rows, want) {
		t.Fatalf("TsharkFieldsFilter: got %q want %q", rows, want)
	}
	if n, err := TsharkMalformed(good, port); err != nil || n != 0 {
		t.Fatalf("TsharkMalformed(good) = %d, %v", n, err)
	}

	// A text key without its NUL terminator makes the iSCSI dissector
	// throw, which tshark reports as a malformed packet.
	bad := filepath.Join(dir, "bad.pcap")
	writePcap(t, bad, port, 40000, textResponse(1, "a=b\x00"), textResponse(2, "abcd"))
	if n, err := TsharkMalformed(bad, port); err != nil || n != 1 {
		t.Fatalf("TsharkMalformed(bad) = %d, %v; want 1", n, err)
	}

	if _, err := TsharkFields(filepath.Join(dir, "missing.pcap"), port, "frame.number"); err == nil {
		t.Fatal("TsharkFields on a missing file succeeded")
	}
	if _, err := TsharkFields(good, port, "no.such.field"); err == nil {
		t.Fatal("TsharkFields with an unknown field succeeded")
	}
}

// TestRecordedCaptures checks the captures in the repository's testdata
// (made by scripts/record-captures.sh): tshark decodes each as iSCSI on
// port 3260, finds nothing malformed, and sees each command's PDUs.
func TestRecordedCaptures(t *testing.T) {
	t.Parallel()
	Require(t, "tshark")
	session := []string{"0x03", "0x23", "0x06", "0x26"}
	want := map[string][]string{
		"iscsi-inq.pcap":            append([]string{"0x01", "0x21", "0x25"}, session...),
		"iscsi-readcapacity16.pcap": append([]string{"0x01", "0x21", "0x25"}, session...),
		"iscsi-swp.pcap":            append([]string{"0x01", "0x21", "0x25"}, session...),
		"iscsi-perf.pcap":           append([]string{"0x01", "0x21", "0x25"}, session...),
		"iscsi-inq-chap.pcap":       append([]string{"0x01", "0x21", "0x25"}, session...),
		"iscsi-ls.pcap":             append([]string{"0x04", "0x24"}, session...),
	}
	for name, ops := range want {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join("..", "..", "testdata", name)
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Size() > 512<<10 {
				t.Errorf("%s is %d bytes; keep captures small", name, fi.Size())
			}
			if n, err := TsharkMalformed(path, 3260); err != nil || n != 0 {
				t.Fatalf("TsharkMalformed = %d, %v", n, err)
			}
			rows, err := TsharkFieldsFilter(path, 3260, "iscsi", "iscsi.opcode")
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]int{}
			for _, r := range rows {
				for _, op := range strings.Split(r[0], ",") {
					seen[op]++
				}
			}
			for _, op := range ops {
				if seen[op] == 0 {
					t.Errorf("no PDU with opcode %s (saw %v)", op, seen)
				}
			}
			if seen["0x06"] != seen["0x26"] || seen["0x03"] != seen["0x23"] {
				t.Errorf("unpaired login or logout: %v", seen)
			}
		})
	}
}
