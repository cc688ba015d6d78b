package session

// Audit 1 of issue 12: every request the initiator sends in full feature
// phase, answered with every kind of target PDU carrying its tag, with a
// Reject of it, with silence, a FIN and an RST. The right kind of answer is
// the control row; no other row may be taken for success, make the
// initiator send again and again, or wait without a bound. The table of
// docs/RELIABILITY.md ("Every request, every wrong answer") lists the rows.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/pdu"
)

// opTimeout is the deadline each audited operation gets (its context, or a
// logout's Timeout).
const opTimeout = time.Second

// rowBound bounds each row: the operation must have returned by then.
const rowBound = 5 * time.Second

// slack is how long past its deadline an operation may take to return.
const slack = 2 * time.Second

// tcpSession logs a session in to a fake target over loopback TCP, where
// a target can reset the connection and a command reads its own response;
// the test's cleanup closes both.
func tcpSession(t testing.TB, cfg Config, o faketarget.Login) (*Session, *faketarget.Target, *faketarget.TCPServer) {
	t.Helper()
	srv := faketarget.NewTCPServer(t, fakeTiming, o)
	s, f := fakeLogin(t, srv, cfg)
	return s, f, srv
}

// outcome is how an audited operation ended.
type outcome struct {
	ok   bool  // the operation reported success
	err  error // its error
	what string
}

// request is one kind of request the initiator sends.
type request struct {
	name string
	// config adjusts the session's Config.
	config func(*Config)
	// run runs the operation and reports how it ended.
	run func(ctx context.Context, s *Session) outcome
	// prelude answers a PDU that comes before the audited one (the R2T
	// a write's command gets); it reports whether it took x.
	prelude func(f *faketarget.Target, x faketarget.PDU) bool
	// is reports whether x is the audited request.
	is func(x faketarget.PDU) bool
	// right are the opcodes that answer the request: the control rows.
	right []pdu.Opcode
	// skip are opcodes whose row another test covers, with why.
	skip map[pdu.Opcode]string
	// answer sends the right answer to x (the control row).
	answer func(f *faketarget.Target, x faketarget.PDU)
	// maxRequests bounds how many requests the target may see: more is a
	// spin.
	maxRequests int
	// ping: the request is the keepalive's NOP-Out; the outcome is
	// whether the connection stayed up.
	ping bool
}

// What a row expects.
type expect int

const (
	expOK      expect = iota // the control: success
	expProto                 // failure; the connection ends with a *pdu.ProtocolError
	expReject                // failure with a *RejectError (a ping: the connection kept)
	expFail                  // failure, whatever the error
	expTimeout               // failure at the operation's deadline
	expReset                 // failure with ErrConnReset
)

func (e expect) String() string {
	return [...]string{"success", "protocol error, dropped", "*RejectError", "failure", "deadline", "ErrConnReset"}[e]
}

// answer is one way the target answers a request.
type answer struct {
	name string
	op   pdu.Opcode // the opcode sent; 0 for silence, FIN and RST
	// send answers x; first is false for requests after the first.
	send func(f *faketarget.Target, x faketarget.PDU, first bool)
	exp  expect // for an opcode that does not answer the request
}

func rawHeader(op pdu.Opcode, itt uint32) []byte {
	var h pdu.BHS
	h[0], h[1] = byte(op), 0x80
	binary.BigEndian.PutUint32(h[16:], itt)
	return h[:]
}

