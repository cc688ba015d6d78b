package session

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/pdu"
)

// A write already partly sent (its immediate data went out) that fails
// because an unrelated PDU ended the connection says its outcome is unknown,
// and still names the PDU that was wrong.
func TestOutcomeUnknownAfterFatalPDU(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(f *faketarget.Target)
	}{
		{"unsolicited Logout Response", func(f *faketarget.Target) {
			f.Send(&pdu.LogoutResponse{ITT: 0x7777, SeqNums: f.Seq(true)}, nil)
		}},
		{"unknown opcode", func(f *faketarget.Target) {
			b := f.Wire(&pdu.NOPIn{ITT: pdu.ReservedTag, TTT: pdu.ReservedTag, SeqNums: f.Seq(false)}, nil)
			b[0] = 0x1c // no target opcode
			f.SendRaw(b)
		}},
		{"NOP-In announcing 16 MiB", func(f *faketarget.Target) {
			b := f.Wire(&pdu.NOPIn{ITT: pdu.ReservedTag, TTT: pdu.ReservedTag, SeqNums: f.Seq(false)}, nil)
			b[5], b[6], b[7] = 0xff, 0xff, 0xff
			f.SendRaw(b)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			p := DefaultParams()
			p.InitialR2T, p.ImmediateData = true, true
			cfg.Params = &p
			s, f := fakeSession(t, cfg, faketarget.Login{})
			ch := goExecute(context.Background(), s, writeCmd(pattern(16384, 3)))
			x := f.Expect(pdu.OpSCSICommand)
			if len(x.Data) == 0 {
				t.Fatalf("the write carried no immediate data: the test needs it partly sent")
			}
			tc.send(f)
			r := waitExec(t, ch)
			var pe *pdu.ProtocolError
			if !errors.Is(r.err, ErrOutcomeUnknown) || !errors.As(r.err, &pe) {
				t.Fatalf("write: %v (%T), want ErrOutcomeUnknown wrapping the *pdu.ProtocolError", r.err, r.err)
			}
		})
	}
}

// A target that says GOOD to a write it did not take in full (InitialR2T:
// no R2T at all, or one for half the data) does not get a write reported
// done; one that owns up to the residual does.
func TestWriteShortOfData(t *testing.T) {
	const n = 8192
	for _, tc := range []struct {
		name  string
		r2ts  []uint32 // lengths asked for, from offset 0 on
		resid uint32   // underflow residual the status reports
		ok    bool
	}{
		{"GOOD with no R2T", nil, 0, false},
		{"GOOD after half", []uint32{n / 2}, 0, false},
		{"GOOD after half, residual half", []uint32{n / 2}, n / 2, true},
		{"GOOD after all in two", []uint32{n / 2, n / 2}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			p := DefaultParams()
			p.InitialR2T, p.ImmediateData = true, false
			cfg.Params = &p
			s, f := fakeSession(t, cfg, faketarget.Login{})
			ch := goExecute(context.Background(), s, writeCmd(pattern(n, 1)))
			x := f.Expect(pdu.OpSCSICommand)
			itt := x.PDU.(*pdu.SCSICommand).ITT
			off := uint32(0)
			for i, l := range tc.r2ts {
				f.MustSend(&pdu.R2T{ITT: itt, TTT: uint32(10 + i), R2TSN: uint32(i), BufferOffset: off, DesiredDataTransferLength: l, SeqNums: f.Seq(false)}, nil)
				for got := uint32(0); got < l; {
					d := f.Expect(pdu.OpSCSIDataOut)
					got += uint32(len(d.Data))
				}
				off += l
			}
			f.MustSend(&pdu.SCSIResponse{ITT: itt, SeqNums: f.Seq(true), Underflow: tc.resid > 0, ResidualCount: tc.resid}, nil)
			r := waitExec(t, ch)
			if tc.ok {
				if r.err != nil {
					t.Fatalf("write: %v, want success", r.err)
				}
				return
			}
			var se *ShortTransferError
			if !errors.As(r.err, &se) || !errors.Is(r.err, ErrOutcomeUnknown) || se.Done != int(off) || se.Want != n {
				t.Fatalf("write: %v, want a ShortTransferError of %d/%d bytes matching ErrOutcomeUnknown", r.err, off, n)
			}
		})
	}
}

