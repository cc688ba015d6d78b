package iscsitest

import (
	"errors"
	"slices"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/goiscsi/iscsi/pdu"
)

// maxLoginText bounds the text of one login or text request gathered across
// PDUs with the C bit.
const maxLoginText = 64 << 10

// login is the target's side of the login phase of one connection.
type login struct {
	c *Conn
	t *Target

	started bool
	isid    [6]byte
	tsih    uint16
	cid     uint16
	cmdSN   uint32
	csg     uint8
	// text gathers a request sent with the C bit; out holds the rest of a
	// response too long for one PDU, sent with the C bit, and outT/outNSG
	// the stage transition to answer with its last part.
	text    []byte
	out     []byte
	outT    bool
	outNSG  uint8
	nth     int // requests answered
	leading bool
	sess    *session // the session a non-leading connection joins

	initiatorName, targetName, alias string
	discovery                        bool

	negotiated map[string]bool
	offered    map[string]string
	authMethod string
	authDone   bool
	chap       chapState
	params     Params
	hdig, ddig bool
	maxSend    int
	declared   bool
}

// login runs the login phase; it returns true in full feature phase.
func (c *Conn) login() bool {
	l := &login{c: c, t: c.t, negotiated: map[string]bool{}, offered: map[string]string{},
		params: defaultParams(), maxSend: pdu.DefaultMaxRecvDataSegmentLength, leading: true}
	for {
		in, err := c.readPDU()
		if err != nil {
			var re *readError
			if errors.As(err, &re) {
				c.t.count(func(s *Stats) { s.ProtocolErrors++ })
				c.t.log.Debug("bad PDU during login", zap.Error(err))
			}
			return false
		}
		c.t.count(func(s *Stats) { s.Received[in.h.Opcode()]++ })
		p, err := pdu.Decode(&in.h)
		if err != nil {
			return false
		}
		if c.runHook(in, p) {
			if c.draining.Load() {
				return false
			}
			continue
		}
		req, ok := p.(*pdu.LoginRequest)
		if !ok {
			// §6.1: only Login Requests until the login ends.
			return l.fail(pdu.LoginInvalidDuringLogin, "non-login PDU "+in.h.Opcode().String()+" during login")
		}
		done, ok := l.step(in, req)
		if !ok || c.draining.Load() {
			return false
		}
		if done {
			return true
		}
	}
}

// fail ends the login with a status and closes the connection.
func (l *login) fail(st pdu.LoginStatus, why string) bool {
	l.t.log.Debug("login failed", zap.Stringer("status", st), zap.String("why", why),
		zap.String("initiator", l.initiatorName))
	l.t.count(func(s *Stats) { s.LoginFailures++ })
	l.c.enqueue(&pdu.LoginResponse{ISID: l.isid, TSIH: l.tsih, ITT: l.itt(), CSG: l.csg,
		StatusClass: uint8(st >> 8), StatusDetail: uint8(st)}, nil, nil, false)
	l.c.finish()
	return false
}

// itt is the ITT of the request being answered.
func (l *login) itt() uint32 { return be32(l.c.in.h[16:]) }

