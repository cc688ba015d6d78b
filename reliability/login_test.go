package reliability

// Fault matrix, login rows (docs/RELIABILITY.md).

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

// securityOK answers the security stage with AuthMethod=None and returns the
// next request.
func securityOK(f *faketarget.Target, tsih uint16) (*pdu.LoginRequest, error) {
	req, _, err := f.ReadLogin()
	if err != nil {
		return nil, err
	}
	if err := f.AnswerLogin(req, pdu.LoginResponse{Transit: true, NSG: pdu.StageOperational, TSIH: tsih}, faketarget.Text("AuthMethod=None")); err != nil {
		return nil, err
	}
	req, _, err = f.ReadLogin()
	return req, err
}

func asNegotiationError(t *testing.T, err error, contains string) *session.NegotiationError {
	t.Helper()
	var ne *session.NegotiationError
	if !errors.As(err, &ne) {
		t.Fatalf("error %v (%T): want a *session.NegotiationError", err, err)
	}
	if !strings.Contains(err.Error(), contains) {
		t.Fatalf("error %q does not say %q", err, contains)
	}
	return ne
}

// Login response with another ISID → *pdu.ProtocolError (ISID), no session.
func TestFaultLoginISIDChanged(t *testing.T) {
	err := fakeLoginErr(t, testConfig(), func(f *faketarget.Target) error {
		req, _, err := f.ReadLogin()
		if err != nil {
			return err
		}
		isid := req.ISID
		isid[5] ^= 0xff
		return f.AnswerLogin(req, pdu.LoginResponse{Transit: true, NSG: pdu.StageOperational, ISID: isid}, faketarget.Text("AuthMethod=None"))
	})
	faketarget.AsProtocolError(t, err, pdu.OpLoginResponse, "ISID")
}

// A leading login whose TSIH changes between responses → *pdu.ProtocolError
// (TSIH), no session.
func TestFaultLoginTSIHChanged(t *testing.T) {
	err := fakeLoginErr(t, testConfig(), func(f *faketarget.Target) error {
		req, err := securityOK(f, 0x11)
		if err != nil {
			return err
		}
		return f.AnswerLogin(req, pdu.LoginResponse{Transit: true, NSG: pdu.StageFullFeature, TSIH: 0x22}, nil)
	})
	pe := faketarget.AsProtocolError(t, err, pdu.OpLoginResponse, "TSIH")
	if pe.Value != 0x22 {
		t.Errorf("TSIH %#x in the error, want 0x22", pe.Value)
	}
}

// A connection added to a session (MC/S) answered with another TSIH →
// AddConnection fails with *pdu.ProtocolError (TSIH); the session keeps its
// first connection and its I/O.
func TestFaultLoginTSIHChangedOnNewConnection(t *testing.T) {
	s, srv := fakeSessionServer(t, testConfig(), faketarget.Login{TSIH: 0x77})
	srv.SetLogin(faketarget.Login{TSIH: 0x77, AddedTSIH: 0x78})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, err := s.AddConnection(ctx)
	faketarget.AsProtocolError(t, err, pdu.OpLoginResponse, "TSIH")
	if n := len(s.Conns()); n != 1 {
		t.Fatalf("%d connections after the refused one, want 1", n)
	}
	f := srv.Targets()[0]
	ch := goExecute(ctx, s, readCmd(512))
	f.ReadData(f.Expect(pdu.OpSCSICommand), pattern(512, 1))
	if r := waitExec(t, ch); r.err != nil {
		t.Fatalf("I/O after the refused connection: %v", r.err)
	}
}

// A key without '=' → *session.NegotiationError, no session.
func TestFaultLoginKeyWithoutEquals(t *testing.T) {
	err := fakeLoginErr(t, testConfig(), func(f *faketarget.Target) error {
		req, _, err := f.ReadLogin()
		if err != nil {
			return err
		}
		return f.AnswerLogin(req, pdu.LoginResponse{Transit: true, NSG: pdu.StageOperational}, faketarget.Text("AuthMethod=None", "TargetPortalGroupTag"))
	})
	asNegotiationError(t, err, "no '='")
}

// The same key twice → *session.NegotiationError, no session.
func TestFaultLoginKeyRepeated(t *testing.T) {
	err := fakeLoginErr(t, testConfig(), func(f *faketarget.Target) error {
		req, err := securityOK(f, 0)
		if err != nil {
			return err
		}
		return f.AnswerLogin(req, pdu.LoginResponse{Transit: true, NSG: pdu.StageFullFeature, TSIH: 5},
			faketarget.Text("MaxBurstLength=65536", "HeaderDigest=None", "MaxBurstLength=65536"))
	})
	asNegotiationError(t, err, "repeated")
}

