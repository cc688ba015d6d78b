package iscsitest

import (
	"bytes"
	"encoding/binary"
	"strconv"

	"github.com/goiscsi/iscsi/pdu"
)

// scsiRes is what a SCSI command returned to the test initiator.
type scsiRes struct {
	status   uint8
	sense    []byte
	data     []byte
	resid    uint32
	under    bool
	over     bool
	dataIns  int
	r2ts     int
	inStatus bool // status came in the last Data-In
}

func (r scsiRes) senseKey() (key, asc, ascq byte) {
	if len(r.sense) < 14 {
		return 0xff, 0xff, 0xff
	}
	return r.sense[2] & 0x0f, r.sense[12], r.sense[13]
}

// cmd runs a SCSI command on lun: out is written (immediate data, then
// unsolicited Data-Out, then Data-Out per R2T, as negotiated); readLen bytes
// are expected back.
func (i *ini) cmd(lun int, cdb []byte, out []byte, readLen uint32) scsiRes {
	i.t.Helper()
	itt := i.nextITT()
	edtl := readLen
	write := out != nil
	if write {
		edtl = uint32(len(out))
	}
	tMax := i.param("MaxRecvDataSegmentLength", 8192)
	firstBurst := i.param("FirstBurstLength", 65536)
	var imm []byte
	if write && i.paramBool("ImmediateData", true) {
		imm = out[:min(len(out), firstBurst, tMax)]
	}
	unsolEnd := len(imm)
	if write && !i.paramBool("InitialR2T", true) {
		unsolEnd = min(len(out), firstBurst)
	}
	c := &pdu.SCSICommand{Final: unsolEnd == len(imm), Read: readLen > 0, Write: write, Attr: pdu.AttrSimple,
		LUN: pdu.MakeLUN(lun), ITT: itt, ExpectedDataTransferLength: edtl, CmdSN: *i.cmdSN, ExpStatSN: i.expStatSN}
	copy(c.CDB[:], cdb)
	i.send(c, imm)
	*i.cmdSN++
	i.sendData(out, itt, 0xffffffff, len(imm), unsolEnd, tMax)
	var res scsiRes
	var dataSN uint32
	for {
		p, data := i.recv()
		switch v := p.(type) {
		case *pdu.R2T:
			if v.ITT != itt || v.R2TSN != uint32(res.r2ts) {
				i.t.Fatalf("R2T ITT %#x R2TSN %d, want %#x %d", v.ITT, v.R2TSN, itt, res.r2ts)
			}
			res.r2ts++
			end := int(v.BufferOffset + v.DesiredDataTransferLength)
			if end > len(out) || int(v.DesiredDataTransferLength) > i.param("MaxBurstLength", 262144) {
				i.t.Fatalf("R2T past the data or MaxBurstLength: %+v", v)
			}
			i.sendData(out, itt, v.TTT, int(v.BufferOffset), end, tMax)
		case *pdu.DataIn:
			if v.ITT != itt || v.DataSN != dataSN || int(v.BufferOffset) != len(res.data) || len(data) > i.maxRecv {
				i.t.Fatalf("Data-In %+v (%d bytes) out of sequence: DataSN %d offset %d", v, len(data), dataSN, len(res.data))
			}
			dataSN++
			res.dataIns++
			res.data = append(res.data, data...)
			if v.HasStatus {
				res.status, res.resid, res.under, res.over, res.inStatus = v.Status, v.ResidualCount, v.Underflow, v.Overflow, true
				return res
			}
		case *pdu.SCSIResponse:
			if v.ITT != itt {
				i.t.Fatalf("SCSI Response ITT %#x, want %#x", v.ITT, itt)
			}
			if write && v.ExpDataSN != uint32(res.r2ts) || !write && v.ExpDataSN != dataSN {
				i.t.Errorf("SCSI Response ExpDataSN %d, want %d", v.ExpDataSN, max(uint32(res.r2ts), dataSN))
			}
			res.status, res.resid, res.under, res.over = v.Status, v.ResidualCount, v.Underflow, v.Overflow
			if len(data) >= 2 {
				n := int(binary.BigEndian.Uint16(data))
				res.sense = data[2 : 2+n]
			}
			return res
		default:
			i.t.Fatalf("got %s during a SCSI command", p.Opcode())
		}
	}
}

// sendData sends out[from:to] as Data-Out PDUs of at most max bytes.
func (i *ini) sendData(out []byte, itt, ttt uint32, from, to, max int) {
	i.t.Helper()
	var sn uint32
	for off := from; off < to; sn++ {
		n := min(to-off, max)
		i.send(&pdu.DataOut{Final: off+n == to, ITT: itt, TTT: ttt, ExpStatSN: i.expStatSN, DataSN: sn,
			BufferOffset: uint32(off)}, out[off:off+n])
		off += n
	}
}

