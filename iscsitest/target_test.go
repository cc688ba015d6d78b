package iscsitest

import (
	"bytes"
	"fmt"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/goiscsi/iscsi/pdu"
)

func newTarget(t *testing.T, cfg Config) *Target {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t, zaptest.Level(zap.DebugLevel))
	}
	tg := NewTarget(cfg)
	t.Cleanup(tg.Close)
	return tg
}

func TestLoginWriteReadLogout(t *testing.T) {
	tg := newTarget(t, Config{ImmediateData: true})
	i := dial(t, tg)
	i.login(loginOpts{})
	if i.tsih == 0 {
		t.Fatal("TSIH 0 after login")
	}
	ss := tg.Sessions()
	if len(ss) != 1 || ss[0].TSIH != i.tsih || ss[0].ISID != i.isid || ss[0].InitiatorName != "iqn.2026-11.org.goiscsi:ini" ||
		len(ss[0].CIDs) != 1 || ss[0].CIDs[0] != i.cid || ss[0].Ended {
		t.Fatalf("Sessions() = %+v", ss)
	}

	data := pattern(64<<10, 7)
	i.write(0, 100, data)
	got := i.read(0, 100, len(data)/BlockSize)
	if !bytes.Equal(got.data, data) {
		t.Fatal("read data differs from written data")
	}
	if !bytes.Equal(tg.LUNData(0)[100*BlockSize:][:len(data)], data) {
		t.Fatal("LUN data differs from written data")
	}

	lr := i.logoutResp(pdu.LogoutCloseSession, 0)
	if lr.Response != pdu.LogoutSuccess || lr.Time2Wait != 0 || lr.Time2Retain != 0 {
		t.Fatalf("logout response %+v", lr)
	}
	ss = tg.Sessions()
	if len(ss) != 1 || !ss[0].LoggedOut || !ss[0].Ended || len(ss[0].CIDs) != 0 {
		t.Fatalf("after logout, Sessions() = %+v", ss)
	}
	i.expectClosed(false)
	st := tg.Stats()
	if st.Logins != 1 || st.Logouts[0] != 1 || st.Received[pdu.OpSCSICommand] != 2 {
		t.Fatalf("Stats() = %+v", st)
	}
}

// TestDataFlow writes and reads back through every combination of
// immediate data, unsolicited data, R2T sizes and digests, and checks the
// target's data PDUs fit the negotiated limits.
func TestDataFlow(t *testing.T) {
	type tc struct {
		cfg     Config
		op      []pdu.KV
		maxRecv int
	}
	var cases []tc
	for _, imm := range []bool{false, true} {
		for _, r2t := range []bool{false, true} {
			for _, dig := range []string{"None", "CRC32C"} {
				cases = append(cases, tc{
					cfg: Config{ImmediateData: imm, InitialR2T: r2t, MaxBurstLength: 16384, FirstBurstLength: 8192,
						MaxOutstandingR2T: 2, MaxRecvDataSegmentLength: 4096},
					op: []pdu.KV{{Key: "InitialR2T", Value: "No"}, {Key: "ImmediateData", Value: "Yes"},
						{Key: "MaxOutstandingR2T", Value: "4"}, {Key: "HeaderDigest", Value: dig},
						{Key: "DataDigest", Value: dig}},
					maxRecv: 2048,
				})
			}
		}
	}
	cases = append(cases, tc{cfg: Config{SeparateReadStatus: true}, maxRecv: 65536},
		tc{cfg: Config{ImmediateData: true}, op: []pdu.KV{{Key: "ImmediateData", Value: "No"}}, maxRecv: 512})
	for n, c := range cases {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			tg := newTarget(t, c.cfg)
			i := dial(t, tg)
			i.maxRecv = c.maxRecv
			i.login(loginOpts{op: c.op})
			p := tg.Sessions()[0].Params
			if p.ImmediateData != (c.cfg.ImmediateData && i.paramBool("ImmediateData", true)) ||
				p.InitialR2T != i.paramBool("InitialR2T", true) {
				t.Fatalf("target params %+v, initiator saw %v", p, i.negotiated)
			}
			data := pattern(100<<10, byte(n))
			w := i.write(0, 8, data)
			if want := (len(data) - p.FirstBurstLength) / p.MaxBurstLength; !p.InitialR2T && w.r2ts < want {
				t.Errorf("%d R2Ts, want at least %d", w.r2ts, want)
			}
			r := i.read(0, 8, len(data)/BlockSize)
			if !bytes.Equal(r.data, data) {
				t.Fatal("read data differs")
			}
			if r.inStatus == c.cfg.SeparateReadStatus {
				t.Errorf("status in Data-In: %v, SeparateReadStatus %v", r.inStatus, c.cfg.SeparateReadStatus)
			}
			if min := (len(data) + c.maxRecv - 1) / c.maxRecv; r.dataIns < min {
				t.Errorf("%d Data-In, want at least %d", r.dataIns, min)
			}
			i.nop([]byte("ping"))
			if lr := i.logoutResp(pdu.LogoutCloseSession, 0); lr.Response != 0 {
				t.Fatalf("logout: %+v", lr)
			}
			i.expectClosed(false)
		})
	}
}

func TestPipe(t *testing.T) {
	tg := newTarget(t, Config{LUNs: []int64{1 << 20}})
	i := newIni(t, tg.Pipe())
	i.login(loginOpts{})
	data := pattern(4096, 3)
	i.write(0, 0, data)
	if got := i.read(0, 0, 8); !bytes.Equal(got.data, data) {
		t.Fatal("read over a pipe differs")
	}
	if lr := i.logoutResp(pdu.LogoutCloseSession, 0); lr.Response != 0 {
		t.Fatalf("logout: %+v", lr)
	}
	i.expectClosed(false)
}