// FailedCommands is exact under load: of many reads in flight, those the
// target completed with a Data-In carrying status are not counted failed
// when the logout ends the rest, however soon after their status it comes.
func TestLogoutFailedCountExact(t *testing.T) {
	for round := range 20 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			const inFlight, completed = 16, 9
			s, f := fakeSession(t, testConfig(), faketarget.Login{Window: 64})
			ctx := context.Background()
			chs := make([]<-chan execResult, inFlight)
			cmds := make([]faketarget.PDU, inFlight)
			for i := range chs {
				chs[i] = goExecute(ctx, s, readCmd(512))
				cmds[i] = f.Expect(pdu.OpSCSICommand)
			}
			for _, x := range cmds[:completed] {
				f.ReadData(x, make([]byte, 512))
			}
			lch := make(chan LogoutResult, 1)
			go func() { lch <- s.Conns()[0].Logout(ctx, LogoutOptions{Reason: pdu.LogoutCloseSession, Timeout: wait}) }()
			f.AnswerLogout(f.Expect(pdu.OpLogoutRequest), pdu.LogoutSuccess)
			f.Close()
			lr := <-lch
			ok, failed := 0, 0
			for _, ch := range chs {
				r := waitExec(t, ch)
				switch {
				case r.err == nil:
					ok++
				case errors.Is(r.err, ErrOutcomeUnknown):
					failed++
				default:
					t.Fatalf("read: %v, want success or outcome unknown", r.err)
				}
			}
			if !lr.OK() || ok != completed || failed != inFlight-completed || lr.Failed != failed {
				t.Fatalf("logout %+v: %d reads done, %d failed, logout counted %d failed; want %d, %d, %d",
					lr, ok, failed, lr.Failed, completed, inFlight-completed, inFlight-completed)
			}
		})
	}
}

// A SendTargets answer that says more follows without a tag for it, or
// keeps saying so with no text, ends the exchange with a protocol error
// after a bounded number of requests, rather than going on until the
// context ends.
func TestSendTargetsEndlessContinuation(t *testing.T) {
	for _, tc := range []struct {
		name string
		ttt  uint32
		max  int // Text Requests the initiator may send
	}{
		{"no tag", pdu.ReservedTag, 1},
		{"empty answers", 0x42, maxEmptyText + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.TargetName = ""
			s, f := fakeSession(t, cfg, faketarget.Login{})
			ch := make(chan error, 1)
			go func() {
				_, err := s.SendTargets(context.Background(), "All")
				ch <- err
			}()
			sent := 0
			for {
				select {
				case err := <-ch:
					var pe *pdu.ProtocolError
					if !errors.As(err, &pe) || pe.Op != pdu.OpTextResponse {
						t.Fatalf("SendTargets: %v, want a protocol error on the Text Response", err)
					}
					if sent != tc.max {
						t.Fatalf("%d Text Requests sent, want %d", sent, tc.max)
					}
					return
				case x := <-f.In():
					if x.PDU.Opcode() != pdu.OpTextRequest {
						continue
					}
					if sent++; sent > tc.max {
						t.Fatalf("Text Request %d: the exchange goes on", sent)
					}
					f.MustSend(&pdu.TextResponse{ITT: x.PDU.(*pdu.TextRequest).ITT, TTT: tc.ttt, SeqNums: f.Seq(true)}, nil)
				case <-time.After(wait):
					t.Fatalf("SendTargets did not end after %d requests", sent)
				}
			}
		})
	}
}