// wrongAnswers are every target opcode with the request's tag, a Reject of
// it, and the three ways of saying nothing.
func wrongAnswers() []answer {
	itt := func(x faketarget.PDU) uint32 { return x.BHS.ITT() }
	return []answer{
		{"NOP-In", pdu.OpNOPIn, func(f *faketarget.Target, x faketarget.PDU, _ bool) {
			f.Send(&pdu.NOPIn{ITT: itt(x), TTT: 0xffffffff, SeqNums: f.Seq(false)}, nil)
		}, expProto},
		{"SCSI Response GOOD", pdu.OpSCSIResponse, func(f *faketarget.Target, x faketarget.PDU, _ bool) {
			f.Send(&pdu.SCSIResponse{ITT: itt(x), Status: pdu.StatusGood, SeqNums: f.Seq(true)}, nil)
		}, expProto},
		{"TMF Response complete", pdu.OpTaskMgmtResponse, func(f *faketarget.Target, x faketarget.PDU, _ bool) {
			f.Send(&pdu.TaskMgmtResponse{Response: pdu.TMFComplete, ITT: itt(x), SeqNums: f.Seq(true)}, nil)
		}, expProto},
		{"Login Response", pdu.OpLoginResponse, func(f *faketarget.Target, x faketarget.PDU, _ bool) {
			f.Send(&pdu.LoginResponse{Transit: true, CSG: pdu.StageOperational, NSG: pdu.StageFullFeature, TSIH: 0x1234,
				ITT: itt(x), SeqNums: f.Seq(true)}, nil)
		}, expProto},
		{"Text Response final", pdu.OpTextResponse, func(f *faketarget.Target, x faketarget.PDU, _ bool) {
			f.Send(&pdu.TextResponse{Final: true, ITT: itt(x), TTT: 0xffffffff, SeqNums: f.Seq(true)}, nil)
		}, expProto},
		{"Data-In GOOD no data", pdu.OpSCSIDataIn, func(f *faketarget.Target, x faketarget.PDU, _ bool) {
			f.Send(&pdu.DataIn{Final: true, HasStatus: true, Status: pdu.StatusGood, ITT: itt(x), TTT: 0xffffffff, SeqNums: f.Seq(true)}, nil)
		}, expProto},
		{"Logout Response success", pdu.OpLogoutResponse, func(f *faketarget.Target, x faketarget.PDU, _ bool) {
			f.Send(&pdu.LogoutResponse{Response: pdu.LogoutSuccess, ITT: itt(x), SeqNums: f.Seq(true)}, nil)
		}, expProto},
		{"R2T", pdu.OpR2T, func(f *faketarget.Target, x faketarget.PDU, _ bool) {
			f.Send(&pdu.R2T{ITT: itt(x), TTT: 0x77, SeqNums: f.Seq(false), DesiredDataTransferLength: 512}, nil)
		}, expProto},
		{"Async vendor event", pdu.OpAsyncMessage, func(f *faketarget.Target, x faketarget.PDU, _ bool) {
			f.Send(&pdu.AsyncMessage{ITT: itt(x), AsyncEvent: pdu.AsyncVendorSpecific, SeqNums: f.Seq(true)}, nil)
		}, expFail},
		{"undefined opcode 0x3e", 0x3e, func(f *faketarget.Target, x faketarget.PDU, _ bool) {
			f.SendRaw(rawHeader(0x3e, itt(x)))
		}, expProto},
		{"initiator opcode 0x01", pdu.OpSCSICommand, func(f *faketarget.Target, x faketarget.PDU, _ bool) {
			f.SendRaw(rawHeader(pdu.OpSCSICommand, itt(x)))
		}, expProto},
		{"Reject of it", 0, func(f *faketarget.Target, x faketarget.PDU, _ bool) {
			f.Send(&pdu.Reject{Reason: pdu.RejectInvalidPDUField, ITT: 0xffffffff, SeqNums: f.Seq(true)}, x.BHS[:])
		}, expReject},
		{"silence", 0, func(f *faketarget.Target, x faketarget.PDU, _ bool) {}, expTimeout},
		{"FIN", 0, func(f *faketarget.Target, x faketarget.PDU, first bool) {
			if first {
				f.Close()
			}
		}, expReset},
		{"RST", 0, func(f *faketarget.Target, x faketarget.PDU, first bool) {
			if first {
				f.Reset()
			}
		}, expReset},
	}
}

const sendTargetsText = "TargetName=iqn.2026-01.test:target\x00TargetAddress=127.0.0.1:3260,1\x00"

func scsiOutcome(res *Result, err error) outcome {
	return outcome{ok: err == nil, err: err, what: fmt.Sprintf("Result %+v", res)}
}