// step handles one Login Request; it returns done in full feature phase and
// !ok when the login failed.
func (l *login) step(in *inPDU, req *pdu.LoginRequest) (done, ok bool) {
	c := l.c
	if !l.started {
		l.started = true
		l.isid, l.tsih, l.cid, l.cmdSN = req.ISID, req.TSIH, req.CID, req.CmdSN
		l.leading = req.TSIH == 0
		c.cid, c.isid = req.CID, req.ISID
		c.outMu.Lock()
		c.loginExp = req.CmdSN
		c.outMu.Unlock()
		l.csg = req.CSG
		if req.VersionMin > 0 || req.VersionMax < req.VersionMin {
			return false, l.fail(pdu.LoginUnsupportedVersion, "version")
		}
	} else if req.ISID != l.isid || req.TSIH != l.tsih || req.CID != l.cid {
		return false, l.fail(pdu.LoginInitiatorError, "ISID, TSIH or CID changed during login")
	}
	switch {
	case !in.h.Immediate():
		// tgtd refuses a Login Request without the I bit.
		return false, l.fail(pdu.LoginInitiatorError, "Login Request without the I bit")
	case req.Transit && req.Continue:
		return false, l.fail(pdu.LoginInitiatorError, "T and C bits both set")
	case req.CSG != l.csg || req.CSG > pdu.StageOperational:
		return false, l.fail(pdu.LoginInitiatorError, "unexpected CSG")
	case req.Transit && (req.NSG <= req.CSG || req.NSG == 2):
		return false, l.fail(pdu.LoginInitiatorError, "invalid NSG")
	case len(l.out) > 0 && (len(in.data) > 0 || req.Continue):
		return false, l.fail(pdu.LoginInitiatorError, "text while the target's response continues")
	case len(l.text)+len(in.data) > maxLoginText:
		return false, l.fail(pdu.LoginOutOfResources, "login text too long")
	}
	if len(l.out) > 0 {
		return l.send(req)
	}
	l.text = append(l.text, in.data...)
	if req.Continue {
		// Part of a longer text: an empty response asks for the rest.
		c.enqueue(&pdu.LoginResponse{ISID: l.isid, TSIH: l.tsih, ITT: req.ITT, CSG: l.csg}, nil, nil, false)
		return false, true
	}
	kvs, err := pdu.ParseText(l.text, pdu.TextLimits{})
	l.text = l.text[:0]
	if err != nil {
		return false, l.fail(pdu.LoginInitiatorError, err.Error())
	}
	if l.nth == 0 {
		if st, why := l.first(kvs); st != 0 {
			return false, l.fail(st, why)
		}
	}
	out, st, why := l.keys(kvs)
	if st != 0 {
		return false, l.fail(st, why)
	}
	transit, nsg := false, req.NSG
	authOK := l.authDone || l.authMethod == "" && l.t.Config.CHAP == nil
	if req.Transit {
		switch {
		case l.csg == pdu.StageSecurity && !authOK && l.chap.step == chapNone:
			return false, l.fail(pdu.LoginAuthFailed, "leaving the security stage without authentication")
		case l.csg == pdu.StageSecurity && !authOK:
			// CHAP still running: stay.
		case nsg == pdu.StageFullFeature:
			out = append(out, l.offers()...)
			transit = len(l.offered) == 0
		default:
			transit = true
		}
	}
	if transit && nsg == pdu.StageFullFeature && !l.declared {
		l.declared = true
		out = append(out, pdu.KV{Key: "MaxRecvDataSegmentLength", Value: strconv.Itoa(l.t.Config.MaxRecvDataSegmentLength)})
	}
	if l.nth == 0 && !l.discovery {
		out = slices.Insert(out, 0, pdu.KV{Key: "TargetPortalGroupTag", Value: "1"})
	}
	l.nth++
	l.out, l.outT, l.outNSG = pdu.AppendText(nil, out...), transit, nsg
	return l.send(req)
}

// send sends the next part of the response in l.out: all of it, or as much
// as a login PDU may carry with the C bit set.
func (l *login) send(req *pdu.LoginRequest) (done, ok bool) {
	const max = pdu.DefaultMaxRecvDataSegmentLength
	resp := &pdu.LoginResponse{ISID: l.isid, TSIH: l.tsih, ITT: req.ITT, CSG: l.csg}
	chunk := l.out
	if len(chunk) > max {
		chunk, l.out = chunk[:max], l.out[max:]
		resp.Continue = true
		l.c.enqueue(resp, nil, chunk, false)
		return false, true
	}
	l.out = nil
	resp.Transit = l.outT
	if l.outT {
		resp.NSG = l.outNSG
	}
	if l.outT && l.outNSG == pdu.StageFullFeature {
		return l.finish(resp, chunk)
	}
	l.c.enqueue(resp, nil, chunk, false)
	if l.outT {
		l.csg = l.outNSG
	}
	return false, true
}

