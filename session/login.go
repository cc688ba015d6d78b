package session

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/goiscsi/iscsi/internal/sockio"
	"github.com/goiscsi/iscsi/pdu"
	"go.uber.org/zap"
)

// maxLoginText bounds the text of one login stage gathered over Continue PDUs.
const maxLoginText = 64 << 10

// connect dials the session's portal and logs one connection in, following
// redirects. leading is true for the first connection of a session.
//
// One Config.LoginTimeout bounds the whole login: its deadline is set once,
// here, and every hop (each redirect and the CHAP retry) dials, writes and
// reads against it, so targets redirecting to each other, or one that
// answers slowly or a byte at a time, cannot stretch the login past it.
func (s *Session) connect(ctx context.Context, cid uint16, leading bool) (*Conn, error) {
	if leading {
		if err := s.cfg.params().check(); err != nil {
			return nil, err
		}
	}
	maxRedirects := s.cfg.MaxRedirects
	if maxRedirects == 0 {
		maxRedirects = 4
	}
	timeout := s.cfg.loginTimeout()
	lctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	s.mu.Lock()
	addr := s.portal
	s.mu.Unlock()
	retried := false
	for redirects := 0; ; {
		at := &loginAttempt{}
		s.mu.Lock()
		at.avoidAlg = s.chapAvoid
		s.mu.Unlock()
		c, err := s.loginAt(lctx, addr, cid, leading, at)
		if err != nil && !isLoginFailure(err) {
			return nil, loginEnded(ctx, lctx, addr, timeout, redirects, err)
		}
		var rd *redirectError
		if errors.As(err, &rd) && redirects < maxRedirects {
			s.log.Debug("login redirected", zap.String("to", rd.addr), zap.Stringer("status", rd.status))
			redirects++
			addr = rd.addr
			if leading {
				s.mu.Lock() // Portal reads it while a recovery logs in
				s.portal = addr
				s.mu.Unlock()
			}
			continue
		}
		var le *LoginError
		if !retried && at.chosenAlg == CHAPSHA256 && errors.As(err, &le) && le.Status == pdu.LoginInitiatorError &&
			len(s.cfg.CHAP.algorithms()) > 1 {
			// tgtd (up to 1.0.85 at least) takes CHAP_A=7 for SHA-1 and
			// fails our SHA-256 response as malformed: try once more
			// without 7. The target could choose any algorithm we offer
			// anyway, so leaving one out weakens nothing.
			s.log.Debug("CHAP with SHA-256 failed as an initiator error; retrying without CHAP_A=7")
			retried = true
			s.mu.Lock()
			s.chapAvoid = CHAPSHA256
			s.mu.Unlock()
			continue
		}
		if errors.As(err, &rd) {
			// One redirect too many: a *LoginError with the target's
			// status, which callers can test for (redirectError is ours).
			return nil, fmt.Errorf("iscsi: login: gave up after %d redirects, the last to %s: %w", redirects, rd.addr, &LoginError{Status: rd.status})
		}
		return c, err
	}
}

// loginAttempt carries what one login attempt needs to know and tells.
type loginAttempt struct {
	avoidAlg  int // a CHAP algorithm not to offer
	chosenAlg int // the CHAP algorithm the target chose
}

type redirectError struct {
	addr   string
	status pdu.LoginStatus
}

func (e *redirectError) Error() string { return "iscsi: login redirected to " + e.addr }