// requests are the requests of full feature phase.
func requests() []request {
	good := func(f *faketarget.Target, x faketarget.PDU) {
		f.Send(&pdu.SCSIResponse{ITT: x.BHS.ITT(), Status: pdu.StatusGood, SeqNums: f.Seq(true)}, nil)
	}
	isOp := func(op pdu.Opcode) func(x faketarget.PDU) bool {
		return func(x faketarget.PDU) bool { return x.Opcode() == op }
	}
	r2tCovered := map[pdu.Opcode]string{pdu.OpR2T: "an R2T is the write's own intermediate answer (TestWriteR2TSequence, TestR2THostile)"}
	return []request{
		{
			name: "SendTargets",
			run: func(ctx context.Context, s *Session) outcome {
				// A final Text Response without text is an answer: no
				// targets.
				ts, err := s.SendTargets(ctx, "All")
				return outcome{ok: err == nil, err: err, what: fmt.Sprintf("targets %+v", ts)}
			},
			is:    isOp(pdu.OpTextRequest),
			right: []pdu.Opcode{pdu.OpTextResponse},
			answer: func(f *faketarget.Target, x faketarget.PDU) {
				f.Send(&pdu.TextResponse{Final: true, ITT: x.BHS.ITT(), TTT: 0xffffffff, SeqNums: f.Seq(true)}, []byte(sendTargetsText))
			},
			maxRequests: 2,
		},
		{
			name: "SCSI read",
			run: func(ctx context.Context, s *Session) outcome {
				return scsiOutcome(s.Execute(ctx, readCmd(512)))
			},
			is: isOp(pdu.OpSCSICommand),
			// Status alone is a read's answer too (no data: N 0).
			right:       []pdu.Opcode{pdu.OpSCSIDataIn, pdu.OpSCSIResponse},
			answer:      func(f *faketarget.Target, x faketarget.PDU) { f.ReadData(x, pattern(512, 1)) },
			maxRequests: 1,
		},
		{
			name: "SCSI write",
			run: func(ctx context.Context, s *Session) outcome {
				return scsiOutcome(s.Execute(ctx, writeCmd(pattern(512, 2))))
			},
			is:          isOp(pdu.OpSCSICommand),
			right:       []pdu.Opcode{pdu.OpSCSIResponse},
			skip:        r2tCovered,
			answer:      good,
			maxRequests: 1,
		},
		{
			// InitialR2T=Yes, no immediate data: the command, an R2T for
			// all of it, the Data-Out; the answer comes after the Data-Out.
			name: "SCSI write Data-Out",
			config: func(cfg *Config) {
				p := DefaultParams()
				p.InitialR2T, p.ImmediateData = true, false
				cfg.Params = &p
			},
			run: func(ctx context.Context, s *Session) outcome {
				return scsiOutcome(s.Execute(ctx, writeCmd(pattern(4096, 3))))
			},
			prelude: func(f *faketarget.Target, x faketarget.PDU) bool {
				if x.Opcode() != pdu.OpSCSICommand {
					return false
				}
				f.Send(&pdu.R2T{ITT: x.BHS.ITT(), TTT: 0x51, SeqNums: f.Seq(false), DesiredDataTransferLength: 4096}, nil)
				return true
			},
			is: func(x faketarget.PDU) bool {
				return x.Opcode() == pdu.OpSCSIDataOut && x.BHS.Final()
			},
			right:       []pdu.Opcode{pdu.OpSCSIResponse},
			skip:        r2tCovered,
			answer:      good,
			maxRequests: 1,
		},
		{
			name:   "NOP-Out ping",
			config: func(cfg *Config) { cfg.NOPInterval, cfg.NOPTimeout = 200*time.Millisecond, 500*time.Millisecond },
			run: func(ctx context.Context, s *Session) outcome {
				c := s.Conns()[0]
				window := time.NewTimer(2 * time.Second)
				defer window.Stop()
				select {
				case <-c.Done():
					return outcome{err: c.Err(), what: "connection ended"}
				case <-window.C:
					return outcome{ok: true, what: "connection kept for 2s"}
				}
			},
			is: func(x faketarget.PDU) bool {
				return x.Opcode() == pdu.OpNOPOut && x.BHS.ITT() != 0xffffffff
			},
			right: []pdu.Opcode{pdu.OpNOPIn},
			answer: func(f *faketarget.Target, x faketarget.PDU) {
				f.Send(&pdu.NOPIn{ITT: x.BHS.ITT(), TTT: 0xffffffff, SeqNums: f.Seq(false)}, nil)
			},
			// One ping per NOPInterval at most in the 2 s.
			maxRequests: 12,
			ping:        true,
		},
		{
			name: "Task Management",
			run: func(ctx context.Context, s *Session) outcome {
				resp, err := s.TaskManagement(ctx, pdu.TMFLogicalUnitReset, 1, 0)
				return outcome{ok: err == nil && resp == pdu.TMFComplete, err: err, what: fmt.Sprintf("response %d", resp)}
			},
			is: func(x faketarget.PDU) bool {
				return x.Opcode() == pdu.OpTaskMgmtRequest && x.PDU.(*pdu.TaskMgmtRequest).Function == pdu.TMFLogicalUnitReset
			},
			right: []pdu.Opcode{pdu.OpTaskMgmtResponse},
			answer: func(f *faketarget.Target, x faketarget.PDU) {
				f.Send(&pdu.TaskMgmtResponse{Response: pdu.TMFComplete, ITT: x.BHS.ITT(), SeqNums: f.Seq(true)}, nil)
			},
			maxRequests: 1,
		},
		{
			name: "Logout",
			run: func(ctx context.Context, s *Session) outcome {
				res, err := s.Logout(ctx, LogoutOptions{Timeout: opTimeout})
				if err == nil && !res.OK() {
					err = fmt.Errorf("iscsi test: Logout returned a result that is not OK without an error: %+v", res)
				}
				return outcome{ok: res.OK(), err: err, what: fmt.Sprintf("LogoutResult %+v", res)}
			},
			is:          isOp(pdu.OpLogoutRequest),
			right:       []pdu.Opcode{pdu.OpLogoutResponse},
			answer:      func(f *faketarget.Target, x faketarget.PDU) { f.AnswerLogout(x, pdu.LogoutSuccess) },
			maxRequests: 1,
		},
	}
}