func read10(lba uint32, blocks uint16) []byte {
	cdb := []byte{opRead10, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(cdb[2:], lba)
	binary.BigEndian.PutUint16(cdb[7:], blocks)
	return cdb
}

func write10(lba uint32, blocks uint16) []byte {
	cdb := read10(lba, blocks)
	cdb[0] = opWrite10
	return cdb
}

// write writes data at lba of lun and checks the status is GOOD.
func (i *ini) write(lun int, lba uint32, data []byte) scsiRes {
	i.t.Helper()
	res := i.cmd(lun, write10(lba, uint16(len(data)/BlockSize)), data, 0)
	if res.status != pdu.StatusGood {
		k, a, q := res.senseKey()
		i.t.Fatalf("WRITE: status %#x sense %x/%x/%x", res.status, k, a, q)
	}
	return res
}

// read reads blocks at lba of lun and checks the status is GOOD.
func (i *ini) read(lun int, lba uint32, blocks int) scsiRes {
	i.t.Helper()
	res := i.cmd(lun, read10(lba, uint16(blocks)), nil, uint32(blocks*BlockSize))
	if res.status != pdu.StatusGood {
		k, a, q := res.senseKey()
		i.t.Fatalf("READ: status %#x sense %x/%x/%x", res.status, k, a, q)
	}
	return res
}

// pattern returns n bytes that differ at every offset and with seed.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for j := range b {
		b[j] = byte(j/BlockSize) ^ byte(j) ^ seed
	}
	return b
}

// chapLogin runs the security stage with CHAP and returns a non-zero
// status if the target ended the login.
func (i *ini) chapLogin(o loginOpts, first []pdu.KV) pdu.LoginStatus {
	i.t.Helper()
	first = append(first, pdu.KV{Key: "AuthMethod", Value: "CHAP,None"})
	resp, _ := i.loginReq(0, 1, true, first...)
	if resp.Status() != 0 {
		return resp.Status()
	}
	if resp.Transit || i.negotiated["AuthMethod"] != "CHAP" {
		i.t.Fatalf("AuthMethod: T=%v %q", resp.Transit, i.negotiated["AuthMethod"])
	}
	alg := o.alg
	if alg == "" {
		alg = "5"
	}
	resp, _ = i.loginReq(0, 1, false, pdu.KV{Key: "CHAP_A", Value: alg})
	if resp.Status() != 0 {
		return resp.Status()
	}
	a, _ := strconv.Atoi(i.negotiated["CHAP_A"])
	id, err := pdu.ParseNumber(i.negotiated["CHAP_I"])
	if err != nil {
		i.t.Fatalf("CHAP_I %q: %v", i.negotiated["CHAP_I"], err)
	}
	ch, err := pdu.ParseBinary(i.negotiated["CHAP_C"], pdu.MaxBinaryValueLen)
	if err != nil || pdu.CHAPSize(a) == 0 {
		i.t.Fatalf("CHAP_A %d CHAP_C %q: %v", a, i.negotiated["CHAP_C"], err)
	}
	kvs := []pdu.KV{{Key: "CHAP_N", Value: o.chap.User},
		{Key: "CHAP_R", Value: pdu.FormatHex(chapResponse(a, byte(id), o.chap.Secret, ch))}}
	mutual := o.chap.MutualUser != ""
	mc := o.mutualC
	if o.reflect {
		mc = ch
	}
	if mutual {
		if mc == nil {
			mc = bytes.Repeat([]byte{0x5a, 0xa5}, 8)
		}
		kvs = append(kvs, pdu.KV{Key: "CHAP_I", Value: "77"}, pdu.KV{Key: "CHAP_C", Value: pdu.FormatHex(mc)})
	}
	resp, _ = i.loginReq(0, 1, true, kvs...)
	if resp.Status() != 0 {
		return resp.Status()
	}
	if mutual {
		want := pdu.FormatHex(chapResponse(a, 77, o.chap.MutualSecret, mc))
		if i.negotiated["CHAP_N"] != o.chap.MutualUser || i.negotiated["CHAP_R"] != want {
			i.t.Fatalf("mutual CHAP: target answered N=%q R=%q, want %q %q", i.negotiated["CHAP_N"],
				i.negotiated["CHAP_R"], o.chap.MutualUser, want)
		}
	}
	if !resp.Transit || resp.NSG != 1 {
		i.t.Fatalf("after CHAP: T=%v NSG=%d", resp.Transit, resp.NSG)
	}
	return 0
}