// loginEnded is the error of a login that failed on something other than
// the target's word (a *LoginError, *NegotiationError or redirect): when
// its context had ended, that is the cause, and the error says so. ctx is
// the caller's context, lctx the login's (ctx bounded by LoginTimeout).
func loginEnded(ctx, lctx context.Context, addr string, timeout time.Duration, redirects int, err error) error {
	cerr := lctx.Err()
	if cerr == nil && errors.Is(err, os.ErrDeadlineExceeded) {
		// The connection's deadline is lctx's: it may fire a moment
		// before lctx reports it.
		cerr = context.DeadlineExceeded
	}
	hops := ""
	switch {
	case redirects == 1:
		hops = " over 1 redirect"
	case redirects > 1:
		hops = fmt.Sprintf(" over %d redirects", redirects)
	}
	switch {
	case cerr == nil:
		return err
	case errors.Is(cerr, context.DeadlineExceeded) && ctx.Err() == nil:
		return fmt.Errorf("iscsi: login to %s timed out: LoginTimeout %v elapsed%s: %w (%w)", addr, timeout, hops, cerr, err)
	case errors.Is(cerr, context.DeadlineExceeded):
		return fmt.Errorf("iscsi: login to %s timed out: the caller's deadline passed%s: %w (%w)", addr, hops, cerr, err)
	}
	return fmt.Errorf("iscsi: login to %s: %w (%w)", addr, cerr, err)
}