// expectFor is what the row of req answered by a should come to.
func expectFor(req request, a answer) (expect, string) {
	if a.op != 0 {
		if why, ok := req.skip[a.op]; ok {
			return 0, why
		}
		for _, op := range req.right {
			if op == a.op {
				return expOK, ""
			}
		}
	}
	e := a.exp
	if req.ping && e == expReject {
		// A ping the target rejects was answered: it is alive.
		e = expOK
	}
	return e, ""
}

// rowResult is what one row saw.
type rowResult struct {
	out      outcome
	requests int
	took     time.Duration
	connErr  error
}

// runRow runs req against a target answering it with send, under
// rowBound.
func runRow(t *testing.T, req request, send func(f *faketarget.Target, x faketarget.PDU, first bool), script func(f *faketarget.Target)) rowResult {
	t.Helper()
	cfg := testConfig()
	if req.config != nil {
		req.config(&cfg)
	}
	s, f, _ := tcpSession(t, cfg, faketarget.Login{})
	c := s.Conns()[0]
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	done := make(chan outcome, 1)
	start := time.Now()
	go func() { done <- req.run(ctx, s) }()
	bound := time.NewTimer(rowBound)
	defer bound.Stop()
	var r rowResult
	in := f.In()
	for {
		select {
		case r.out = <-done:
			r.took = time.Since(start)
			r.connErr = c.Err()
			return r
		case <-bound.C:
			t.Fatalf("%s: the operation has not returned after %v", req.name, rowBound)
		case x, ok := <-in:
			if !ok {
				in = nil
				continue
			}
			if req.prelude != nil && req.prelude(f, x) {
				continue
			}
			if !req.is(x) {
				continue
			}
			r.requests++
			if r.requests > 100 {
				continue // a spin: stop feeding it, the count tells
			}
			if script != nil && r.requests == 1 {
				script(f)
			}
			send(f, x, r.requests == 1)
		}
	}
}

