package faketarget

import (
	"bytes"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

// initiator is the test's hand-written initiator end of the pipe.
type initiator struct {
	t  *testing.T
	nc net.Conn
	r  *pdu.Reader
	w  *pdu.Writer
}

func (in *initiator) send(p pdu.PDU, kvs ...pdu.KV) {
	in.t.Helper()
	if err := in.w.WritePDU(p, pdu.AppendText(nil, kvs...)); err != nil {
		in.t.Fatal(err)
	}
}

// recv reads one PDU and its data segment as keys.
func (in *initiator) recv() (pdu.PDU, []pdu.KV) {
	in.t.Helper()
	h, err := in.r.Next()
	if err != nil {
		in.t.Fatal(err)
	}
	p, err := pdu.Decode(h)
	if err != nil {
		in.t.Fatal(err)
	}
	data, err := in.r.Data()
	if err != nil {
		in.t.Fatal(err)
	}
	kvs, err := pdu.ParseText(data, pdu.TextLimits{})
	if err != nil {
		in.t.Fatal(err)
	}
	return p, kvs
}

func kv(k, v string) pdu.KV { return pdu.KV{Key: k, Value: v} }

// ServeLogin runs each stage of Login's script, and the target then follows
// CmdSN with the window and digests negotiated, until Freeze.
func TestServeLogin(t *testing.T) {
	ini, tgt := net.Pipe()
	defer ini.Close()
	f := New(t, tgt, Timing{Wait: 5 * time.Second})
	defer f.Wait()
	defer f.Close()
	served := make(chan error, 1)
	go func() {
		served <- f.ServeLogin(Login{TSIH: 0x42, Window: 4, Digests: true, TargetMRDSL: 16384,
			Answers: map[string]string{"MaxBurstLength": "131072"}, Offers: []pdu.KV{kv("X-com.example.Vendor", "1")}})
	}()
	in := &initiator{t: t, nc: ini, r: pdu.NewReader(ini, pdu.ReaderConfig{From: pdu.FromTarget}), w: pdu.NewWriter(ini)}
	isid := [6]byte{0x80, 1, 2, 3, 4, 5}

	in.send(&pdu.LoginRequest{Transit: true, CSG: pdu.StageSecurity, NSG: pdu.StageOperational, ISID: isid, ITT: 1, CmdSN: 10},
		kv("AuthMethod", "None"), kv("InitiatorName", "iqn.2026-01.test:i"))
	p, kvs := in.recv()
	r := p.(*pdu.LoginResponse)
	if !r.Transit || r.NSG != pdu.StageOperational || r.ISID != isid || r.ITT != 1 || r.ExpCmdSN != 10 || r.MaxCmdSN != 13 {
		t.Fatalf("security stage response %+v", r)
	}
	if want := []pdu.KV{kv("AuthMethod", "None"), kv("TargetPortalGroupTag", "1")}; !slices.Equal(kvs, want) {
		t.Fatalf("security stage keys %v, want %v", kvs, want)
	}

	in.send(&pdu.LoginRequest{Transit: true, CSG: pdu.StageOperational, NSG: pdu.StageFullFeature, ISID: isid, ITT: 1, CmdSN: 10},
		kv("HeaderDigest", "CRC32C,None"), kv("DataDigest", "CRC32C,None"), kv("MaxBurstLength", "262144"),
		kv("ImmediateData", "Yes"), kv("MaxRecvDataSegmentLength", "8192"))
	p, kvs = in.recv()
	if r := p.(*pdu.LoginResponse); r.Transit || r.TSIH != 0x42 {
		t.Fatalf("offering response %+v", r)
	}
	want := []pdu.KV{kv("HeaderDigest", "CRC32C"), kv("DataDigest", "CRC32C"), kv("MaxBurstLength", "131072"),
		kv("ImmediateData", "Yes"), kv("MaxRecvDataSegmentLength", "16384"), kv("X-com.example.Vendor", "1")}
	if !slices.Equal(kvs, want) {
		t.Fatalf("operational keys %v, want %v", kvs, want)
	}

	in.send(&pdu.LoginRequest{Transit: true, CSG: pdu.StageOperational, NSG: pdu.StageFullFeature, ISID: isid, ITT: 1, CmdSN: 10},
		kv("X-com.example.Vendor", "1"))
	p, kvs = in.recv()
	if r := p.(*pdu.LoginResponse); !r.Transit || r.NSG != pdu.StageFullFeature || r.TSIH != 0x42 || len(kvs) != 0 {
		t.Fatalf("last response %+v keys %v", r, kvs)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if n := len(f.LoginRequests()); n != 3 {
		t.Errorf("%d Login Requests recorded, want 3", n)
	}
	if v, _ := pdu.Lookup(f.LoginKeys(), "X-com.example.Vendor"); v != "1" {
		t.Errorf("answer to the offer %q recorded", v)
	}

	// Full feature phase, with both digests.
	in.r.SetConfig(pdu.ReaderConfig{From: pdu.FromTarget, HeaderDigest: true, DataDigest: true})
	in.w.SetDigests(true, true)
	data := bytes.Repeat([]byte{0x5a}, 512)
	if err := in.w.WritePDU(&pdu.SCSICommand{Final: true, Write: true, ITT: 7, ExpectedDataTransferLength: 512, CmdSN: 10}, data); err != nil {
		t.Fatal(err)
	}
	x := f.Expect(pdu.OpSCSICommand)
	if !bytes.Equal(x.Data, data) {
		t.Fatalf("command data %x", x.Data)
	}
	// The pipe holds nothing: the answer goes out while the test reads it.
	go f.Send(&pdu.SCSIResponse{ITT: x.PDU.(*pdu.SCSICommand).ITT, SeqNums: f.Seq(true)}, nil)
	p, _ = in.recv()
	if s := p.(*pdu.SCSIResponse); s.ITT != 7 || s.StatSN != 0x7003 || s.ExpCmdSN != 11 || s.MaxCmdSN != 14 {
		t.Fatalf("SCSI Response %+v", s)
	}

	f.Freeze()
	if err := in.w.WritePDU(&pdu.SCSICommand{Final: true, ITT: 8, CmdSN: 11}, nil); err != nil {
		t.Fatal(err)
	}
	f.Expect(pdu.OpSCSICommand)
	if s := f.Seq(false); s.ExpCmdSN != 11 || s.MaxCmdSN != 14 {
		t.Fatalf("frozen window %+v", s)
	}
	f.ExpectNothing()
	ini.Close()
	f.ExpectClosed()
}

// Wire makes the bytes Send writes, digests included, for SendRaw.
func TestWireSendRaw(t *testing.T) {
	ini, tgt := net.Pipe()
	defer ini.Close()
	f := New(t, tgt, Timing{})
	defer f.Close()
	f.hd, f.dd = true, true
	b := f.Wire(&pdu.NOPIn{ITT: 0xffffffff, TTT: 9}, []byte("ping"))
	if len(b) != pdu.BHSLen+pdu.DigestLen+4+pdu.DigestLen {
		t.Fatalf("%d bytes on the wire", len(b))
	}
	go f.SendRaw(b)
	r := pdu.NewReader(ini, pdu.ReaderConfig{From: pdu.FromTarget, HeaderDigest: true, DataDigest: true})
	h, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	data, err := r.Data()
	if err != nil || h.Opcode() != pdu.OpNOPIn || string(data) != "ping" {
		t.Fatalf("%s %q %v", h.Opcode(), data, err)
	}
}

// Text keeps a key without a value as it is.
func TestText(t *testing.T) {
	if got := string(Text("AuthMethod=None", "TargetPortalGroupTag")); got != "AuthMethod=None\x00TargetPortalGroupTag\x00" {
		t.Fatalf("%q", got)
	}
}