// first checks the keys every first Login Request must carry (§6.3.1) and
// finds the session a connection joins.
func (l *login) first(kvs []pdu.KV) (pdu.LoginStatus, string) {
	iname, _ := pdu.Lookup(kvs, "InitiatorName")
	if iname == "" {
		return pdu.LoginMissingParameter, "no InitiatorName"
	}
	if !validName(iname) {
		return pdu.LoginInitiatorError, "malformed InitiatorName"
	}
	l.initiatorName = iname
	switch st, _ := pdu.Lookup(kvs, "SessionType"); st {
	case "", "Normal":
	case "Discovery":
		l.discovery = true
	default:
		return pdu.LoginSessionTypeNotSupp, "SessionType " + st
	}
	tname, ok := pdu.Lookup(kvs, "TargetName")
	if !l.discovery {
		if !ok {
			return pdu.LoginMissingParameter, "no TargetName"
		}
		if !strings.EqualFold(tname, l.t.Config.Name) {
			return pdu.LoginTargetNotFound, "no target " + tname
		}
	}
	if ok {
		l.targetName = tname
	}
	if l.csg == pdu.StageOperational && l.t.Config.CHAP != nil {
		return pdu.LoginAuthFailed, "the security stage is required"
	}
	if l.leading {
		return 0, ""
	}
	s := l.t.lookupSession(l.tsih)
	if s == nil || s.isid != l.isid || !strings.EqualFold(s.initiatorName, iname) {
		return pdu.LoginSessionDoesNotExist, "no session with this TSIH and ISID"
	}
	if s.discovery || l.discovery {
		return pdu.LoginCantIncludeInSession, "a discovery session has one connection"
	}
	s.mu.Lock()
	n, reinstate := len(s.conns), s.conns[l.cid] != nil
	s.mu.Unlock()
	if !reinstate && n >= s.params.MaxConnections {
		return pdu.LoginTooManyConnections, "MaxConnections reached"
	}
	l.sess = s
	l.params = s.params
	l.c.outMu.Lock()
	l.c.loginSess = s
	l.c.outMu.Unlock()
	return 0, ""
}

// keys negotiates the keys of one request and returns the answers.
func (l *login) keys(kvs []pdu.KV) ([]pdu.KV, pdu.LoginStatus, string) {
	var out []pdu.KV
	sec := map[string]string{}
	for _, kv := range kvs {
		k, v := kv.Key, kv.Value
		if off, ok := l.offered[k]; ok {
			delete(l.offered, k)
			if !l.accept(k, off, v) {
				return nil, pdu.LoginInitiatorError, "unacceptable answer " + k + "=" + v
			}
			continue
		}
		if l.negotiated[k] {
			// §6.2: a key negotiated twice in a login is an initiator error.
			return nil, pdu.LoginInitiatorError, "key " + k + " repeated"
		}
		l.negotiated[k] = true
		d, known := pdu.LookupKey(k)
		if !known {
			out = append(out, pdu.KV{Key: k, Value: "NotUnderstood"})
			continue
		}
		switch d.Kind {
		case pdu.KeyDeclared:
			if l.nth > 0 && !(k == "TargetName" && l.discovery) {
				return nil, pdu.LoginInitiatorError, k + " after the first request"
			}
		case pdu.KeyAlias:
			l.alias = v
		case pdu.KeyTargetOnly, pdu.KeyFFPOnly:
			return nil, pdu.LoginInitiatorError, k + " may not be sent by an initiator in login"
		case pdu.KeySecurity:
			if l.csg != pdu.StageSecurity {
				return nil, pdu.LoginInitiatorError, k + " outside the security stage"
			}
			sec[k] = v
		default:
			switch {
			case l.discovery && d.NotDiscovery, !l.leading && d.LeadingOnly:
				out = append(out, pdu.KV{Key: k, Value: "Irrelevant"})
			default:
				if a := l.negotiate(k, v, d); a != "" {
					out = append(out, pdu.KV{Key: k, Value: a})
				}
			}
		}
	}
	if st, why := l.security(sec, &out); st != 0 {
		return nil, st, why
	}
	return out, 0, ""
}