// checkRow checks a row's result against what it expects.
func checkRow(t *testing.T, req request, e expect, r rowResult) {
	t.Helper()
	if r.requests > req.maxRequests {
		t.Errorf("%d requests sent (at most %d): the initiator spins", r.requests, req.maxRequests)
	}
	if r.requests == 0 && !req.ping {
		t.Errorf("the target never saw the request")
	}
	if !req.ping && r.took > opTimeout+slack {
		t.Errorf("returned after %v, more than %v past its deadline", r.took, slack)
	}
	if e == expOK {
		if !r.out.ok || r.out.err != nil {
			t.Errorf("control row: want success, got %s, error %v", r.out.what, r.out.err)
		}
		return
	}
	if r.out.ok {
		t.Errorf("SUCCESS REPORTED for a wrong answer: %s (error %v)", r.out.what, r.out.err)
	}
	if r.out.err == nil {
		t.Errorf("no error: %s", r.out.what)
		return
	}
	switch e {
	case expProto:
		var pe *pdu.ProtocolError
		if !errors.As(r.out.err, &pe) && !errors.As(r.connErr, &pe) {
			t.Errorf("want a *pdu.ProtocolError ending the connection; the operation got %v, the connection %v", r.out.err, r.connErr)
		}
	case expReject:
		var rj *RejectError
		if !errors.As(r.out.err, &rj) {
			t.Errorf("want a *RejectError, got %v", r.out.err)
		}
	case expTimeout:
		if !errors.Is(r.out.err, context.DeadlineExceeded) && !errors.Is(r.out.err, ErrLogoutTimeout) && !errors.Is(r.out.err, ErrDeadPeer) {
			t.Errorf("want the deadline's error, got %v", r.out.err)
		}
	case expReset:
		if !errors.Is(r.out.err, ErrConnReset) {
			t.Errorf("want ErrConnReset, got %v", r.out.err)
		}
	}
}

// testAnswers runs the rows of one request: the right answer, then every
// wrong one.
func testAnswers(t *testing.T, name string) {
	var req request
	for _, r := range requests() {
		if r.name == name {
			req = r
		}
	}
	if req.run == nil {
		t.Fatalf("no request %q", name)
	}
	t.Run("right answer", func(t *testing.T) {
		t.Parallel()
		r := runRow(t, req, func(f *faketarget.Target, x faketarget.PDU, _ bool) { req.answer(f, x) }, nil)
		checkRow(t, req, expOK, r)
	})
	for _, a := range wrongAnswers() {
		t.Run(a.name, func(t *testing.T) {
			e, skip := expectFor(req, a)
			if skip != "" {
				t.Skip(skip)
			}
			t.Parallel()
			r := runRow(t, req, a.send, nil)
			t.Logf("%s answered by %s: %s, error %v; connection %v; %d requests; %v", req.name, a.name, r.out.what, r.out.err, r.connErr, r.requests, r.took)
			checkRow(t, req, e, r)
		})
	}
}

func TestAnswersSendTargets(t *testing.T)      { testAnswers(t, "SendTargets") }
func TestAnswersSCSIRead(t *testing.T)         { testAnswers(t, "SCSI read") }
func TestAnswersSCSIWrite(t *testing.T)        { testAnswers(t, "SCSI write") }
func TestAnswersSCSIWriteDataOut(t *testing.T) { testAnswers(t, "SCSI write Data-Out") }
func TestAnswersNOPOutPing(t *testing.T)       { testAnswers(t, "NOP-Out ping") }
func TestAnswersTaskManagement(t *testing.T)   { testAnswers(t, "Task Management") }
func TestAnswersLogout(t *testing.T)           { testAnswers(t, "Logout") }