// 10,000 keys over Continue PDUs → *session.NegotiationError once the login
// text passes 64 KiB, with no more than that buffered.
func TestFaultLogin10000Keys(t *testing.T) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	err := fakeLoginErr(t, testConfig(), func(f *faketarget.Target) error {
		var all []byte
		for i := 0; i < 10000; i++ {
			all = fmt.Appendf(all, "X-k%d=%d\x00", i, i)
		}
		for len(all) > 0 {
			req, _, err := f.ReadLogin()
			if err != nil {
				return nil // the initiator gave up: what this row expects
			}
			n := min(len(all), pdu.DefaultMaxRecvDataSegmentLength)
			more := n < len(all)
			if err := f.AnswerLogin(req, pdu.LoginResponse{Continue: more, Transit: !more, NSG: pdu.StageOperational}, all[:n]); err != nil {
				return nil
			}
			all = all[n:]
		}
		return nil
	})
	runtime.ReadMemStats(&after)
	asNegotiationError(t, err, "64 KiB")
	if d := time.Since(start); d > wait {
		t.Errorf("login took %v", d)
	}
	// The target's own text is ~120 KB; the initiator must not have
	// gathered (or parsed into pairs) much more than its 64 KiB.
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 4<<20 {
		t.Errorf("%d bytes allocated during the login", grew)
	}
}

// A login response with DataSegmentLength 16 MiB → *pdu.ProtocolError
// (DataSegmentLength), refused before anything is allocated.
func TestFaultLoginDataSegment16MiB(t *testing.T) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	err := fakeLoginErr(t, testConfig(), func(f *faketarget.Target) error {
		req, _, err := f.ReadLogin()
		if err != nil {
			return err
		}
		var h pdu.BHS
		(&pdu.LoginResponse{Transit: true, CSG: req.CSG, NSG: pdu.StageOperational, ISID: req.ISID, ITT: req.ITT}).MarshalBHS(&h)
		h.SetLengths(0, pdu.MaxDataSegmentLength)
		return f.SendRaw(h[:])
	})
	runtime.ReadMemStats(&after)
	faketarget.AsProtocolError(t, err, pdu.OpLoginResponse, "DataSegmentLength")
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 4<<20 {
		t.Errorf("%d bytes allocated for a refused 16 MiB segment", grew)
	}
}

// A PDU other than a Login Response during login (SPDK's bug) →
// *pdu.ProtocolError (Opcode), no session.
func TestFaultLoginNonLoginPDU(t *testing.T) {
	err := fakeLoginErr(t, testConfig(), func(f *faketarget.Target) error {
		if _, _, err := f.ReadLogin(); err != nil {
			return err
		}
		return f.Send(&pdu.NOPIn{ITT: 0xffffffff, TTT: 0xffffffff}, nil)
	})
	faketarget.AsProtocolError(t, err, pdu.OpNOPIn, "Opcode")
}

// A target that redirects every login → after Config.MaxRedirects, a
// *session.LoginError with the redirect status (a typed error, not the
// package's private redirect).
func TestFaultLoginRedirectLoop(t *testing.T) {
	cfg := testConfig()
	cfg.MaxRedirects = 3
	err := fakeLoginErr(t, cfg, func(f *faketarget.Target) error {
		req, _, err := f.ReadLogin()
		if err != nil {
			return err
		}
		return f.AnswerLogin(req, pdu.LoginResponse{StatusClass: 1, StatusDetail: 1}, faketarget.Text("TargetAddress=127.0.0.2:3260,1"))
	})
	var le *session.LoginError
	if !errors.As(err, &le) || le.Status != pdu.LoginStatus(0x0101) {
		t.Fatalf("error %v (%T): want a *session.LoginError with status 0x0101", err, err)
	}
	if !strings.Contains(err.Error(), "127.0.0.2:3260") {
		t.Errorf("error %q does not name the last address", err)
	}
}

// A target that accepts the connection and says nothing → the login ends
// at LoginTimeout with context.DeadlineExceeded.
func TestFaultLoginSilentTarget(t *testing.T) {
	cfg := testConfig()
	cfg.LoginTimeout = 200 * time.Millisecond
	start := time.Now()
	err := fakeLoginErr(t, cfg, func(f *faketarget.Target) error {
		f.ReadLogin()
		f.ReadLogin() // until the initiator gives up
		return nil
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > wait/2 {
		t.Errorf("login gave up after %v, LoginTimeout %v", d, cfg.LoginTimeout)
	}
}