// security handles AuthMethod and the CHAP keys of one request.
func (l *login) security(sec map[string]string, out *[]pdu.KV) (pdu.LoginStatus, string) {
	if am, ok := sec["AuthMethod"]; ok {
		delete(sec, "AuthMethod")
		want := "None"
		if l.t.Config.CHAP != nil {
			want = "CHAP"
		}
		if !slices.Contains(pdu.ParseList(am), want) {
			return pdu.LoginAuthFailed, "AuthMethod " + am + " does not offer " + want
		}
		l.authMethod = want
		*out = append(*out, pdu.KV{Key: "AuthMethod", Value: want})
		if want == "None" {
			l.authDone = true
		} else {
			l.chap.step = chapWaitA
		}
	}
	if len(sec) == 0 {
		return 0, ""
	}
	if l.authMethod != "CHAP" {
		return pdu.LoginAuthFailed, "CHAP keys without AuthMethod=CHAP"
	}
	if st := l.runCHAP(sec, out); st != 0 {
		return st, "CHAP failed"
	}
	return 0, ""
}

// finish enters full feature phase: it creates the session or joins it,
// sends the last Login Response and turns the digests on.
func (l *login) finish(resp *pdu.LoginResponse, text []byte) (done, ok bool) {
	c := l.c
	s := l.sess
	if !l.hdig && !slices.Contains(l.t.Config.HeaderDigests, "None") ||
		!l.ddig && !slices.Contains(l.t.Config.DataDigests, "None") {
		return false, l.fail(pdu.LoginInitiatorError, "the target requires digests")
	}
	if p := &l.params; p.FirstBurstLength > p.MaxBurstLength {
		if !p.InitialR2T || p.ImmediateData {
			return false, l.fail(pdu.LoginInitiatorError, "FirstBurstLength above MaxBurstLength")
		}
		p.FirstBurstLength = p.MaxBurstLength // irrelevant (§13.14)
	}
	if l.leading {
		s = l.t.newSession(l)
		resp.TSIH = s.tsih
	}
	c.hdig, c.ddig, c.maxSend = l.hdig, l.ddig, l.maxSend
	old, ok := s.addConn(c)
	if !ok {
		return false, l.fail(pdu.LoginTooManyConnections, "session full or gone")
	}
	if l.leading {
		for _, ch := range l.chap.sent {
			s.rememberChallenge(ch)
		}
	}
	c.sess.Store(s)
	c.enqueue(resp, nil, text, false)
	c.setDigests(l.hdig, l.ddig)
	c.r.SetConfig(pdu.ReaderConfig{From: pdu.FromInitiator, MaxDataSegmentLength: l.t.Config.MaxRecvDataSegmentLength,
		HeaderDigest: l.hdig})
	if old != nil {
		// Connection reinstatement (§6.3.4): the old connection goes.
		old.finish()
	}
	l.t.count(func(st *Stats) { st.Logins++ })
	l.t.log.Debug("login complete", zap.Uint16("tsih", s.tsih), zap.Uint16("cid", l.cid),
		zap.String("initiator", l.initiatorName), zap.Bool("discovery", l.discovery))
	return true, true
}

// validName reports whether an iSCSI name has the iqn., eui. or naa. form
// (RFC 7143 §4.2.7), checked loosely.
func validName(n string) bool {
	if len(n) > 223 {
		return false
	}
	ln := strings.ToLower(n)
	switch {
	case strings.HasPrefix(ln, "iqn."):
		return len(n) > 4
	case strings.HasPrefix(ln, "eui."):
		return len(n) == 20
	case strings.HasPrefix(ln, "naa."):
		return len(n) == 20 || len(n) == 36
	}
	return false
}