// A write is done only once the target took all of its data: GOOD status
// before the Data-Out an R2T asked for, or with no R2T at all while
// InitialR2T=Yes left all the data to R2Ts, reports a write the target
// never got. It must not be success.
func TestWriteGoodBeforeAllData(t *testing.T) {
	tests := []struct {
		name string
		// r2ts are the R2Ts the target sends, each answered before GOOD.
		r2ts []uint32 // lengths from offset 0
	}{
		{"GOOD without any R2T", nil},
		{"GOOD after one R2T for half", []uint32{4096}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			p := DefaultParams()
			p.InitialR2T, p.ImmediateData = true, false
			cfg.Params = &p
			s, f, _ := tcpSession(t, cfg, faketarget.Login{})
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			defer cancel()
			start := time.Now()
			ch := goExecute(ctx, s, writeCmd(pattern(8192, 4)))
			x := f.Expect(pdu.OpSCSICommand)
			sent := 0
			for i, n := range tt.r2ts {
				f.MustSend(&pdu.R2T{ITT: x.BHS.ITT(), TTT: 0x60 + uint32(i), SeqNums: f.Seq(false), R2TSN: uint32(i),
					BufferOffset: uint32(sent), DesiredDataTransferLength: n}, nil)
				for got := 0; got < int(n); {
					d := f.Expect(pdu.OpSCSIDataOut)
					got += len(d.Data)
				}
				sent += int(n)
			}
			f.Good(x)
			r := waitExec(t, ch)
			if took := time.Since(start); took > opTimeout+slack {
				t.Errorf("returned after %v", took)
			}
			if r.err == nil {
				t.Errorf("SUCCESS REPORTED for a write of 8192 bytes of which the target asked for %d: %+v", sent, r.res)
			}
			t.Logf("Execute: %+v, %v", r.res, r.err)
		})
	}
}

// A Reject names the PDU it rejects by the header it carries: opcode, tag
// and CmdSN all have to be the request's. One that carries the request's
// tag with another opcode or another CmdSN rejects some other PDU (or none)
// and must not fail the request; the request's own answer, coming next,
// completes it (or, if the initiator takes the stray Reject as a protocol
// error, the connection ends with one).
func TestRejectMatchesWholeHeader(t *testing.T) {
	alter := []struct {
		name string
		edit func(h *pdu.BHS)
	}{
		{"another opcode", func(h *pdu.BHS) {
			op := pdu.OpSCSICommand
			if h.Opcode() == op {
				op = pdu.OpTextRequest
			}
			h[0] = h[0]&0x40 | byte(op)
		}},
		{"another CmdSN", func(h *pdu.BHS) {
			binary.BigEndian.PutUint32(h[24:], binary.BigEndian.Uint32(h[24:])+7)
		}},
	}
	for _, req := range requests() {
		if req.ping || req.prelude != nil {
			continue // no CmdSN in a Data-Out; a ping is covered by the table
		}
		for _, a := range alter {
			t.Run(req.name+"/"+a.name, func(t *testing.T) {
				t.Parallel()
				r := runRow(t, req, func(f *faketarget.Target, x faketarget.PDU, first bool) {
					h := x.BHS
					a.edit(&h)
					f.Send(&pdu.Reject{Reason: pdu.RejectInvalidPDUField, ITT: 0xffffffff, SeqNums: f.Seq(true)}, h[:])
					req.answer(f, x)
				}, nil)
				t.Logf("%s: %s, error %v; connection %v", req.name, r.out.what, r.out.err, r.connErr)
				var rj *RejectError
				if errors.As(r.out.err, &rj) {
					t.Fatalf("a Reject of %s taken as the request's: %v", rj.Op, r.out.err)
				}
				var pe *pdu.ProtocolError
				if !r.out.ok && !errors.As(r.out.err, &pe) && !errors.As(r.connErr, &pe) {
					t.Errorf("want success (the stray Reject ignored) or a *pdu.ProtocolError; got %s, error %v", r.out.what, r.out.err)
				}
				if r.took > opTimeout+slack {
					t.Errorf("returned after %v", r.took)
				}
			})
		}
	}
}