// loginAt dials addr and logs one connection in, within ctx, whose
// deadline bounds the dial and every read and write of the login.
func (s *Session) loginAt(ctx context.Context, addr string, cid uint16, leading bool, at *loginAttempt) (*Conn, error) {
	nc, err := s.cfg.dial(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("iscsi: connect to %s: %w", addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	// Canceling ctx interrupts the login's reads and writes. Once the login
	// is over the connection must not be touched: a cancel landing between
	// the last response and clearing the deadline would otherwise break the
	// connection just handed over.
	var dmu sync.Mutex
	loginOver := false
	stop := context.AfterFunc(ctx, func() {
		dmu.Lock()
		if !loginOver {
			nc.SetDeadline(time.Unix(1, 0))
		}
		dmu.Unlock()
	})
	src := sockio.ReaderOf(nc)
	l := &loginState{s: s, nc: nc, cid: cid, leading: leading, at: at,
		r: pdu.NewReader(src, pdu.ReaderConfig{From: pdu.FromTarget}), w: pdu.NewWriter(sockio.WriterOf(nc))}
	l.src, _ = src.(*sockio.Reader)
	c, err := l.run()
	dmu.Lock()
	loginOver = true
	dmu.Unlock()
	stop()
	if err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	return c, nil
}

func isLoginFailure(err error) bool {
	var le *LoginError
	var ne *NegotiationError
	var rd *redirectError
	return errors.As(err, &le) || errors.As(err, &ne) || errors.As(err, &rd)
}

// loginState is one connection's login (RFC 7143 §6).
type loginState struct {
	s       *Session
	nc      net.Conn
	cid     uint16
	leading bool
	at      *loginAttempt
	r       *pdu.Reader
	// src is what r reads, when it is a socket reader (submit.go).
	src *sockio.Reader
	w   *pdu.Writer

	itt       uint32
	expStatSN uint32
	// tsih is what our Login Requests carry: 0 on a new session's leading
	// connection, the session's TSIH on one added to it.
	tsih     uint16
	seenTSIH uint16
	// declared are the keys the target declared in the security stage.
	declared []pdu.KV
}

// run logs the connection in, stage by stage (the shape of crypto/tls's
// clientHandshakeState.handshake): the security stage with CHAP or
// without, the operational stage, then the connection in full feature
// phase.
func (l *loginState) run() (*Conn, error) {
	s := l.s
	l.itt = s.itt.Add(1)
	if !l.leading {
		l.tsih = s.tsih
	}
	keys := l.openingKeys()
	var err error
	if s.cfg.CHAP != nil {
		err = l.securityCHAP(keys)
	} else {
		err = l.securityNone(keys)
	}
	if err != nil {
		return nil, err
	}
	params, err := l.operational()
	if err != nil {
		return nil, err
	}
	return l.fullFeature(params), nil
}

// openingKeys are the keys of the first Login Request: our name, the
// session type on the leading connection only (RFC 7143 §13.21, LO), and
// the target's name, which opens every connection's login.
func (l *loginState) openingKeys() []pdu.KV {
	cfg := &l.s.cfg
	keys := []pdu.KV{kv("InitiatorName", cfg.InitiatorName)}
	if cfg.InitiatorAlias != "" {
		keys = append(keys, kv("InitiatorAlias", cfg.InitiatorAlias))
	}
	switch {
	case cfg.TargetName == "":
		keys = append(keys, kv("SessionType", "Discovery"))
	case l.leading:
		keys = append(keys, kv("SessionType", "Normal"), kv("TargetName", cfg.TargetName))
	default:
		keys = append(keys, kv("TargetName", cfg.TargetName))
	}
	return keys
}

// declare keeps what a target declares in the security stage
// (TargetPortalGroupTag, TargetAlias), to apply with the operational keys.
func (l *loginState) declare(kvs []pdu.KV) {
	for _, p := range kvs {
		if p.Key == "TargetPortalGroupTag" || p.Key == "TargetAlias" {
			l.declared = append(l.declared, p)
		}
	}
}

// securityNone is the security stage without authentication.
func (l *loginState) securityNone(keys []pdu.KV) error {
	keys = append(keys, kv("AuthMethod", "None"))
	resp, kvs, err := l.exchange(pdu.StageSecurity, pdu.StageOperational, true, keys)
	if err != nil {
		return err
	}
	l.declare(kvs)
	if v, ok := pdu.Lookup(kvs, "AuthMethod"); ok && v != "None" {
		return &NegotiationError{Key: "AuthMethod", Reason: fmt.Sprintf("target requires %q; configure CHAP", v)}
	}
	return l.leaveSecurity(resp)
}

// securityCHAP is the security stage with CHAP (RFC 7143 §12.1.3): the
// method, the algorithm and challenge, our answer, and with mutual CHAP
// the target's.
func (l *loginState) securityCHAP(keys []pdu.KV) error {
	s, cfg := l.s, &l.s.cfg
	keys = append(keys, kv("AuthMethod", "CHAP"))
	resp, kvs, err := l.exchange(pdu.StageSecurity, pdu.StageOperational, false, keys)
	if err != nil {
		return err
	}
	l.declare(kvs)
	if v, _ := pdu.Lookup(kvs, "AuthMethod"); v != "CHAP" {
		return &NegotiationError{Key: "AuthMethod", Reason: fmt.Sprintf("target answered %q to our CHAP", v)}
	}
	if resp.Transit {
		return &NegotiationError{Key: "AuthMethod", Reason: "target left the security stage before CHAP"}
	}
	st := &chapState{cfg: cfg.CHAP, sent: &s.challenges, avoid: l.at.avoidAlg}
	_, kvs, err = l.exchange(pdu.StageSecurity, pdu.StageOperational, false, []pdu.KV{kv("CHAP_A", st.offer())})
	if err != nil {
		return err
	}
	a, _ := pdu.Lookup(kvs, "CHAP_A")
	i, okI := pdu.Lookup(kvs, "CHAP_I")
	ch, okC := pdu.Lookup(kvs, "CHAP_C")
	if !okI || !okC {
		return &NegotiationError{Key: "CHAP_C", Reason: "target sent no challenge"}
	}
	s.mu.Lock()
	ans, err := st.answer(a, i, ch)
	s.mu.Unlock()
	l.at.chosenAlg = st.alg
	if err != nil {
		return err
	}
	resp, kvs, err = l.exchange(pdu.StageSecurity, pdu.StageOperational, true, ans)
	if err != nil {
		return err
	}
	if cfg.CHAP.TargetSecret != "" {
		n, _ := pdu.Lookup(kvs, "CHAP_N")
		r, ok := pdu.Lookup(kvs, "CHAP_R")
		if err := st.verify(n, r, ok); err != nil {
			return err
		}
	}
	return l.leaveSecurity(resp)
}

// maxOperationalExchanges bounds the operational stage's exchanges.
const maxOperationalExchanges = 16

// operational is the operational stage: our keys, the target's answers and
// offers, until it moves to full feature phase; it returns the parameters
// in force.
func (l *loginState) operational() (Params, error) {
	s := l.s
	neg := newNegotiator(s.cfg.params(), s.cfg.TargetName == "", l.leading)
	keys := neg.keys()
	for _, p := range l.declared {
		if _, err := neg.apply(p.Key, p.Value); err != nil {
			return Params{}, err
		}
	}
	for step := 0; ; step++ {
		if step == maxOperationalExchanges {
			return Params{}, &NegotiationError{Reason: fmt.Sprintf("operational negotiation did not end after %d exchanges", maxOperationalExchanges)}
		}
		resp, kvs, err := l.exchange(pdu.StageOperational, pdu.StageFullFeature, true, keys)
		if err != nil {
			return Params{}, err
		}
		keys = nil
		for _, p := range kvs {
			reply, err := neg.apply(p.Key, p.Value)
			if err != nil {
				return Params{}, err
			}
			if reply != nil {
				keys = append(keys, *reply)
			}
		}
		if resp.Transit && resp.NSG == pdu.StageFullFeature {
			if len(keys) > 0 {
				return Params{}, &NegotiationError{Reason: "target ended the login while offering keys we had to answer"}
			}
			if l.leading {
				if resp.TSIH == 0 {
					return Params{}, &pdu.ProtocolError{Op: pdu.OpLoginResponse, Field: "TSIH", Value: 0, Reason: "final login response without a TSIH"}
				}
				s.mu.Lock() // TSIH reads it while a recovery logs in
				s.tsih = resp.TSIH
				s.mu.Unlock()
			}
			return neg.finish()
		}
	}
}

// fullFeature makes the connection of a finished login: the session's
// parameters (set here on the leading connection) with the connection's own
// digests and segment lengths.
func (l *loginState) fullFeature(params Params) *Conn {
	s := l.s
	if l.leading {
		s.mu.Lock() // Params reads it while a recovery logs in
		s.params = params
		s.mu.Unlock()
		s.erl2.Store(params.ErrorRecoveryLevel >= 2)
	} else {
		// The session-wide keys were settled on the leading connection;
		// digests and segment lengths are this connection's own.
		own := params
		params = s.params
		params.HeaderDigest, params.DataDigest = own.HeaderDigest, own.DataDigest
		params.MaxRecvDataSegmentLength = own.MaxRecvDataSegmentLength
		params.TargetMaxRecvDataSegmentLength = own.TargetMaxRecvDataSegmentLength
	}
	l.r.SetConfig(readerConfig(params))
	l.w.SetDigests(params.HeaderDigest, params.DataDigest)
	c := newConn(s, l.cid, l.nc, l.r, l.w, l.expStatSN, params)
	c.as.src = l.src
	if l.src != nil {
		// What the reader queued goes out before it waits for the
		// network, wherever in a PDU it waits (submit.go, endBatch).
		l.src.SetOnWait(c.batchOpen, c.endBatch)
	}
	s.log.Debug("connection logged in", zap.Uint16("cid", l.cid), zap.Uint16("tsih", s.tsih),
		zap.Bool("headerDigest", params.HeaderDigest), zap.Bool("dataDigest", params.DataDigest))
	return c
}

// leaveSecurity asks to go on to the operational stage until the target
// agrees, a bounded number of times.
func (l *loginState) leaveSecurity(resp *pdu.LoginResponse) error {
	for step := 0; !resp.Transit; step++ {
		if step == 8 {
			return &NegotiationError{Reason: "target stayed in the security stage after 8 requests to leave it"}
		}
		var err error
		if resp, _, err = l.exchange(pdu.StageSecurity, pdu.StageOperational, true, nil); err != nil {
			return err
		}
	}
	return nil
}

// exchange sends one Login Request with keys (and any Continue PDUs the
// answer needs) and returns the target's response and its keys.
func (l *loginState) exchange(csg, nsg uint8, transit bool, keys []pdu.KV) (*pdu.LoginResponse, []pdu.KV, error) {
	s := l.s
	data := pdu.AppendText(nil, keys...)
	if len(data) > pdu.DefaultMaxRecvDataSegmentLength {
		return nil, nil, &NegotiationError{Reason: "login keys exceed 8192 bytes"}
	}
	if !transit {
		nsg = 0
	}
	req := &pdu.LoginRequest{Transit: transit, CSG: csg, NSG: nsg, ISID: s.isid, TSIH: l.tsih,
		ITT: l.itt, CID: l.cid, CmdSN: s.currentCmdSN(), ExpStatSN: l.expStatSN}
	var text []byte
	for {
		if err := l.w.WritePDU(req, data); err != nil {
			return nil, nil, fmt.Errorf("iscsi: login: write: %w", err)
		}
		resp, seg, err := l.read()
		if err != nil {
			return nil, nil, err
		}
		if resp.CSG != csg {
			return nil, nil, &pdu.ProtocolError{Op: pdu.OpLoginResponse, Field: "CSG", Value: uint64(resp.CSG), Reason: fmt.Sprintf("expected stage %d", csg)}
		}
		if resp.Transit && !transit {
			return nil, nil, &pdu.ProtocolError{Op: pdu.OpLoginResponse, Field: "T", Value: 1, Reason: "target transited while we did not ask"}
		}
		if resp.Transit {
			if err := checkTransit(csg, nsg, resp.NSG); err != nil {
				return nil, nil, err
			}
		}
		if len(text)+len(seg) > maxLoginText {
			return nil, nil, &NegotiationError{Reason: "login text over 64 KiB"}
		}
		text = append(text, seg...)
		if !resp.Continue {
			kvs, err := pdu.ParseText(text, pdu.TextLimits{})
			if err != nil {
				return nil, nil, &NegotiationError{Reason: err.Error()}
			}
			return resp, kvs, nil
		}
		// More text follows: ask for it with an empty request.
		data = nil
	}
}

// checkTransit checks the next stage of a Login Response with T=1 to our
// request with T=1 from stage csg to stage asked (RFC 7143 §11.12.3,
// §11.13.3): a transit goes forward, to a stage that exists, and no further
// than we asked. Staying in or going back to the security stage (NSG 0 from
// CSG 0, say) would have us negotiate operational keys the target never
// let us reach; NSG 2 is reserved.
func checkTransit(csg, asked, nsg uint8) error {
	bad := func(why string) error {
		return &pdu.ProtocolError{Op: pdu.OpLoginResponse, Field: "NSG", Value: uint64(nsg),
			Reason: fmt.Sprintf("%s (T=1 from stage %d; we asked for stage %d)", why, csg, asked)}
	}
	switch {
	case nsg == 2:
		return bad("transit to the reserved stage 2")
	case nsg <= csg:
		return bad("transit that does not go forward")
	case nsg > asked:
		return bad("target skipped a stage we did not ask to skip")
	}
	return nil
}

func (l *loginState) read() (*pdu.LoginResponse, []byte, error) {
	s := l.s
	h, err := l.r.Next()
	if err != nil {
		return nil, nil, fmt.Errorf("iscsi: login: read: %w", err)
	}
	if h.Opcode() != pdu.OpLoginResponse {
		if h.Opcode() == pdu.OpReject {
			var rj pdu.Reject
			rj.UnmarshalBHS(h)
			return nil, nil, &RejectError{Reason: rj.Reason, Op: pdu.OpLoginRequest}
		}
		return nil, nil, &pdu.ProtocolError{Op: h.Opcode(), Field: "Opcode", Value: uint64(h.Opcode()), Reason: "expected a Login Response"}
	}
	resp := new(pdu.LoginResponse)
	if err := resp.UnmarshalBHS(h); err != nil {
		return nil, nil, err
	}
	seg, err := l.r.Data()
	if err != nil {
		return nil, nil, fmt.Errorf("iscsi: login: read: %w", err)
	}
	if resp.ITT != l.itt {
		return nil, nil, &pdu.ProtocolError{Op: pdu.OpLoginResponse, Field: "InitiatorTaskTag", Value: uint64(resp.ITT), Reason: "not our login's tag"}
	}
	if st := resp.Status(); st != pdu.LoginSuccess {
		if st.Class() == 1 {
			kvs, _ := pdu.ParseText(seg, pdu.TextLimits{})
			if a, ok := pdu.Lookup(kvs, "TargetAddress"); ok {
				addr, err := checkPortal(a)
				if err != nil {
					return nil, nil, &NegotiationError{Key: "TargetAddress", Reason: "redirect to a malformed address: " + err.Error()}
				}
				return nil, nil, &redirectError{addr: addr, status: st}
			}
		}
		return nil, nil, &LoginError{Status: st}
	}
	if resp.VersionActive != 0 {
		return nil, nil, &pdu.ProtocolError{Op: pdu.OpLoginResponse, Field: "VersionActive", Value: uint64(resp.VersionActive), Reason: "we speak version 0"}
	}
	if resp.ISID != s.isid {
		return nil, nil, &pdu.ProtocolError{Op: pdu.OpLoginResponse, Field: "ISID", Value: 0, Reason: "target changed the ISID"}
	}
	switch {
	case !l.leading && resp.TSIH != s.tsih:
		return nil, nil, &pdu.ProtocolError{Op: pdu.OpLoginResponse, Field: "TSIH", Value: uint64(resp.TSIH), Reason: "target changed the session's TSIH on a new connection"}
	case l.leading && resp.TSIH != 0 && l.seenTSIH != 0 && resp.TSIH != l.seenTSIH:
		return nil, nil, &pdu.ProtocolError{Op: pdu.OpLoginResponse, Field: "TSIH", Value: uint64(resp.TSIH), Reason: "target changed the TSIH during login"}
	case l.leading && resp.TSIH != 0:
		l.seenTSIH = resp.TSIH
	}
	l.expStatSN = resp.StatSN + 1
	if !l.leading {
		// The session runs on other connections: its window only moves on.
		s.updateWindow(resp.ExpCmdSN, resp.MaxCmdSN)
		return resp, seg, nil
	}
	s.mu.Lock()
	if !pdu.SerialLess(resp.MaxCmdSN, resp.ExpCmdSN-1) {
		// The target sets where our CmdSN starts from.
		s.expCmdSN, s.maxCmdSN = resp.ExpCmdSN, resp.MaxCmdSN
		s.cmdSN = resp.ExpCmdSN
	}
	s.mu.Unlock()
	return resp, seg, nil
}

// checkPortal is portalAddr for an address the initiator will dial: it
// refuses an empty host, a bad port or stray characters (a target's redirect
// is untrusted input).
func checkPortal(v string) (string, error) {
	addr := portalAddr(v)
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if host == "" || strings.ContainsAny(host, " /@?#\x00") {
		return "", fmt.Errorf("host %q", host)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("port %q", port)
	}
	return addr, nil
}

// portalAddr turns a TargetAddress value ("host:port,tpgt", "[v6]:port,tpgt",
// or a host alone) into a dialable address.
func portalAddr(v string) string {
	if i := strings.LastIndexByte(v, ','); i >= 0 {
		v = v[:i]
	}
	if _, _, err := net.SplitHostPort(v); err != nil {
		return net.JoinHostPort(strings.Trim(v, "[]"), "3260")
	}
	return v
}