// The in-flight policies of a logout, counted exactly: drain lets what the
// target completes complete, abort ends what the target confirms aborted
// (ABORT TASK SET per LUN), fail ends everything at once; the rest fails
// with its outcome unknown.
func TestLogoutInFlightPolicies(t *testing.T) {
	type want struct{ completed, aborted, unknown int }
	for _, tc := range []struct {
		name   string
		policy InFlightPolicy
		// setRefused: the target refuses ABORT TASK SET on LUN 1 too (as
		// LIO does) and confirms ABORT TASK of each of its commands.
		setRefused bool
		want       want
	}{
		{"drain", InFlightDrain, false, want{completed: 1, unknown: 3}},
		{"abort", InFlightAbort, false, want{aborted: 3, unknown: 1}},
		{"abort task by task", InFlightAbort, true, want{aborted: 3, unknown: 1}},
		{"fail", InFlightFail, false, want{unknown: 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, f := fakeSession(t, testConfig(), faketarget.Login{})
			ctx := context.Background()
			// Three reads on LUN 1, one on LUN 2.
			var chs []<-chan execResult
			var cmds []faketarget.PDU
			for i := range 4 {
				cmd := readCmd(512)
				if i == 3 {
					cmd.LUN = 2
				}
				chs = append(chs, goExecute(ctx, s, cmd))
				cmds = append(cmds, f.Expect(pdu.OpSCSICommand))
			}
			results := make([]execResult, len(chs))
			lch := make(chan LogoutResult, 1)
			go func() {
				lch <- s.Conns()[0].Logout(ctx, LogoutOptions{Reason: pdu.LogoutCloseSession, InFlight: tc.policy,
					DrainTimeout: 300 * time.Millisecond, Timeout: wait})
			}()
			switch tc.policy {
			case InFlightDrain:
				// One completes during the drain (once the logout has
				// begun: it counts the commands running then); the rest
				// is still running when the request goes out.
				c := s.Conns()[0]
				for deadline := time.Now().Add(wait); c.state() != connLoggingOut; time.Sleep(time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("the logout did not begin: connection %v", c.state())
					}
				}
				f.ReadData(cmds[0], make([]byte, 512))
			case InFlightAbort:
				// ABORT TASK SET on each LUN; LUN 2's is rejected, and
				// ABORT TASK of its one command finds no task. With
				// setRefused LUN 1's is refused too, and ABORT TASK of
				// each of its three commands is confirmed.
				sets, tasks := 0, map[pdu.LUN]int{}
				for sets < 2 || tasks[pdu.MakeLUN(2)] < 1 || tc.setRefused && tasks[pdu.MakeLUN(1)] < 3 {
					r := f.Expect(pdu.OpTaskMgmtRequest).PDU.(*pdu.TaskMgmtRequest)
					resp := pdu.TMFComplete
					switch {
					case r.Function == pdu.TMFAbortTaskSet:
						sets++
						if r.LUN == pdu.MakeLUN(2) {
							resp = pdu.TMFRejected
						} else if tc.setRefused {
							resp = pdu.TMFNotSupported
						}
					case r.Function == pdu.TMFAbortTask:
						tasks[r.LUN]++
						if r.LUN == pdu.MakeLUN(2) {
							resp = pdu.TMFNoSuchTask
						}
					default:
						t.Fatalf("TMF %v, want ABORT TASK SET or ABORT TASK", r.Function)
					}
					f.MustSend(&pdu.TaskMgmtResponse{Response: resp, ITT: r.ITT, SeqNums: f.Seq(true)}, nil)
				}
				if sets != 2 || !tc.setRefused && tasks[pdu.MakeLUN(1)] != 0 {
					t.Fatalf("%d ABORT TASK SET, ABORT TASK per LUN %v", sets, tasks)
				}
			case InFlightFail:
				// Every command has ended before the request is answered.
				for i, ch := range chs {
					results[i] = waitExec(t, ch)
					if !errors.Is(results[i].err, ErrOutcomeUnknown) {
						t.Fatalf("read under policy fail: %v, want outcome unknown", results[i].err)
					}
				}
			}
			f.AnswerLogout(f.Expect(pdu.OpLogoutRequest), pdu.LogoutSuccess)
			f.Close()
			lr := <-lch
			got := want{lr.Completed, lr.Aborted, lr.Unknown}
			if !lr.OK() || got != tc.want || lr.Failed != lr.Unknown {
				t.Fatalf("logout %+v: counts %+v, want %+v", lr, got, tc.want)
			}
			aborted := 0
			for i, ch := range chs {
				if tc.policy != InFlightFail {
					results[i] = waitExec(t, ch)
				}
				if errors.Is(results[i].err, ErrAborted) {
					aborted++
				}
			}
			if aborted != tc.want.aborted {
				t.Errorf("%d reads ended with ErrAborted, want %d", aborted, tc.want.aborted)
			}
		})
	}
}
